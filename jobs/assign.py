"""seglake-assign: keep segments fresh without re-fitting.

New texts/events (since the last watermark) are validated, embedded (only texts not in the
`text_embeddings` cache), folded into each touched user's running state in `user_vectors`,
assigned to the nearest centroid of a saved model run (default: the latest succeeded full
run) and upserted into `user_segments` with MERGE. Users whose segment changed get a
`segment_history` row; each run records drift against the model's training run in `drift`
and itself in `assign_runs`. `--stream` does the same per micro-batch of a Structured
Streaming query over folders of new files (checkpointed: a restart resumes without loss or
duplicates). `assign_batch` is the pipeline; the command line is jobs/cli.py.

Commit order, so that a batch killed at any point and run again is applied exactly once:
user_vectors (MERGE, skipping users already updated by this batch) -> segment_history and
drift (replace this batch's partition; skipped when user_segments already has the batch) ->
user_segments (MERGE) -> assign_runs row `succeeded`. A batch run that did not finish is
resumed by the next run with its own run id.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import cluster, config, drift, ingest, lexical, segment_ids, summary
from jobs.config import AssignConf, EmbedConf
from jobs.delta_io import user_segments_properties
from jobs.embed import embed_model_id
from jobs.history import history_rows
from jobs.lock import job_lock
from jobs.pipeline import INPUTS, RunContext, embed_stage, ingest_stage, new_run_id, read_mapped, run_scope
from jobs.segment_profile import segment_terms, user_terms
from jobs.tables import Lake
from jobs.user_vectors import STATE_COLUMNS, combine_state, features, user_state

log = logging.getLogger("seglake.assign")
UPDATE_IF_NOT_APPLIED = "t.updated_by IS NULL OR t.updated_by <> s.updated_by"
TABLES = ("user_vectors", "user_segments", "segment_history", "segments", "text_embeddings", "quarantine",
          "drift", "assign_runs", "runs")


@dataclass
class ModelRun:
    """A succeeded full run whose saved model assigns users."""

    run_id: str
    model_path: str
    algorithm: str
    distance: str
    params: dict
    embed_model_id: str | None

    def load(self):
        from pyspark.ml.clustering import BisectingKMeansModel, KMeansModel

        cls = BisectingKMeansModel if self.algorithm == "bisecting" else KMeansModel
        return cls.load(self.model_path)

    @property
    def lexical(self) -> bool:
        return float(self.params.get("lexical_weight") or 0.0) > 0

    def lexicon(self, lake: Lake) -> lexical.Lexicon | None:
        """The run's lexical channel (vocabulary, IDF, SVD) from lexical_terms; None when off."""
        if not self.lexical:
            return None
        try:
            return lexical.load(lake, self.run_id)
        except LookupError as exc:
            raise ingest.InputError(f"model run {self.run_id} uses the lexical channel but {exc}; "
                                    "rerun seglake-segment") from exc


@dataclass
class AssignResult:
    run_id: str
    model_run_id: str
    counts: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    drift: dict = field(default_factory=dict)
    refit_reasons: list[str] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    watermarks: dict = field(default_factory=dict)


def run(spark: SparkSession, conf: dict, *, reassign_all: bool = False) -> AssignResult:
    """One batch: the files under assign.texts / assign.events (or every stored user), holding
    the output root's lock."""
    lake = Lake(spark, conf["output"]["root"], conf["output"]["engine"])
    config.require_catalog_engine(conf, lake.engine)
    with job_lock(spark, conf, "seglake-assign"):
        res = _run_batch(spark, conf, lake, reassign_all)
        _register_tables(lake, conf)
        return res


def _run_batch(spark: SparkSession, conf: dict, lake: Lake, reassign_all: bool) -> AssignResult:
    ac = AssignConf.of(conf)
    model_run = find_model_run(lake, ac.model_run)
    refuse_half_written_state(lake)
    run_id = conf["run_id"] or unfinished_batch(lake)
    if run_id and not conf["run_id"]:
        log.warning("assign run %s did not finish: completing it (its input must be the same files)", run_id)
    inputs = {} if reassign_all else {
        name: read_mapped(spark, conf, getattr(ac, name), name) for name in INPUTS if getattr(ac, name).path}
    wm = last_watermarks(lake) if ac.watermark and not reassign_all else None
    return assign_batch(spark, conf, inputs.get("texts"), inputs.get("events"), run_id or new_run_id(), model_run,
                        mode="reassign" if reassign_all else "batch", watermarks=wm, reassign_all=reassign_all)


def assign_batch(spark: SparkSession, conf: dict, texts: DataFrame | None, events: DataFrame | None,
                 run_id: str, model_run: ModelRun, *, mode: str = "batch", watermarks: dict | None = None,
                 reassign_all: bool = False) -> AssignResult:
    """One incremental batch, the pipeline (commit order: see the module docstring). `texts` /
    `events` are inputs after `ingest.map_columns` (logical columns as strings,
    `_corrupt_record`); rows not newer than `watermarks` are quarantined as before_watermark.
    `reassign_all` re-assigns every stored user instead."""
    ctx = RunContext(spark, conf, run_id, Lake(spark, conf["output"]["root"], conf["output"]["engine"]))
    res = AssignResult(run_id, model_run.run_id, ctx.counts, ctx.reasons, stage_seconds=ctx.timings,
                       watermarks=dict(watermarks or {"texts_watermark": None, "events_watermark": None}))
    ec = EmbedConf.of(conf)
    check_model_id(model_run, ec)
    write_run_row(ctx, res, mode, "running")
    with run_scope(ctx, lambda exc: write_run_row(ctx, res, mode, "failed", error=repr(exc)[:2000]),
                   f"assign run {run_id}"):
        sources = {name: (df, getattr(AssignConf.of(conf), name).path or name)
                   for name, df in (("texts", texts), ("events", events)) if df is not None}
        ingested = ingest_stage(ctx, sources, before=watermarks, drop_empty=True, track_watermarks=True)
        write_quarantine(ctx, ingested.quarantine)
        embedded = embed_stage(ctx, ingested.texts, ec)
        state = state_stage(ctx, embedded.texts, ingested.events, model_run, reassign_all)
        if ctx.counts["users_touched"]:
            placed = assign_stage(ctx, res, state, embedded.texts, model_run)
            commit_stage(ctx, res, state, placed, model_run)
        res.watermarks = ingested.watermarks
        write_run_row(ctx, res, mode, "succeeded")
        return res


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------


def check_model_id(model_run: ModelRun, ec: EmbedConf) -> None:
    mid = embed_model_id(ec)
    if model_run.embed_model_id and model_run.embed_model_id != mid:
        raise config.ConfigError(f"embed.model_path: the model run {model_run.run_id} embedded texts with model id "
                                 f"{model_run.embed_model_id}, this conf gives {mid}; assign with the same model")


def write_quarantine(ctx: RunContext, quarantine: DataFrame | None) -> None:
    """This batch's rejected rows, committed first (a rerun replaces them)."""
    if quarantine is None:
        return
    with ctx.stage("quarantine", rate=False):
        written = ctx.lake.write_run("quarantine", quarantine, ctx.run_id)
    if written != ctx.counts["quarantined"]:
        raise RuntimeError(f"quarantine got {written} rows, expected {ctx.counts['quarantined']}")


@dataclass(frozen=True)
class State:
    """The user_vectors stage: the touched users' state after this batch (None: nobody was
    touched) and whether it is new state to MERGE (False for --reassign-all)."""

    rows: DataFrame | None
    changed: bool


def state_stage(ctx: RunContext, texts: DataFrame | None, events: DataFrame | None, model_run: ModelRun,
                reassign_all: bool) -> State:
    """Each touched user's running state: the stored state combined with this batch's."""
    params, mid = model_run.params, embed_model_id(EmbedConf.of(ctx.conf))
    with ctx.stage("user_vectors"):
        stored = ctx.lake.read_if_exists("user_vectors")
        if stored is None:
            raise ingest.InputError(f"no user_vectors table under {ctx.lake.root}: run seglake-segment "
                                    "(the full job) first")
        other = stored.where(F.col("model_id") != mid).limit(1).collect()
        if other:
            raise ingest.InputError(f"user_vectors holds vectors of embedding model {other[0]['model_id']}, not "
                                    f"{mid}: run seglake-segment to rebuild it with this model")
        if reassign_all:
            state = State(ctx.keep(stored), changed=False)
        elif texts is None and events is None:
            state = State(None, changed=False)
        else:
            batch = user_state(texts, events, pooling=params["pooling"], half_life_days=params["half_life_days"],
                               model_id=mid, updated_by=ctx.run_id, lexical=model_run.lexical)
            touched = stored.join(batch.select("user_id"), "user_id", "left_semi")
            state = State(ctx.keep(combine_state(touched, batch, pooling=params["pooling"],
                                                 half_life_days=params["half_life_days"], model_id=mid,
                                                 updated_by=ctx.run_id)), changed=True)
        ctx.counts["users_touched"] = state.rows.count() if state.rows is not None else 0
    return state


@dataclass(frozen=True)
class Placed:
    """The assign stage: the touched users' segments, their previous rows, the new
    user_segments and segment_history rows, and whether an earlier attempt of this run
    already committed user_segments."""

    assigned: DataFrame
    old: DataFrame
    rows: DataFrame
    history: DataFrame
    done_before: bool


def assign_stage(ctx: RunContext, res: AssignResult, state: State, texts: DataFrame | None,
                 model_run: ModelRun) -> Placed:
    params = model_run.params
    with ctx.stage("assign"):
        users = features(state.rows, params, model_run.lexicon(ctx.lake))
        placed = cluster.assign(users, model_run.load(), model_run.distance, allowed=params.get("allowed_segments"),
                                groups=params.get("segment_groups"))  # (model indexes)
        # The model run's published ids (jobs/segment_ids.py; runs before them published the indexes).
        assigned = ctx.keep(placed_as_published(placed, params, model_run.distance))
        model_segments = ctx.lake.read("user_segments").where(F.col("run_id") == model_run.run_id)
        old = ctx.keep(model_segments.join(state.rows.select("user_id"), "user_id", "left_semi").select(
            "user_id", "segment_id", F.col("matched_terms").alias("_old_terms"), "assigned_by"))
        done_before = old.where(F.col("assigned_by") == ctx.run_id).limit(1).count() > 0
        rows = user_segment_rows(ctx, assigned, old, texts, model_run.run_id)
        history = history_rows(assigned, old, ctx.run_id, model_run.run_id)
        # PSI over everyone after this batch: the model partition moved by this batch's
        # changes (already included when an earlier attempt committed user_segments).
        population = drift.population_sizes(model_segments, None if done_before else history)
        res.drift = drift.drift_measures(assigned, params["drift_reference"], population)
        res.refit_reasons = drift.judge(res.drift, ctx.conf["drift"])
        ctx.counts["users_new"] = ctx.counts["users_touched"] - old.count()
    return Placed(assigned, old, rows, history, done_before)


def commit_stage(ctx: RunContext, res: AssignResult, state: State, placed: Placed, model_run: ModelRun) -> None:
    """The commits, in the order that makes a rerun of a killed batch apply it exactly once."""
    lake, rid = ctx.lake, ctx.run_id
    with ctx.stage("write"):
        if state.changed:
            lake.merge("user_vectors", state.rows.select(*STATE_COLUMNS), update_condition=UPDATE_IF_NOT_APPLIED)
        ctx.crash_point("after_user_vectors")
        history = placed.history
        if placed.done_before:
            # An earlier attempt of this run already moved some users in user_segments:
            # their history rows are the committed ones (recomputing would find no change).
            redone = placed.old.where(F.col("assigned_by") == rid).select("user_id")
            committed = lake.read("segment_history").where(F.col("run_id") == rid)
            history = committed.unionByName(history.join(redone, "user_id", "left_anti"))
        ctx.counts["users_changed"] = lake.write_run("segment_history", history, rid)
        lake.write_run("drift", drift_row(ctx, res, model_run), rid)
        ctx.crash_point("after_history")
        lake.merge("user_segments", placed.rows, partition_values={"run_id": model_run.run_id},
                   properties=user_segments_properties(ctx.conf))
        ctx.crash_point("after_user_segments")
    if res.refit_reasons:
        log.warning("drift against model run %s: %s; a re-fit is recommended (seglake-assign "
                    "--refit-if-drifted runs the full job)", model_run.run_id, "; ".join(res.refit_reasons))


def placed_as_published(placed: DataFrame, params: dict, distance: str) -> DataFrame:
    """cluster.assign's rows (model indexes) as the model run published its users: its
    segment ids, memberships and outlier rule (a model run from before them: indexes as ids,
    no memberships, nobody an outlier)."""
    ids = params.get("segment_ids")
    out = segment_ids.relabel(placed, ids, "segment_id", "second_segment_id", "third_segment_id")
    if params.get("membership_temperature") is not None:
        out = cluster.memberships(out, params["membership_temperature"], distance)
    else:
        out = (out.drop("third_segment_id", "third_distance")
               .withColumn("top_segment_ids", F.lit(None).cast("array<int>"))
               .withColumn("memberships", F.lit(None).cast("array<double>")))
    thresholds = {int(k): float(v) for k, v in (params.get("outlier_thresholds") or {}).items()}
    return cluster.flag_outliers(out, thresholds, params.get("outlier_mode", "flag"))


def user_segment_rows(ctx: RunContext, assigned: DataFrame, old: DataFrame, texts: DataFrame | None,
                      model_run_id: str) -> DataFrame:
    """user_segments rows of the assigned users. matched_terms: the new texts' terms among the
    segment's top terms and lexical terms, plus the earlier matches when the segment did not change."""
    no_terms = F.array().cast("array<string>")
    top = segment_terms(ctx.lake.read("segments").where(F.col("run_id") == model_run_id))
    new_terms = no_terms
    out = assigned.join(old.select("user_id", F.col("segment_id").alias("_old_seg"), "_old_terms"), "user_id", "left")
    if texts is not None:
        matched = (user_terms(texts, ctx.conf["profile"]["bigrams"])
                   .join(assigned.select("user_id", "segment_id"), "user_id").join(top, ["segment_id", "term"])
                   .groupBy("user_id").agg(F.collect_set("term").alias("_new_terms")))
        out = out.join(matched, "user_id", "left")
        new_terms = F.coalesce("_new_terms", new_terms)
    same = F.col("_old_seg").eqNullSafe(F.col("segment_id"))
    kept_terms = F.when(same, F.coalesce("_old_terms", no_terms)).otherwise(no_terms)
    terms = F.array_sort(F.array_distinct(F.concat(kept_terms, new_terms)))
    return out.select(
        F.lit(model_run_id).alias("run_id"), "user_id", F.col("segment_id").cast("int"), "distance",
        F.col("second_segment_id").cast("int"), "second_distance", "margin", terms.alias("matched_terms"),
        "n_texts", "n_events", "lang", "top_segment_ids", "memberships", "outlier",
        F.current_timestamp().alias("assigned_at"), F.lit(ctx.run_id).alias("assigned_by"))


def drift_row(ctx: RunContext, res: AssignResult, model_run: ModelRun) -> DataFrame:
    d = res.drift
    return ctx.lake.rows("drift", [{
        "run_id": res.run_id, "model_run_id": model_run.run_id, "measured_at": datetime.now(timezone.utc),
        "users": d.get("users"), "far_share": d.get("far_share"),
        "distance_p95_train": model_run.params["drift_reference"]["distance_p95"], "psi": d.get("psi"),
        "mean_shift": d.get("mean_shift"), "refit_recommended": bool(res.refit_reasons),
        "reasons": res.refit_reasons}])


def write_run_row(ctx: RunContext, res: AssignResult, mode: str, status: str, error: str | None = None) -> None:
    c, d = res.counts, res.drift
    row = {
        "run_id": res.run_id, "model_run_id": res.model_run_id, "mode": mode, "status": status, "error": error,
        "started_at": ctx.started, "finished_at": datetime.now(timezone.utc) if status != "running" else None,
        **{k: c.get(k) for k in ("texts_read", "texts_kept", "events_read", "events_kept", "quarantined",
                                 "texts_embedded_new", "users_touched", "users_new", "users_changed")},
        "quarantine_reasons": res.reasons, **res.watermarks,
        "far_share": d.get("far_share"), "psi": d.get("psi"), "mean_shift": d.get("mean_shift"),
        "refit_recommended": bool(res.refit_reasons), "stage_seconds": res.stage_seconds,
    }
    ctx.lake.write_run("assign_runs", ctx.lake.rows("assign_runs", [row]), res.run_id)


# --------------------------------------------------------------------------------------------
# The lake's state before a batch
# --------------------------------------------------------------------------------------------


def find_model_run(lake: Lake, run_id: str | None = None) -> ModelRun:
    """The given run, or the latest succeeded full run that saved a model."""
    runs = lake.read_if_exists("runs")
    if runs is None:
        raise ingest.InputError(f"no runs table under {lake.root}: run seglake-segment (the full job) first")
    ok = runs.where((F.col("status") == "succeeded") & F.col("model_path").isNotNull())
    if run_id:
        ok = ok.where(F.col("run_id") == run_id)
    rows = ok.orderBy(F.desc("finished_at")).limit(1).collect()
    if not rows:
        raise ingest.InputError(f"no succeeded full run {run_id or ''} with a saved model under {lake.root}"
                                .replace("  ", " "))
    r = rows[0].asDict()
    params = json.loads(r["feature_params"] or "{}")
    if "drift_reference" not in params or "text_dim" not in params:
        raise ingest.InputError(f"run {r['run_id']} was written by an older SegLake without user state; "
                                "run seglake-segment again")
    return ModelRun(r["run_id"], r["model_path"], r["algorithm"], r["distance"], params, r.get("embed_model_id"))


def last_watermarks(lake: Lake) -> dict:
    """Watermarks after the latest succeeded run, full or incremental: its inputs' latest ts."""
    rows = []
    for name in ("runs", "assign_runs"):
        df = lake.read_if_exists(name)
        if df is not None:
            rows += (df.where(F.col("status") == "succeeded").orderBy(F.desc("finished_at"))
                     .select("finished_at", "texts_watermark", "events_watermark").limit(1).collect())
    if not rows:
        return {"texts_watermark": None, "events_watermark": None}
    latest = max(rows, key=lambda r: r["finished_at"])
    return {"texts_watermark": latest["texts_watermark"], "events_watermark": latest["events_watermark"]}


def refuse_half_written_state(lake: Lake) -> None:
    """Stop when the latest full run never finished but already replaced user_vectors (its
    driver died between that commit and its runs row): the state would not match any saved
    model. The remedy is to finish that run under its own id."""
    runs = lake.read_if_exists("runs")
    rows = runs.orderBy(F.desc("started_at")).select("run_id", "status").limit(1).collect() if runs is not None else []
    if not rows or rows[0]["status"] == "succeeded":
        return
    rid = rows[0]["run_id"]
    state = lake.read_if_exists("user_vectors")
    if state is not None and state.where(F.col("updated_by") == rid).limit(1).count():
        raise ingest.InputError(
            f"full run {rid} did not finish ({rows[0]['status']}) but already replaced user_vectors; finish it "
            f"first: seglake-segment --run-id {rid} with the same inputs (its other tables are replaced, not "
            "duplicated)")


def unfinished_batch(lake: Lake) -> str | None:
    """The run id of a batch-mode assign run that started and never succeeded, if the latest
    one did not: it may be partly committed, so it must be finished under the same id."""
    runs = lake.read_if_exists("assign_runs")
    if runs is None:
        return None
    rows = runs.where(F.col("mode") == "batch").orderBy(F.desc("started_at")).limit(1).collect()
    return rows[0]["run_id"] if rows and rows[0]["status"] != "succeeded" else None


def _register_tables(lake: Lake, conf: dict) -> None:
    """output.catalog_schema: the root's tables by name (the full job named its own; drift and
    assign_runs are this job's)."""
    if conf["output"]["catalog_schema"]:
        lake.register(conf["output"]["catalog_schema"], TABLES)


# --------------------------------------------------------------------------------------------
# Streaming
# --------------------------------------------------------------------------------------------


def run_stream(spark: SparkSession, conf: dict) -> list[AssignResult]:
    """Structured Streaming over the assign.texts / assign.events folders (or Delta tables with
    native Delta): each micro-batch goes through `assign_batch` with run id
    <prefix>-<batch id>; the checkpoint makes a restart resume where it stopped, and a
    replayed micro-batch is applied once (see the module docstring). The output root's lock is
    held while the stream runs."""
    lake = Lake(spark, conf["output"]["root"], conf["output"]["engine"])
    config.require_catalog_engine(conf, lake.engine)
    with job_lock(spark, conf, "seglake-assign --stream"):
        return _run_stream(spark, conf, lake)


def _run_stream(spark: SparkSession, conf: dict, lake: Lake) -> list[AssignResult]:
    a = AssignConf.of(conf)
    model_run = find_model_run(lake, a.model_run)
    refuse_half_written_state(lake)
    checkpoint = a.checkpoint or f"{lake.root}/_checkpoints/assign"
    prefix = conf["run_id"] or "stream-" + hashlib.sha256(checkpoint.encode()).hexdigest()[:8]
    names = [name for name in INPUTS if getattr(a, name).path]
    if not names:
        raise config.ConfigError("assign.texts.path: streaming needs assign.texts.path or assign.events.path")
    streams = [read_mapped(spark, conf, getattr(a, name), name, stream=True,
                           max_files_per_trigger=a.max_files_per_trigger).withColumn("_input", F.lit(name))
               for name in names]
    stream = streams[0] if len(streams) == 1 else streams[0].unionByName(streams[1], allowMissingColumns=True)
    results: list[AssignResult] = []
    spec = {"texts": config.TEXT_COLUMNS, "events": config.EVENT_COLUMNS}

    def handle(batch: DataFrame, batch_id: int) -> None:
        batch = batch.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            parts = {name: batch.where(F.col("_input") == name).select(
                *spec[name]["required"], *spec[name]["optional"], ingest.CORRUPT) for name in names}
            # No watermark filter: the file source hands each file over exactly once.
            results.append(assign_batch(spark, conf, parts.get("texts"), parts.get("events"),
                                        f"{prefix}-{batch_id:06d}", model_run, mode="stream"))
            if len(results) == 1:  # once per stream: the first batch has written every table there is
                _register_tables(lake, conf)
        finally:
            batch.unpersist()

    writer = stream.writeStream.foreachBatch(handle).option("checkpointLocation", checkpoint)
    writer = writer.trigger(availableNow=True) if a.trigger == "available-now" else writer.trigger(
        processingTime=a.trigger)
    query = writer.queryName(f"seglake-assign-{prefix}").start()
    log.info("streaming assign: query %s, checkpoint %s, model run %s", query.id, checkpoint, model_run.run_id)
    query.awaitTermination()
    return results


def render(res: AssignResult) -> str:
    """The console summary of one assign run."""
    c, d = res.counts, res.drift
    lines = [f"SegLake assign run {res.run_id} (model run {res.model_run_id})"]
    for name in INPUTS:
        if f"{name}_read" in c:
            lines.append(f"{name:<7} read {c[f'{name}_read']:>8}  kept {c[f'{name}_kept']:>8}")
    lines += [f"    {k:<40} {v:>6}" for k, v in sorted(res.reasons.items())]
    lines.append(f"texts embedded {c.get('texts_embedded_new', 0)}; users touched {c.get('users_touched', 0)} "
                 f"(new {c.get('users_new', 0)}), segment changed {c.get('users_changed', 0)}")
    if d.get("users"):
        lines.append(f"drift: far share {d['far_share']:.3f}, PSI {d['psi']:.3f}, mean shift {d['mean_shift']:.3f}"
                     + (f"  -> re-fit recommended: {'; '.join(res.refit_reasons)}" if res.refit_reasons else ""))
    return "\n".join(lines + summary.stage_table(res.stage_seconds))
