"""seglake-assign: keep segments fresh without re-fitting.

New texts/events (since the last watermark) are validated, embedded (only texts not in the
`text_embeddings` cache), folded into each touched user's running state in `user_vectors`,
assigned to the nearest centroid of a saved model run (default: the latest succeeded full
run) and upserted into `user_segments` with MERGE. Users whose segment changed get a
`segment_history` row; each run records drift against the model's training run in `drift`
and itself in `assign_runs`. `--stream` does the same per micro-batch of a Structured
Streaming query over folders of new files (checkpointed: a restart resumes without loss or
duplicates).

Commit order, so that a batch killed at any point and run again is applied exactly once:
user_vectors (MERGE, skipping users already updated by this batch) -> segment_history and
drift (replace this batch's partition; skipped when user_segments already has the batch) ->
user_segments (MERGE) -> assign_runs row `succeeded`. A batch run that did not finish is
resumed by the next run with its own run id.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:
    # Run as a file (spark-submit jobs/assign.py): import the package from the repo root or
    # the --py-files zip, not this folder (see jobs/segment_users.py).
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, os.path.dirname(_here))

import argparse
import hashlib
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import cluster, config, delta_io, drift, ingest, summary
from jobs.clean import prepare_events, prepare_texts, rules
from jobs.embed import embed_cached, embed_model_id
from jobs.faults import crash_point
from jobs.history import history_rows
from jobs.lock import job_lock
from jobs.profile import user_terms
from jobs.cli import preflight, run_cli
from jobs.pipeline import new_run_id, run_scope, stage
from jobs.session import LOG_LEVELS, DeltaUnavailable, build_session, setup_logging
from jobs.user_vectors import STATE_COLUMNS, combine_state, features, user_state

log = logging.getLogger("seglake.assign")
UPDATE_IF_NOT_APPLIED = "t.updated_by IS NULL OR t.updated_by <> s.updated_by"
ASSIGN_RUNS_DDL = (
    "run_id string, model_run_id string, mode string, status string, error string, started_at timestamp, "
    "finished_at timestamp, texts_read long, texts_kept long, events_read long, events_kept long, "
    "quarantined long, quarantine_reasons map<string,long>, texts_embedded_new long, users_touched long, "
    "users_new long, users_changed long, texts_watermark timestamp, events_watermark timestamp, "
    "far_share double, psi double, mean_shift double, refit_recommended boolean, stage_seconds map<string,double>")
DRIFT_DDL = ("run_id string, model_run_id string, measured_at timestamp, users long, far_share double, "
             "distance_p95_train double, psi double, mean_shift double, refit_recommended boolean, "
             "reasons array<string>")


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


def tables(root: str) -> dict[str, str]:
    root = root.rstrip("/")
    names = ("user_vectors", "user_segments", "segment_history", "segments", "text_embeddings", "quarantine",
             "drift", "assign_runs", "runs")
    return {t: f"{root}/{t}" for t in names}


def find_model_run(spark: SparkSession, root: str, engine: str = "auto", run_id: str | None = None) -> ModelRun:
    """The given run, or the latest succeeded full run that saved a model."""
    runs = delta_io.read_table_if_exists(spark, tables(root)["runs"], engine=engine)
    if runs is None:
        raise ingest.InputError(f"no runs table under {root}: run seglake-segment (the full job) first")
    ok = runs.where((F.col("status") == "succeeded") & F.col("model_path").isNotNull())
    if run_id:
        ok = ok.where(F.col("run_id") == run_id)
    rows = ok.orderBy(F.desc("finished_at")).limit(1).collect()
    if not rows:
        raise ingest.InputError(f"no succeeded full run {run_id or ''} with a saved model under {root}".replace("  ", " "))
    r = rows[0].asDict()
    params = json.loads(r["feature_params"] or "{}")
    if "drift_reference" not in params or "text_dim" not in params:
        raise ingest.InputError(f"run {r['run_id']} was written by an older SegLake without user state; "
                                "run seglake-segment again")
    return ModelRun(r["run_id"], r["model_path"], r["algorithm"], r["distance"], params, r.get("embed_model_id"))


def last_watermarks(spark: SparkSession, root: str, engine: str = "auto") -> dict:
    """Watermarks after the latest succeeded run, full or incremental: its inputs' latest ts."""
    t = tables(root)
    rows = []
    for name in ("runs", "assign_runs"):
        df = delta_io.read_table_if_exists(spark, t[name], engine=engine)
        if df is not None:
            rows += (df.where(F.col("status") == "succeeded").orderBy(F.desc("finished_at"))
                     .select("finished_at", "texts_watermark", "events_watermark").limit(1).collect())
    if not rows:
        return {"texts_watermark": None, "events_watermark": None}
    latest = max(rows, key=lambda r: r["finished_at"])
    return {"texts_watermark": latest["texts_watermark"], "events_watermark": latest["events_watermark"]}


def refuse_half_written_state(spark: SparkSession, root: str, engine: str = "auto") -> None:
    """Stop when the latest full run never finished but already replaced user_vectors (its
    driver died between that commit and its runs row): the state would not match any saved
    model. The remedy is to finish that run under its own id."""
    t = tables(root)
    runs = delta_io.read_table_if_exists(spark, t["runs"], engine=engine)
    rows = runs.orderBy(F.desc("started_at")).select("run_id", "status").limit(1).collect() if runs is not None else []
    if not rows or rows[0]["status"] == "succeeded":
        return
    rid = rows[0]["run_id"]
    state = delta_io.read_table_if_exists(spark, t["user_vectors"], engine=engine)
    if state is not None and state.where(F.col("updated_by") == rid).limit(1).count():
        raise ingest.InputError(
            f"full run {rid} did not finish ({rows[0]['status']}) but already replaced user_vectors; finish it "
            f"first: seglake-segment --run-id {rid} with the same inputs (its other tables are replaced, not "
            "duplicated)")


def unfinished_batch(spark: SparkSession, root: str, engine: str = "auto") -> str | None:
    """The run id of a batch-mode assign run that started and never succeeded, if the latest
    one did not: it may be partly committed, so it must be finished under the same id."""
    runs = delta_io.read_table_if_exists(spark, tables(root)["assign_runs"], engine=engine)
    if runs is None:
        return None
    rows = runs.where(F.col("mode") == "batch").orderBy(F.desc("started_at")).limit(1).collect()
    return rows[0]["run_id"] if rows and rows[0]["status"] != "succeeded" else None


def assign_batch(spark: SparkSession, conf: dict, texts: DataFrame | None, events: DataFrame | None,
                 run_id: str, model_run: ModelRun, *, mode: str = "batch", watermarks: dict | None = None,
                 reassign_all: bool = False) -> AssignResult:
    """One incremental batch. `texts` / `events` are inputs after `ingest.map_columns`
    (logical columns as strings, `_corrupt_record`); rows not newer than `watermarks` are
    quarantined as before_watermark. `reassign_all` re-assigns every stored user instead."""
    root = conf["output"]["root"].rstrip("/")
    t = tables(root)
    engine = delta_io.resolve_engine(spark, conf["output"]["engine"])
    res = AssignResult(run_id, model_run.run_id)
    counts, timings, params = res.counts, res.stage_seconds, model_run.params
    started = datetime.now(timezone.utc)
    watermarks = dict(watermarks or {"texts_watermark": None, "events_watermark": None})
    res.watermarks = dict(watermarks)

    ec = conf["embed"]
    mid = embed_model_id(ec)
    if model_run.embed_model_id and model_run.embed_model_id != mid:
        raise config.ConfigError(f"embed.model_path: the model run {model_run.run_id} embedded texts with model id "
                                 f"{model_run.embed_model_id}, this conf gives {mid}; assign with the same model")
    _write_run_row(spark, t, res, mode, "running", started, engine)

    def record_failure(exc: BaseException) -> None:
        _write_run_row(spark, t, res, mode, "failed", started, engine, error=repr(exc)[:2000])

    with run_scope(record_failure, f"assign run {run_id}") as keep:
        with stage("ingest", timings):
            quarantine, kept_texts, kept_events = None, None, None
            for name, df in (("texts", texts), ("events", events)):
                if df is None:
                    continue
                prepare = prepare_texts if name == "texts" else prepare_events
                tagged = prepare(df, **rules(conf, name))
                tagged = keep(ingest.tag_before_watermark(tagged, watermarks.get(f"{name}_watermark")))
                counts[f"{name}_read"], counts[f"{name}_kept"], r = ingest.reason_counts(tagged, name)
                res.reasons.update(r)
                kept, bad = ingest.split_quarantine(tagged)
                q = ingest.to_quarantine(bad, name, conf["assign"][name]["path"] or name, run_id)
                quarantine = q if quarantine is None else quarantine.unionByName(q)
                if counts[f"{name}_kept"]:
                    if name == "texts":
                        kept_texts = kept
                    else:
                        kept_events = kept
                    latest = kept.agg(F.max("ts")).first()[0]
                    if latest is not None:
                        prev = watermarks.get(f"{name}_watermark")
                        watermarks[f"{name}_watermark"] = latest if prev is None else max(prev, latest)
            counts["quarantined"] = sum(res.reasons.values())
            if quarantine is not None:
                written = delta_io.write_run(quarantine, t["quarantine"], run_id, engine=engine)
                if written != counts["quarantined"]:
                    raise RuntimeError(f"quarantine got {written} rows, expected {counts['quarantined']}")

        with stage("embed", timings):
            counts["texts_embedded_new"] = 0
            if kept_texts is not None:
                kept_texts, counts["texts_embedded_new"] = embed_cached(kept_texts, t["text_embeddings"], run_id, ec,
                                                                        engine=engine, persist=keep)
                kept_texts = keep(kept_texts)

        with stage("user_vectors", timings):
            stored = delta_io.read_table_if_exists(spark, t["user_vectors"], engine=engine)
            if stored is None:
                raise ingest.InputError(f"no user_vectors table under {root}: run seglake-segment (the full job) first")
            other = stored.where(F.col("model_id") != mid).limit(1).collect()
            if other:
                raise ingest.InputError(f"user_vectors holds vectors of embedding model {other[0]['model_id']}, not "
                                        f"{mid}: run seglake-segment to rebuild it with this model")
            if reassign_all:
                state, batch_state = keep(stored), None
            elif kept_texts is None and kept_events is None:
                state, batch_state = None, None
            else:
                batch_state = user_state(kept_texts, kept_events, pooling=params["pooling"],
                                         half_life_days=params["half_life_days"], model_id=mid, updated_by=run_id)
                touched = stored.join(batch_state.select("user_id"), "user_id", "left_semi")
                state = keep(combine_state(touched, batch_state, pooling=params["pooling"],
                                           half_life_days=params["half_life_days"], model_id=mid, updated_by=run_id))
            counts["users_touched"] = state.count() if state is not None else 0

        if counts["users_touched"]:
            with stage("assign", timings):
                model = model_run.load()
                assigned = keep(cluster.assign(features(state, params), model, model_run.distance,
                                               allowed=params.get("allowed_segments")))
                model_segments = (delta_io.read_table(spark, t["user_segments"], engine=engine)
                                  .where(F.col("run_id") == model_run.run_id))
                old = (model_segments
                       .join(state.select("user_id"), "user_id", "left_semi")
                       .select("user_id", "segment_id", F.col("matched_terms").alias("_old_terms"), "assigned_by"))
                old = keep(old)
                done_before = old.where(F.col("assigned_by") == run_id).limit(1).count() > 0
                rows = _user_segment_rows(spark, t, engine, assigned, old, kept_texts, conf, model_run.run_id, run_id)
                history = history_rows(assigned, old, run_id, model_run.run_id)
                # PSI over everyone after this batch: the model partition moved by this batch's
                # changes (already included when an earlier attempt committed user_segments).
                population = drift.population_sizes(model_segments, None if done_before else history)
                res.drift = drift.drift_measures(assigned, params["drift_reference"], population)
                res.refit_reasons = drift.judge(res.drift, conf["drift"])
                counts["users_new"] = counts["users_touched"] - old.count()

            with stage("write", timings):
                if batch_state is not None:
                    delta_io.merge(state.select(*STATE_COLUMNS), t["user_vectors"], ["user_id"], engine=engine,
                                   update_condition=UPDATE_IF_NOT_APPLIED)
                crash_point("after_user_vectors", run_id)
                if done_before:
                    # An earlier attempt of this run already moved some users in user_segments:
                    # their history rows are the committed ones (recomputing would find no change).
                    redone = old.where(F.col("assigned_by") == run_id).select("user_id")
                    committed = (delta_io.read_table(spark, t["segment_history"], engine=engine)
                                 .where(F.col("run_id") == run_id))
                    history = committed.unionByName(history.join(redone, "user_id", "left_anti"))
                counts["users_changed"] = delta_io.write_run(history, t["segment_history"], run_id, engine=engine)
                delta_io.write_run(_drift_row(spark, res, model_run), t["drift"], run_id, engine=engine)
                crash_point("after_history", run_id)
                delta_io.merge(rows, t["user_segments"], ["run_id", "user_id"], engine=engine, partition_by="run_id",
                               partition_values={"run_id": model_run.run_id},
                               properties=delta_io.user_segments_properties(conf))
                crash_point("after_user_segments", run_id)
            if res.refit_reasons:
                log.warning("drift against model run %s: %s; a re-fit is recommended (seglake-assign "
                            "--refit-if-drifted runs the full job)", model_run.run_id, "; ".join(res.refit_reasons))
        res.watermarks = watermarks
        _write_run_row(spark, t, res, mode, "succeeded", started, engine)
        return res


def _user_segment_rows(spark: SparkSession, t: dict, engine: str, assigned: DataFrame, old: DataFrame,
                       texts: DataFrame | None, conf: dict, model_run_id: str, run_id: str) -> DataFrame:
    """user_segments rows of the assigned users. matched_terms: the new texts' terms among the
    segment's top terms, plus the earlier matches when the segment did not change."""
    top = (delta_io.read_table(spark, t["segments"], engine=engine).where(F.col("run_id") == model_run_id)
           .select("segment_id", F.explode("top_terms").alias("term")))
    new_terms = F.array().cast("array<string>")
    out = assigned.join(old.select("user_id", F.col("segment_id").alias("_old_seg"), "_old_terms"), "user_id", "left")
    if texts is not None:
        matched = (user_terms(texts, conf["profile"]["bigrams"])
                   .join(assigned.select("user_id", "segment_id"), "user_id").join(top, ["segment_id", "term"])
                   .groupBy("user_id").agg(F.collect_set("term").alias("_new_terms")))
        out = out.join(matched, "user_id", "left")
        new_terms = F.coalesce("_new_terms", new_terms)
    same = F.col("_old_seg").eqNullSafe(F.col("segment_id"))
    terms = F.array_sort(F.array_distinct(F.concat(F.when(same, F.coalesce("_old_terms", F.array().cast(
        "array<string>"))).otherwise(F.array().cast("array<string>")), new_terms)))
    return out.select(
        F.lit(model_run_id).alias("run_id"), "user_id", F.col("segment_id").cast("int"), "distance",
        F.col("second_segment_id").cast("int"), "second_distance", "margin", terms.alias("matched_terms"),
        "n_texts", "n_events", "lang", F.current_timestamp().alias("assigned_at"), F.lit(run_id).alias("assigned_by"))


def _drift_row(spark: SparkSession, res: AssignResult, model_run: ModelRun) -> DataFrame:
    d = res.drift
    return spark.createDataFrame([{
        "run_id": res.run_id, "model_run_id": model_run.run_id, "measured_at": datetime.now(timezone.utc),
        "users": d.get("users"), "far_share": d.get("far_share"),
        "distance_p95_train": model_run.params["drift_reference"]["distance_p95"], "psi": d.get("psi"),
        "mean_shift": d.get("mean_shift"), "refit_recommended": bool(res.refit_reasons),
        "reasons": res.refit_reasons}], DRIFT_DDL)


def _write_run_row(spark: SparkSession, t: dict, res: AssignResult, mode: str, status: str, started: datetime,
                   engine: str, error: str | None = None) -> None:
    c, d = res.counts, res.drift
    row = {
        "run_id": res.run_id, "model_run_id": res.model_run_id, "mode": mode, "status": status, "error": error,
        "started_at": started, "finished_at": datetime.now(timezone.utc) if status != "running" else None,
        **{k: c.get(k) for k in ("texts_read", "texts_kept", "events_read", "events_kept", "quarantined",
                                 "texts_embedded_new", "users_touched", "users_new", "users_changed")},
        "quarantine_reasons": res.reasons, **res.watermarks,
        "far_share": d.get("far_share"), "psi": d.get("psi"), "mean_shift": d.get("mean_shift"),
        "refit_recommended": bool(res.refit_reasons), "stage_seconds": res.stage_seconds,
    }
    delta_io.write_run(spark.createDataFrame([row], ASSIGN_RUNS_DDL), t["assign_runs"], res.run_id, engine=engine)


# --------------------------------------------------------------------------------------------
# Batch and streaming drivers
# --------------------------------------------------------------------------------------------


def _mapped(df: DataFrame, conf: dict, name: str, source: str) -> DataFrame:
    spec = config.TEXT_COLUMNS if name == "texts" else config.EVENT_COLUMNS
    return ingest.map_columns(df, conf["input"]["columns"][name], spec, source, name)


def run(spark: SparkSession, conf: dict, *, reassign_all: bool = False) -> AssignResult:
    """One batch: the files under assign.texts / assign.events (or every stored user), holding
    the output root's lock."""
    config.require_catalog_engine(conf, delta_io.resolve_engine(spark, conf["output"]["engine"]))
    with job_lock(spark, conf, "seglake-assign"):
        res = _run_batch(spark, conf, reassign_all)
        _register_tables(spark, conf)
        return res


def _register_tables(spark: SparkSession, conf: dict) -> None:
    """output.catalog_schema: the root's tables by name (the full job named its own; drift and
    assign_runs are this job's)."""
    if conf["output"]["catalog_schema"]:
        delta_io.register_tables(spark, tables(conf["output"]["root"]), conf["output"]["catalog_schema"])


def _run_batch(spark: SparkSession, conf: dict, reassign_all: bool) -> AssignResult:
    root = conf["output"]["root"]
    engine = conf["output"]["engine"]
    model_run = find_model_run(spark, root, engine, conf["assign"]["model_run"])
    refuse_half_written_state(spark, root, engine)
    run_id = conf["run_id"] or unfinished_batch(spark, root, engine)
    if run_id and not conf["run_id"]:
        log.warning("assign run %s did not finish: completing it (its input must be the same files)", run_id)
    run_id = run_id or new_run_id()
    inputs = {}
    if not reassign_all:
        for name in ("texts", "events"):
            src = conf["assign"][name]
            if src["path"]:
                raw = ingest.read_source(spark, src["path"], src["format"], src["options"], engine, name)
                inputs[name] = _mapped(raw, conf, name, src["path"])
    wm = last_watermarks(spark, root, engine) if conf["assign"]["watermark"] and not reassign_all else None
    return assign_batch(spark, conf, inputs.get("texts"), inputs.get("events"), run_id, model_run,
                        mode="reassign" if reassign_all else "batch", watermarks=wm, reassign_all=reassign_all)


def run_stream(spark: SparkSession, conf: dict) -> list[AssignResult]:
    """Structured Streaming over the assign.texts / assign.events folders (or Delta tables with
    native Delta): each micro-batch goes through `assign_batch` with run id
    <prefix>-<batch id>; the checkpoint makes a restart resume where it stopped, and a
    replayed micro-batch is applied once (see the module docstring). The output root's lock is
    held while the stream runs."""
    config.require_catalog_engine(conf, delta_io.resolve_engine(spark, conf["output"]["engine"]))
    with job_lock(spark, conf, "seglake-assign --stream"):
        return _run_stream(spark, conf)


def _run_stream(spark: SparkSession, conf: dict) -> list[AssignResult]:
    root = conf["output"]["root"].rstrip("/")
    a, engine = conf["assign"], conf["output"]["engine"]
    model_run = find_model_run(spark, root, engine, a["model_run"])
    refuse_half_written_state(spark, root, engine)
    checkpoint = a["checkpoint"] or f"{root}/_checkpoints/assign"
    prefix = conf["run_id"] or "stream-" + hashlib.sha256(checkpoint.encode()).hexdigest()[:8]
    streams = []
    for name in ("texts", "events"):
        if a[name]["path"]:
            raw = ingest.read_stream(spark, a[name]["path"], a[name]["format"], a[name]["options"], engine, name,
                                     a["max_files_per_trigger"])
            streams.append(_mapped(raw, conf, name, a[name]["path"]).withColumn("_input", F.lit(name)))
    if not streams:
        raise config.ConfigError("assign.texts.path: streaming needs assign.texts.path or assign.events.path")
    stream = streams[0] if len(streams) == 1 else streams[0].unionByName(streams[1], allowMissingColumns=True)
    results: list[AssignResult] = []
    cols = {"texts": config.TEXT_COLUMNS, "events": config.EVENT_COLUMNS}

    def handle(batch: DataFrame, batch_id: int) -> None:
        batch = batch.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            parts = {}
            for name, spec in cols.items():
                if a[name]["path"]:
                    part = batch.where(F.col("_input") == name).select(*spec["required"], *spec["optional"],
                                                                       ingest.CORRUPT)
                    parts[name] = part
            # No watermark filter: the file source hands each file over exactly once.
            results.append(assign_batch(spark, conf, parts.get("texts"), parts.get("events"),
                                        f"{prefix}-{batch_id:06d}", model_run, mode="stream"))
            if len(results) == 1:  # once per stream: the first batch has written every table there is
                _register_tables(spark, conf)
        finally:
            batch.unpersist()

    writer = stream.writeStream.foreachBatch(handle).option("checkpointLocation", checkpoint)
    writer = writer.trigger(availableNow=True) if a["trigger"] == "available-now" else writer.trigger(
        processingTime=a["trigger"])
    query = writer.queryName(f"seglake-assign-{prefix}").start()
    log.info("streaming assign: query %s, checkpoint %s, model run %s", query.id, checkpoint, model_run.run_id)
    query.awaitTermination()
    return results


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="seglake-assign",
        description="Assign new and changed users to the segments of a saved model run, incrementally: "
                    "updates user_vectors, MERGEs user_segments, records segment_history, drift and assign_runs.")
    p.add_argument("--conf", help="YAML conf profile (the same as the full job's)")
    p.add_argument("--texts", help="new texts: a file or folder (default assign.texts.path)")
    p.add_argument("--texts-format", choices=config.FORMATS)
    p.add_argument("--events", help="new events: a file or folder (default assign.events.path)")
    p.add_argument("--events-format", choices=config.FORMATS)
    p.add_argument("--output", help="output root holding the full job's tables (default lakehouse)")
    p.add_argument("--model-run", help="full run whose model assigns (default: the latest succeeded one)")
    p.add_argument("--model-path", help="BERT model directory (must be the one the model run used)")
    p.add_argument("--run-id", help="run id of this batch (streaming: prefix of the micro-batch run ids)")
    p.add_argument("--engine", choices=("auto", "native", "delta-rs"), help="Delta writer (default auto)")
    p.add_argument("--catalog-schema", help="also register the tables by name in this catalog schema "
                                            "(e.g. main.seglake; native Delta only)")
    p.add_argument("--no-watermark", action="store_true", help="apply every input row, ignoring the last watermark")
    p.add_argument("--reassign-all", action="store_true", help="re-assign every user in user_vectors (no new input)")
    p.add_argument("--refit-if-drifted", action="store_true",
                   help="when drift passes the drift.* thresholds, run the full job on input.* afterwards")
    p.add_argument("--stream", action="store_true", help="Structured Streaming over the input folders")
    p.add_argument("--checkpoint", help="streaming checkpoint location (default <output>/_checkpoints/assign)")
    p.add_argument("--trigger", help="streaming trigger: available-now (default) or an interval like '60 seconds'")
    p.add_argument("--max-files-per-trigger", type=int, help="streaming: files per micro-batch")
    p.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                   help="logging level (default INFO)")
    return p.parse_args(argv)


def overrides_from_args(args: argparse.Namespace) -> dict:
    """Flags -> a nested conf override (only the flags that were given)."""
    o = config.flag_overrides(args, "assign")
    for key, value in (("assign.model_run", args.model_run), ("assign.checkpoint", args.checkpoint),
                       ("assign.trigger", args.trigger), ("assign.max_files_per_trigger", args.max_files_per_trigger),
                       ("assign.watermark", False if args.no_watermark else None)):
        config.put(o, key, value)
    return o


def render(res: AssignResult) -> str:
    c, d = res.counts, res.drift
    lines = [f"SegLake assign run {res.run_id} (model run {res.model_run_id})"]
    for name in ("texts", "events"):
        if f"{name}_read" in c:
            lines.append(f"{name:<7} read {c[f'{name}_read']:>8}  kept {c[f'{name}_kept']:>8}")
    lines += [f"    {k:<40} {v:>6}" for k, v in sorted(res.reasons.items())]
    lines.append(f"texts embedded {c.get('texts_embedded_new', 0)}; users touched {c.get('users_touched', 0)} "
                 f"(new {c.get('users_new', 0)}), segment changed {c.get('users_changed', 0)}")
    if d.get("users"):
        lines.append(f"drift: far share {d['far_share']:.3f}, PSI {d['psi']:.3f}, mean shift {d['mean_shift']:.3f}"
                     + (f"  -> re-fit recommended: {'; '.join(res.refit_reasons)}" if res.refit_reasons else ""))
    return "\n".join(lines + summary.stage_table(res.stage_seconds))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    try:
        conf = config.load(args.conf, overrides_from_args(args), job="assign")
        if not (args.reassign_all or conf["assign"]["texts"]["path"] or conf["assign"]["events"]["path"]):
            raise config.ConfigError("assign.texts.path: give --texts and/or --events (or --reassign-all)")
        if args.refit_if_drifted and not conf["input"]["texts"]["path"]:
            raise config.ConfigError("input.texts.path: --refit-if-drifted runs the full job, which needs the full "
                                     "history under input.texts (and input.events)")
        preflight(conf)  # model directory and pseudonym key, before any Spark work
    except (config.ConfigError, ValueError) as exc:
        print(f"seglake-assign: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        spark = build_session({**conf["spark"], "app_name": "seglake-assign"}, conf["output"]["engine"])
    except DeltaUnavailable as exc:
        print(f"seglake-assign: configuration error: {exc}", file=sys.stderr)
        return 2
    results, code = run_cli("seglake-assign", lambda: run_stream(spark, conf) if args.stream
                            else [run(spark, conf, reassign_all=args.reassign_all)])
    if code:
        return code
    for res in results:
        print(render(res))
    if args.refit_if_drifted and any(r.refit_reasons for r in results):
        from jobs import segment_users, summary

        log.warning("drift past the thresholds: running the full job on %s", conf["input"]["texts"]["path"])
        print(summary.render(segment_users.run(spark, {**conf, "run_id": None})))
    return 0


if __name__ == "__main__":
    sys.exit(main())
