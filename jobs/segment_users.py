"""seglake-segment: texts + events in, BERT user vectors, MLlib segments, Delta tables out.

Run it as `seglake-segment ...`, `python -m jobs.segment_users ...` or through
`spark-submit.sh ...`; all take the same flags (see --help).
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:
    # Run as a file (spark-submit jobs/segment_users.py): Python put this folder first on
    # sys.path, where config.py / profile.py would shadow top-level modules. Import the
    # package from the repo root (or the --py-files zip) instead.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, os.path.dirname(_here))

import argparse
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import cluster, config, delta_io, ingest, metrics, privacy, profile, recommend, summary, tracking
from jobs.drift import drift_reference
from jobs.faults import crash_point
from jobs.history import history_rows
from jobs.lock import job_lock
from jobs.embed import embed_cached, embed_model_id, embed_texts
from jobs.cli import preflight, run_cli
from jobs.pipeline import new_run_id, read_input, run_scope, stage
from jobs.session import LOG_LEVELS, DeltaUnavailable, build_session, setup_logging
from jobs.user_vectors import STATE_COLUMNS, build_user_vectors, user_state
from udfs.embedding import resolve_model_path

log = logging.getLogger("seglake")
TABLES = ("user_segments", "segments", "k_selection", "quarantine", "text_embeddings", "user_vectors",
          "segment_history", "segment_recommendations", "user_recommendations", "runs")
QUALITY = ("wssse", "davies_bouldin", "calinski_harabasz", "min_share", "max_share", "size_entropy")
K_COLUMNS = ("k", "silhouette", "cost", *QUALITY, "sample_size", "chosen")
K_SCHEMA = ("run_id string, k int, silhouette double, cost double, wssse double, davies_bouldin double, "
            "calinski_harabasz double, min_share double, max_share double, size_entropy double, "
            "sample_size long, chosen boolean")
PROJECTION_POINTS = 2000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="seglake-segment",
        description="Segment users by what they write (BERT embeddings) and what they do (events); "
                    "write Delta tables user_segments, segments, quarantine and runs under --output.",
    )
    p.add_argument("--texts", help="texts input path (columns user_id, text, optional ts, item_id, lang)")
    p.add_argument("--texts-format", choices=config.FORMATS, help="texts format (default csv)")
    p.add_argument("--events", help="optional events input path (user_id, item_id, event_type, rating, category, ts)")
    p.add_argument("--no-events", action="store_true", help="run on texts only, ignoring the conf's events input")
    p.add_argument("--events-format", choices=config.FORMATS, help="events format (default csv)")
    p.add_argument("--output", help="output root for the Delta tables (default lakehouse)")
    p.add_argument("--conf", help="YAML conf profile (conf/local.yaml, conf/cluster.yaml, conf/databricks.yaml)")
    p.add_argument("--k", help="number of segments, or 'auto' to pick by silhouette over cluster.k_min..k_max")
    p.add_argument("--algorithm", choices=("kmeans", "bisecting"), help="MLlib clustering algorithm")
    p.add_argument("--model-path", help="local BERT model directory (default: packaged all-MiniLM-L6-v2)")
    p.add_argument("--run-id", help="run id; rerunning with the same id replaces that run's rows")
    p.add_argument("--engine", choices=("auto", "native", "delta-rs"), help="Delta writer (default auto)")
    p.add_argument("--catalog-schema", help="also register the tables by name in this catalog schema "
                                            "(e.g. main.seglake; native Delta only)")
    p.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                   help="logging level (default INFO)")
    return p.parse_args(argv)


def overrides_from_args(args: argparse.Namespace) -> dict:
    """Flags -> a nested conf override (only the flags that were given)."""
    o = config.flag_overrides(args, "input")
    if args.no_events:
        o.setdefault("input", {}).setdefault("events", {})["path"] = None
    config.put(o, "cluster.algorithm", args.algorithm)
    if args.k is not None:
        if args.k != "auto" and not args.k.isdigit():
            raise config.ConfigError(f"--k must be an integer or 'auto', got {args.k!r}")
        config.put(o, "cluster.k", "auto" if args.k == "auto" else int(args.k))
    return o


@dataclass
class RunResult:
    """What a run produced: enough for the summary and for tests."""

    run_id: str
    output: str
    tables: dict[str, str]
    counts: dict[str, int]
    reasons: dict[str, int]
    k: int
    silhouette: float
    cost: float
    k_selection: list[dict]
    stage_seconds: dict[str, float]
    embed_texts_per_s: float
    segments: list[dict] = field(default_factory=list)
    quality: dict = field(default_factory=dict)
    report_path: str | None = None
    model_path: str | None = None
    table_names: dict[str, str] = field(default_factory=dict)  # catalog names (output.catalog_schema)
    model: object = field(default=None, repr=False)  # the fitted MLlib model (for MLflow)
    tracking: dict | None = None  # the MLflow run, when tracked


def run(spark: SparkSession, conf: dict) -> RunResult:
    """The whole job on an existing session, holding the output root's lock (jobs/lock.py):
    a second run on the same root fails (or waits) before it writes anything."""
    run_id = conf["run_id"] or new_run_id()
    engine = delta_io.resolve_engine(spark, conf["output"]["engine"])
    config.require_catalog_engine(conf, engine)
    with job_lock(spark, conf, "seglake-segment", run_id), \
            tracking.tracked(conf, "seglake-segment", run_id) as tracker:
        result = _run(spark, conf, run_id, engine)
        tracker.log_segment_run(conf, result)
        return result


def _run(spark: SparkSession, conf: dict, run_id: str, engine: str) -> RunResult:
    started = datetime.now(timezone.utc)
    root = conf["output"]["root"].rstrip("/")
    tables = {t: f"{root}/{t}" for t in TABLES}
    table_names: dict[str, str] = {}
    timings: dict[str, float] = {}
    counts: dict[str, int] = {}
    reasons: dict[str, int] = {}
    ec, cc, uc = conf["embed"], conf["cluster"], conf["user_vectors"]
    has_events = bool(conf["input"]["events"]["path"])
    log.info("run %s: writing to %s with the %s Delta writer", run_id, root, engine)

    def unfinished() -> RunResult:
        """The run so far, for a runs row written before it succeeded."""
        return RunResult(run_id, root, tables, counts, reasons, 0, float("nan"), float("nan"), [], timings, 0.0)

    def record_failure(exc: BaseException) -> None:
        # Record the failure so readers can tell this run_id apart from a succeeded one.
        _write_runs_row(spark, conf, unfinished(), started, "failed", engine, None, error=repr(exc)[:2000])

    # A "running" row first: if the driver dies, readers (and seglake-assign) can tell that this
    # run started and never finished; the final row replaces it (same run_id partition).
    _write_runs_row(spark, conf, unfinished(), started, "running", engine, None)
    with run_scope(record_failure, f"run {run_id}") as keep:
        # Fail before any work when the model directory is missing (the executors would
        # otherwise each fail the same way, later, with a less direct error).
        resolve_model_path(ec["model_path"])
        with stage("ingest", timings) as facts:
            texts = keep(read_input(spark, conf, "texts"))
            counts["texts_read"], counts["texts_kept"], r = ingest.reason_counts(texts, "texts")
            reasons.update(r)
            kept_texts, bad_texts = ingest.split_quarantine(texts)
            quarantine = ingest.to_quarantine(bad_texts, "texts", conf["input"]["texts"]["path"], run_id)
            events = None
            if has_events:
                tagged = keep(read_input(spark, conf, "events"))
                counts["events_read"], counts["events_kept"], r = ingest.reason_counts(tagged, "events")
                reasons.update(r)
                events, bad_events = ingest.split_quarantine(tagged)
                quarantine = quarantine.unionByName(
                    ingest.to_quarantine(bad_events, "events", conf["input"]["events"]["path"], run_id))
            counts["quarantined"] = sum(reasons.values())
            facts["rows read"] = counts["texts_read"] + counts.get("events_read", 0)
            facts["quarantined"] = counts["quarantined"]
            if counts["texts_kept"] == 0:
                raise ingest.InputError(f"no usable texts in {conf['input']['texts']['path']} "
                                        f"(all {counts['texts_read']} rows quarantined: {reasons})")

        with stage("embed", timings) as facts:
            settings = dict(batch_size=ec["batch_size"], token_budget=ec["token_budget"], max_tokens=ec["max_tokens"],
                            device=ec["device"], precision=ec["precision"])
            if ec["cache"]:
                embedded, counts["texts_embedded_new"] = embed_cached(
                    kept_texts, tables["text_embeddings"], run_id, ec, engine=engine, persist=keep)
                embedded = keep(embedded)
            else:
                embedded = keep(kept_texts.transform(
                    embed_texts, ec["model_path"], threads_per_task=ec["threads_per_task"],
                    partitions=ec["partitions"], dedupe=ec["dedupe"], **settings))
            row = embedded.agg(F.count(F.lit(1)).alias("n"), F.countDistinct("text_clean").alias("d"),
                               F.max(F.size("embedding")).alias("dim")).first()
            counts["texts_embedded"], counts["texts_embedded_distinct"] = int(row["n"]), int(row["d"])
            counts.setdefault("texts_embedded_new", counts["texts_embedded_distinct"])
            # Every distinct text either went through the model or came from the cache.
            counts["texts_embedding_cache_hits"] = (counts["texts_embedded_distinct"]
                                                    - counts["texts_embedded_new"])
            text_dim = int(row["dim"])
            facts["texts embedded"] = counts["texts_embedded_new"]
            facts["from the cache"] = counts["texts_embedding_cache_hits"]
        crash_point("after_embed", run_id)  # (tests: the cache holds this run's vectors now)
        # Texts/s through the model (cache hits are not counted: they cost no inference).
        embed_rate = counts["texts_embedded_new"] / max(timings["embed"], 1e-9)

        with stage("user_vectors", timings) as facts:
            # The state is persisted first: the user_vectors table and the features are derived
            # from the very same rows, so the assign job reproduces every user's segment exactly.
            state = keep(user_state(embedded, events, pooling=uc["pooling"], half_life_days=uc["half_life_days"],
                                    model_id=embed_model_id(ec), updated_by=run_id))
            users, feature_params, _ = build_user_vectors(
                embedded, events, pooling=uc["pooling"], half_life_days=uc["half_life_days"],
                behaviour_weight=uc["behaviour_weight"], n_categories=uc["top_categories"], text_dim=text_dim,
                state=state)
            users = keep(users)
            wm = state.agg(F.max("last_text_ts").alias("t"), F.max("last_event_ts").alias("e")).first()
            watermarks = {"texts_watermark": wm["t"], "events_watermark": wm["e"]}
            urow = users.agg(F.count(F.lit(1)).alias("n"),
                             F.sum(F.when(F.col("n_events") == 0, 1).otherwise(0)).alias("text_only"),
                             F.sum(F.when(F.col("n_texts") == 0, 1).otherwise(0)).alias("events_only")).first()
            counts["users"], counts["users_text_only"], counts["users_events_only"] = (
                int(urow["n"]), int(urow["text_only"] or 0), int(urow["events_only"] or 0))
            facts["users"] = counts["users"]
            # A user's mistake, found as soon as users are counted (not after the clustering).
            if cc["k"] != "auto" and cc["k"] > counts["users"]:
                raise config.ConfigError(f"--k / cluster.k is {cc['k']}, more than the {counts['users']} users "
                                         f"in the input; use a smaller k or 'auto'")
            if cc["k"] == "auto" and cc["k_min"] > counts["users"] - 1:
                raise config.ConfigError(f"--k auto sweeps k from cluster.k_min={cc['k_min']}, which needs more than "
                                         f"the {counts['users']} users in the input; lower cluster.k_min or give --k")

        with stage("cluster", timings) as facts:
            k_scores: list[dict] = []
            k = cc["k"]
            common = dict(algorithm=cc["algorithm"], seed=cc["seed"], max_iter=cc["max_iter"],
                          distance=cc["distance"], n_init=cc["n_init"], init_steps=cc["init_steps"])
            model, sample = None, None
            if k == "auto":
                k, k_scores, model, sample = cluster.sweep_k(
                    users, cc["k_min"], cc["k_max"], n_users=counts["users"], sample_size=cc["sample_size"],
                    tolerance=cc["k_tolerance"], **common)
                keep(sample)  # (already persisted by the sweep: released with the rest)
            if model is None:  # the sweep's model is reused when it already saw every user
                model = cluster.fit_on_sample(users, k, n_users=counts["users"],
                                              sample_size=cc["fit_sample_size"], **common)
            assigned = keep(cluster.assign(users, model, cc["distance"]))
            # (MLlib may return fewer centroids than k when the data has fewer distinct points.)
            n_centers = len(model.clusterCenters())
            assigned, privacy_note = _min_segment_size(assigned, users, model, n_centers, conf["privacy"],
                                                       cc["distance"], keep)
            feature_params.update(privacy_note)
            quality = {"silhouette": cluster.silhouette(assigned, cc["distance"]), **metrics.quality(assigned),
                       "stability_ari": None, "stable": None}
            if cc["stability_seeds"] >= 2:
                if sample is None:
                    sample = keep(cluster.stratified_sample(users, counts["users"], cc["sample_size"], cc["seed"]))
                seeds = [cc["seed"] + 1000 * (i + 1) for i in range(cc["stability_seeds"])]
                quality["stability_ari"] = cluster.stability(
                    sample, k, seeds, algorithm=cc["algorithm"], max_iter=cc["max_iter"], distance=cc["distance"],
                    n_init=cc["n_init"], init_steps=cc["init_steps"])
                quality["stable"] = quality["stability_ari"] >= cc["stability_min_ari"]
                if not quality["stable"]:
                    log.warning("unstable segmentation: mean pairwise ARI over %d seeds is %.3f (< %.2f); "
                                "segments depend on the seed, consider another k or more data",
                                len(seeds), quality["stability_ari"], cc["stability_min_ari"])
            cost = cluster.total_cost(assigned, cc["distance"])  # every user's, not the fit sample's
            feature_params["drift_reference"] = drift_reference(assigned)
            model_path = f"{root}/models/{run_id}"
            model.write().overwrite().save(model_path)
            centers = np.vstack(model.clusterCenters())
            lineage = cluster.bisecting_tree(spark, model_path) if cc["algorithm"] == "bisecting" else {}
            facts["users assigned"] = counts["users"]

        with stage("profile", timings, rate=False) as facts:
            terms = keep(profile.user_terms(embedded, conf["profile"]["bigrams"]))
            segments = profile.profile_segments(
                assigned, embedded, terms, events, centers, text_dim=text_dim,
                top_terms_n=conf["profile"]["top_terms"], representative_n=conf["profile"]["representative_texts"],
                top_categories_n=conf["profile"]["top_categories"], typical_n=conf["profile"]["typical_users"])
            segments = keep(segments)
            names = profile.name_segments([r.asDict(recursive=True) for r in segments.drop("centroid").collect()])
            extra = spark.createDataFrame(
                [(sid, names[sid], lineage[sid][-2] if len(lineage.get(sid, [])) > 1 else None, lineage.get(sid))
                 for sid in names], "segment_id int, name string, parent_id int, lineage array<int>")
            segments = segments.join(extra, "segment_id", "left").select(
                "segment_id", "name", "parent_id", "lineage", *[c for c in segments.columns if c != "segment_id"])
            segments = privacy.suppress_profiles(segments, privacy_note.get("suppressed_segments", []),
                                                 conf["privacy"]["min_segment_size"]).orderBy("segment_id")
            # k rows: collected once and rebuilt as a plain frame, so the tables and joins built
            # from it (user_segments' explanations, the write) do not carry the profile stage's
            # plan, whose text reached tens of MB (Spark renders it for every query).
            collected = segments.collect()
            segments = keep(spark.createDataFrame(collected, segments.schema))
            seg_rows = [{c: v for c, v in r.asDict(recursive=True).items() if c != "centroid"} for r in collected]
            facts["segments"] = len(seg_rows)
            user_segments = profile.explain_users(assigned, terms, segments).select(
                F.lit(run_id).alias("run_id"), "user_id", F.col("segment_id").cast("int"), "distance",
                F.col("second_segment_id").cast("int"), "second_distance", "margin", "matched_terms",
                "n_texts", "n_events", "lang", F.current_timestamp().alias("assigned_at"),
                F.lit(run_id).alias("assigned_by"))
            projection = _projection(assigned, cc["seed"])

        recs, user_recs = _recommend(conf, events, assigned, terms, segments, seg_rows, privacy_note,
                                     watermarks["events_watermark"], timings, keep)

        with stage("write", timings) as facts:
            k_table = spark.createDataFrame(
                [{"run_id": run_id, **{c: s.get(c) for c in K_COLUMNS}} for s in k_scores], K_SCHEMA)
            # One Delta commit per table; a rerun of the run id replaces its partition (idempotent).
            # Readers take only runs whose runs row says succeeded, which is written last.
            written = {
                "quarantine": delta_io.write_run(quarantine, tables["quarantine"], run_id, engine=engine),
                "user_segments": delta_io.write_run(user_segments, tables["user_segments"], run_id, engine=engine,
                                                    properties=delta_io.user_segments_properties(conf)),
            }
            crash_point("after_user_segments", run_id)
            written.update({
                "segments": delta_io.write_run(segments.select(F.lit(run_id).alias("run_id"), "*"),
                                               tables["segments"], run_id, engine=engine),
                "k_selection": delta_io.write_run(k_table, tables["k_selection"], run_id, engine=engine),
                "segment_history": delta_io.write_run(
                    history_rows(user_segments.select("user_id", "segment_id"), None, run_id, run_id),
                    tables["segment_history"], run_id, engine=engine),
                # The user state is rebuilt from the full input: it replaces the table (older
                # versions stay readable through Delta time travel).
                "user_vectors": delta_io.overwrite_table(state.select(*STATE_COLUMNS), tables["user_vectors"],
                                                         engine=engine),
            })
            crash_point("after_user_vectors", run_id)
            if recs is not None:
                written["segment_recommendations"] = delta_io.write_run(
                    recs.select(F.lit(run_id).alias("run_id"), "*"), tables["segment_recommendations"], run_id,
                    engine=engine)
            if user_recs is not None:
                written["user_recommendations"] = delta_io.write_run(
                    user_recs.select(F.lit(run_id).alias("run_id"), "*"), tables["user_recommendations"], run_id,
                    engine=engine)
            for t in ("segment_recommendations", "user_recommendations"):
                if t in written:
                    counts[f"{t}_rows"] = written[t]
                else:
                    tables.pop(t)  # (not written by this run: no events, or switched off)
            facts["rows written"] = sum(written.values())
            _reconcile(counts, written)
            if conf["output"]["catalog_schema"]:
                table_names = delta_io.register_tables(spark, tables, conf["output"]["catalog_schema"])

        result = RunResult(run_id, root, tables, counts, reasons, k, quality["silhouette"], cost, k_scores, timings,
                           embed_rate, seg_rows, quality, model_path=model_path, model=model,
                           table_names=table_names)
        result.report_path = _write_report(conf, result, started, projection)
        _write_runs_row(spark, conf, result, started, "succeeded", engine, feature_params, watermarks)
        return result


def _recommend(conf: dict, events: DataFrame | None, assigned: DataFrame, terms: DataFrame, segments: DataFrame,
               seg_rows: list[dict], privacy_note: dict, as_of, timings: dict[str, float],
               keep: Callable[[DataFrame], DataFrame]) -> tuple[DataFrame | None, DataFrame | None]:
    """The recommend stage (jobs/recommend.py): (segment_recommendations rows, user_recommendations
    rows or None). Needs events; each segment row gets its `top_items` for the summary."""
    rc = conf["recommend"]
    if not rc["enabled"] or events is None:
        log.info("recommend: skipped (%s)", "no events" if rc["enabled"] else "recommend.enabled is false")
        return None, None
    with stage("recommend", timings, rate=False) as facts:
        inter = recommend.interactions(events, rc["event_weights"], as_of=as_of, half_life_days=rc["half_life_days"],
                                       rating_range=tuple(conf["input"]["rating_range"]))
        scores = keep(recommend.item_scores(
            inter, assigned, lift_weight=rc["lift_weight"], lift_prior=rc["lift_prior"], min_users=rc["min_users"],
            fallback_n=rc["top_n"], exclude_segments=privacy_note.get("suppressed_segments")))
        reasons = recommend.reason_terms(terms, assigned, segments, rc["reason_terms"])
        recs = keep(recommend.segment_recommendations(scores, reasons, rc["top_n"]))
        top: dict[int, list[str]] = {}
        for r in recs.where(F.col("rank") <= 5).orderBy("segment_id", "rank").collect():
            top.setdefault(r["segment_id"], []).append(r["item_id"])
        for s in seg_rows:
            s["top_items"] = top.get(s["segment_id"], [])
        facts["segments"] = len(top)
        user_recs = None
        if rc["user_table"]:
            # Everything a user interacted with counts as consumed (views too).
            user_recs = recommend.recommend_for_users(assigned, scores, events, rc["top_n"])
    return recs, user_recs


def _min_segment_size(assigned: DataFrame, users: DataFrame, model, k: int, pc: dict, distance: str,
                      keep: Callable[[DataFrame], DataFrame]) -> tuple[DataFrame, dict]:
    """privacy.min_segment_size: segments with fewer users are merged into their nearest
    allowed neighbours (users re-assigned to the nearest centroid among the allowed ones), or
    kept with their profiles suppressed. Returns the assignment and what was done (saved in
    the run's feature_params, so seglake-assign applies the same rule)."""
    min_size = pc["min_segment_size"]
    if not min_size:
        return assigned, {}
    sizes = {int(r["segment_id"]): int(r["count"]) for r in assigned.groupBy("segment_id").count().collect()}
    small = privacy.small_segments(sizes, k, min_size)
    note: dict = {"min_segment_size": min_size}
    if not small:
        return assigned, note
    if pc["small_segments"] == "suppress":
        log.info("privacy: profiles of %d segment(s) below %d users are suppressed: %s", len(small), min_size, small)
        return assigned, {**note, "suppressed_segments": small}
    allowed = privacy.allowed_segments(sizes, k, min_size)
    log.info("privacy: %d segment(s) below %d users merged into their neighbours: %s", len(small), min_size, small)
    return keep(cluster.assign(users, model, distance, allowed=allowed)), {
        **note, "allowed_segments": allowed, "merged_segments": small}


def _projection(assigned: DataFrame, seed: int) -> list[dict]:
    """PCA (Spark ML) of a sample of user vectors to 2-D, for the report's scatter plot."""
    from pyspark.ml.feature import PCA
    from pyspark.ml.functions import vector_to_array

    n = assigned.count()
    sample = assigned.sample(fraction=min(1.0, PROJECTION_POINTS / max(n, 1)), seed=seed).select("features", "segment_id")
    if n < 3:
        return []
    pca = PCA(k=2, inputCol="features", outputCol="_p").fit(sample)
    rows = pca.transform(sample).select(vector_to_array("_p").alias("p"), "segment_id").limit(PROJECTION_POINTS).collect()
    return [{"x": float(r["p"][0]), "y": float(r["p"][1]), "segment_id": int(r["segment_id"])} for r in rows]


def _run_facts(conf: dict, res: RunResult, started: datetime) -> dict:
    """The run as plain values: the runs-table row and the report header share it."""
    try:
        embed_model = resolve_model_path(conf["embed"]["model_path"])
    except Exception:  # noqa: BLE001 - a bad model path is the error being recorded
        embed_model = conf["embed"]["model_path"]
    c, q = res.counts, res.quality
    return {
        "run_id": res.run_id, "started_at": started, "finished_at": datetime.now(timezone.utc),
        "texts_read": c.get("texts_read"), "texts_kept": c.get("texts_kept"),
        "events_read": c.get("events_read"), "events_kept": c.get("events_kept"),
        "quarantined": c.get("quarantined"), "quarantine_reasons": res.reasons,
        "texts_embedded_distinct": c.get("texts_embedded_distinct"),
        "texts_embedded_new": c.get("texts_embedded_new"),
        "users": c.get("users"), "users_text_only": c.get("users_text_only"),
        "users_events_only": c.get("users_events_only"),
        "algorithm": conf["cluster"]["algorithm"], "distance": conf["cluster"]["distance"],
        "k": res.k or None, "silhouette": res.silhouette, "cost": res.cost,
        **{m: q.get(m) for m in QUALITY}, "stability_ari": q.get("stability_ari"), "stable": q.get("stable"),
        "stage_seconds": res.stage_seconds, "embed_texts_per_s": res.embed_texts_per_s,
        "embedding_model": embed_model,
    }


def _write_report(conf: dict, res: RunResult, started: datetime, projection: list[dict]) -> str | None:
    """The HTML report beside the tables: <output>/reports/<run_id>.html."""
    if not conf["output"]["report"]:
        return None
    from jobs import report

    html = report.render_report(_run_facts(conf, res, started), res.k_selection, res.segments, projection)
    path = f"{res.output}/reports/{res.run_id}.html"
    if ingest.is_local_path(path):
        return report.write_report(html, path)
    from pyarrow import fs as pafs

    filesystem, inner = pafs.FileSystem.from_uri(path)
    filesystem.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(inner) as out:
        out.write(html.encode("utf-8"))
    return path


def _reconcile(counts: dict[str, int], written: dict[str, int]) -> None:
    """Rows in = rows out + rows quarantined, checked against what was actually written."""
    problems = []
    if written["quarantine"] != counts["quarantined"]:
        problems.append(f"quarantine table got {written['quarantine']} rows, expected {counts['quarantined']}")
    if counts["texts_embedded"] != counts["texts_kept"]:
        problems.append(f"{counts['texts_embedded']} texts embedded for {counts['texts_kept']} kept")
    for table in ("user_segments", "user_vectors", "segment_history"):
        if written[table] != counts["users"]:
            problems.append(f"{table} got {written[table]} rows for {counts['users']} users")
    if problems:
        raise RuntimeError("counts do not reconcile: " + "; ".join(problems))


def _write_runs_row(spark: SparkSession, conf: dict, res: RunResult, started: datetime, status: str, engine: str,
                    feature_params: dict | None, watermarks: dict | None = None,
                    error: str | None = None) -> None:
    row = {
        **_run_facts(conf, res, started), "status": status, "error": error, "conf": config.snapshot(conf),
        "k_selection": [{c: s.get(c) for c in K_COLUMNS} for s in res.k_selection],
        "model_path": res.model_path, "report_path": res.report_path,
        "feature_params": json.dumps(feature_params) if feature_params is not None else None,
        "embed_model_id": embed_model_id(conf["embed"]) if status == "succeeded" else None,
        **(watermarks or {"texts_watermark": None, "events_watermark": None}),
    }
    schema = (
        "run_id string, status string, error string, started_at timestamp, finished_at timestamp, conf string, "
        "texts_read long, texts_kept long, events_read long, events_kept long, quarantined long, "
        "quarantine_reasons map<string,long>, texts_embedded_distinct long, texts_embedded_new long, users long, users_text_only long, "
        "users_events_only long, algorithm string, distance string, k int, silhouette double, cost double, "
        "wssse double, davies_bouldin double, calinski_harabasz double, min_share double, max_share double, "
        "size_entropy double, stability_ari double, stable boolean, "
        "k_selection array<struct<k:int,silhouette:double,cost:double,wssse:double,davies_bouldin:double,"
        "calinski_harabasz:double,min_share:double,max_share:double,size_entropy:double,sample_size:long,"
        "chosen:boolean>>, "
        "stage_seconds map<string,double>, embed_texts_per_s double, embedding_model string, model_path string, "
        "report_path string, feature_params string, embed_model_id string, texts_watermark timestamp, "
        "events_watermark timestamp")
    df = spark.createDataFrame([row], schema)
    delta_io.write_run(df, f"{res.output}/runs", res.run_id, engine=engine)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_level)
    try:
        conf = config.load(args.conf, overrides_from_args(args))
        preflight(conf)
    except (config.ConfigError, ValueError) as exc:
        print(f"seglake-segment: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        spark = build_session(conf["spark"], conf["output"]["engine"])
    except DeltaUnavailable as exc:
        print(f"seglake-segment: configuration error: {exc}", file=sys.stderr)
        return 2
    result, code = run_cli("seglake-segment", lambda: run(spark, conf))
    if code:
        return code
    print(summary.render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
