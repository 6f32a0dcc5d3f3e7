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
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterator

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import cluster, config, delta_io, ingest, metrics, profile, summary
from jobs.clean import clean_texts
from jobs.embed import embed_texts, embed_with_cache
from jobs.session import build_session
from jobs.user_vectors import build_user_vectors
from udfs.embedding import model_id, resolve_model_path

log = logging.getLogger("seglake")
TABLES = ("user_segments", "segments", "k_selection", "quarantine", "text_embeddings", "runs")
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
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return p.parse_args(argv)


def overrides_from_args(args: argparse.Namespace) -> dict:
    """Flags -> a nested conf override (only the flags that were given)."""
    o: dict = {}

    def put(path: str, value) -> None:
        if value is None:
            return
        node = o
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    put("input.texts.path", args.texts)
    put("input.texts.format", args.texts_format)
    put("input.events.path", args.events)
    if args.no_events:
        o.setdefault("input", {}).setdefault("events", {})["path"] = None
    put("input.events.format", args.events_format)
    put("output.root", args.output)
    put("output.engine", args.engine)
    put("cluster.algorithm", args.algorithm)
    put("embed.model_path", args.model_path)
    put("run_id", args.run_id)
    if args.k is not None:
        if args.k != "auto" and not args.k.isdigit():
            raise config.ConfigError(f"--k must be an integer or 'auto', got {args.k!r}")
        put("cluster.k", "auto" if args.k == "auto" else int(args.k))
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


@contextmanager
def stage(name: str, timings: dict[str, float]) -> Iterator[None]:
    log.info("stage %s: start", name)
    t0 = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - t0, 3)
    log.info("stage %s: done in %.1f s", name, timings[name])


def _read(spark: SparkSession, conf: dict, name: str, spec: dict, validate) -> DataFrame:
    src = conf["input"][name]
    raw = ingest.read_source(spark, src["path"], src["format"], src["options"], conf["output"]["engine"], name)
    return (raw.transform(ingest.map_columns, conf["input"]["columns"][name], spec, src["path"], name)
            .transform(validate))


def _reason_counts(df: DataFrame, name: str) -> tuple[int, int, dict[str, int]]:
    """(read, kept, {input:reason: n}) from one pass over a tagged frame."""
    rows = df.groupBy(ingest.REASON).count().collect()
    kept = sum(r["count"] for r in rows if r[ingest.REASON] is None)
    reasons = {f"{name}:{r[ingest.REASON]}": int(r["count"]) for r in rows if r[ingest.REASON] is not None}
    return kept + sum(reasons.values()), kept, reasons


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def run(spark: SparkSession, conf: dict) -> RunResult:
    """The whole job on an existing session."""
    run_id = conf["run_id"] or new_run_id()
    started = datetime.now(timezone.utc)
    root = conf["output"]["root"].rstrip("/")
    tables = {t: f"{root}/{t}" for t in TABLES}
    engine = delta_io.resolve_engine(spark, conf["output"]["engine"])
    timings: dict[str, float] = {}
    counts: dict[str, int] = {}
    reasons: dict[str, int] = {}
    ec, cc, uc = conf["embed"], conf["cluster"], conf["user_vectors"]
    has_events = bool(conf["input"]["events"]["path"])
    log.info("run %s: writing to %s with the %s Delta writer", run_id, root, engine)
    cached: list[DataFrame] = []

    def keep(df: DataFrame) -> DataFrame:
        cached.append(df.persist(StorageLevel.MEMORY_AND_DISK))
        return df

    try:
        # Fail before any work when the model directory is missing (the executors would
        # otherwise each fail the same way, later, with a less direct error).
        resolve_model_path(ec["model_path"])
        with stage("ingest", timings):
            ts_fmt = conf["input"]["timestamp_format"]
            texts = keep(_read(spark, conf, "texts", config.TEXT_COLUMNS,
                               lambda d: ingest.validate_texts(d, ts_fmt))
                         .transform(clean_texts, conf["clean"]["max_tokens"]))
            counts["texts_read"], counts["texts_kept"], r = _reason_counts(texts, "texts")
            reasons.update(r)
            kept_texts, bad_texts = ingest.split_quarantine(texts)
            quarantine = ingest.to_quarantine(bad_texts, "texts", conf["input"]["texts"]["path"], run_id)
            events = None
            if has_events:
                rr = tuple(conf["input"]["rating_range"])
                tagged = keep(_read(spark, conf, "events", config.EVENT_COLUMNS,
                                    lambda d: ingest.validate_events(d, ts_fmt, rr)))
                counts["events_read"], counts["events_kept"], r = _reason_counts(tagged, "events")
                reasons.update(r)
                events, bad_events = ingest.split_quarantine(tagged)
                quarantine = quarantine.unionByName(
                    ingest.to_quarantine(bad_events, "events", conf["input"]["events"]["path"], run_id))
            counts["quarantined"] = sum(reasons.values())
            if counts["texts_kept"] == 0:
                raise ingest.InputError(f"no usable texts in {conf['input']['texts']['path']} "
                                        f"(all {counts['texts_read']} rows quarantined: {reasons})")

        with stage("embed", timings):
            settings = dict(batch_size=ec["batch_size"], token_budget=ec["token_budget"], max_tokens=ec["max_tokens"],
                            device=ec["device"], precision=ec["precision"])
            if ec["cache"]:
                embedded = keep(_embed_cached(spark, kept_texts, tables["text_embeddings"], run_id, engine, ec,
                                              settings, counts, keep))
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
        # Texts/s through the model (cache hits are not counted: they cost no inference).
        embed_rate = counts["texts_embedded_new"] / max(timings["embed"], 1e-9)

        with stage("user_vectors", timings):
            users, feature_params = build_user_vectors(
                embedded, events, pooling=uc["pooling"], half_life_days=uc["half_life_days"],
                behaviour_weight=uc["behaviour_weight"], n_categories=uc["top_categories"], text_dim=text_dim)
            users = keep(users)
            urow = users.agg(F.count(F.lit(1)).alias("n"),
                             F.sum(F.when(F.col("n_events") == 0, 1).otherwise(0)).alias("text_only"),
                             F.sum(F.when(F.col("n_texts") == 0, 1).otherwise(0)).alias("events_only")).first()
            counts["users"], counts["users_text_only"], counts["users_events_only"] = (
                int(urow["n"]), int(urow["text_only"] or 0), int(urow["events_only"] or 0))

        with stage("cluster", timings):
            k_scores: list[dict] = []
            k = cc["k"]
            common = dict(algorithm=cc["algorithm"], seed=cc["seed"], max_iter=cc["max_iter"],
                          distance=cc["distance"], n_init=cc["n_init"])
            model, sample = None, None
            if k == "auto":
                k, k_scores, model, sample = cluster.sweep_k(
                    users, cc["k_min"], cc["k_max"], n_users=counts["users"], sample_size=cc["sample_size"],
                    tolerance=cc["k_tolerance"], **common)
                cached.append(sample)
            if k > counts["users"]:
                raise ValueError(f"k={k} is larger than the number of users ({counts['users']})")
            if model is None:  # the sweep's model is reused when it already saw every user
                model = cluster.fit(users, k, **common)
            assigned = keep(cluster.assign(users, model, cc["distance"]))
            quality = {"silhouette": cluster.silhouette(assigned, cc["distance"]), **metrics.quality(assigned),
                       "stability_ari": None, "stable": None}
            if cc["stability_seeds"] >= 2:
                if sample is None:
                    sample = keep(cluster.stratified_sample(users, counts["users"], cc["sample_size"], cc["seed"]))
                seeds = [cc["seed"] + 1000 * (i + 1) for i in range(cc["stability_seeds"])]
                quality["stability_ari"] = cluster.stability(
                    sample, k, seeds, algorithm=cc["algorithm"], max_iter=cc["max_iter"], distance=cc["distance"],
                    n_init=cc["n_init"])
                quality["stable"] = quality["stability_ari"] >= cc["stability_min_ari"]
                if not quality["stable"]:
                    log.warning("unstable segmentation: mean pairwise ARI over %d seeds is %.3f (< %.2f); "
                                "segments depend on the seed, consider another k or more data",
                                len(seeds), quality["stability_ari"], cc["stability_min_ari"])
            cost = float(model.summary.trainingCost)
            model_path = f"{root}/models/{run_id}"
            model.write().overwrite().save(model_path)
            centers = np.vstack(model.clusterCenters())
            lineage = cluster.bisecting_tree(spark, model_path) if cc["algorithm"] == "bisecting" else {}

        with stage("profile", timings):
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
            segments = keep(segments.join(extra, "segment_id", "left").select(
                "segment_id", "name", "parent_id", "lineage", *[c for c in segments.columns if c != "segment_id"])
                .orderBy("segment_id"))
            seg_rows = [r.asDict(recursive=True) for r in segments.drop("centroid").collect()]
            user_segments = profile.explain_users(assigned, terms, segments).select(
                F.lit(run_id).alias("run_id"), "user_id", F.col("segment_id").cast("int"), "distance",
                F.col("second_segment_id").cast("int"), "second_distance", "margin", "matched_terms",
                "n_texts", "n_events", "lang", F.current_timestamp().alias("assigned_at"))
            projection = _projection(assigned, cc["seed"])

        with stage("write", timings):
            k_table = spark.createDataFrame(
                [{"run_id": run_id, **{c: s.get(c) for c in K_COLUMNS}} for s in k_scores], K_SCHEMA)
            written = {
                "quarantine": delta_io.write_run(quarantine, tables["quarantine"], run_id, engine=engine),
                "user_segments": delta_io.write_run(user_segments, tables["user_segments"], run_id, engine=engine),
                "segments": delta_io.write_run(segments.select(F.lit(run_id).alias("run_id"), "*"),
                                               tables["segments"], run_id, engine=engine),
                "k_selection": delta_io.write_run(k_table, tables["k_selection"], run_id, engine=engine),
            }
            _reconcile(counts, written)

        result = RunResult(run_id, root, tables, counts, reasons, k, quality["silhouette"], cost, k_scores, timings,
                           embed_rate, seg_rows, quality)
        result.report_path = _write_report(conf, result, started, projection)
        _write_runs_row(spark, conf, result, started, "succeeded", engine, model_path, feature_params)
        return result
    except Exception as exc:
        # Record the failure so readers can tell this run_id apart from a succeeded one.
        try:
            failed = RunResult(run_id, root, tables, counts, reasons, 0, float("nan"), float("nan"), [], timings, 0.0)
            _write_runs_row(spark, conf, failed, started, "failed", engine, None, None, error=repr(exc)[:2000])
        except Exception:  # noqa: BLE001 - never hide the original error
            log.exception("could not record the failed run %s", run_id)
        raise
    finally:
        for df in cached:
            df.unpersist()


def _embed_cached(spark: SparkSession, texts: DataFrame, cache_path: str, run_id: str, engine: str, ec: dict,
                  settings: dict, counts: dict[str, int], keep) -> DataFrame:
    """The embed stage with the `text_embeddings` cache: embed only distinct texts whose hash
    is not cached for this model id, append them to the cache (in this run's partition, so a
    rerun of the run replaces rather than duplicates), and join all vectors back."""
    mid = model_id(ec["model_path"], ec["max_tokens"], ec["precision"])
    cache = None
    if delta_io.table_exists(cache_path):
        cache = delta_io.read_table(spark, cache_path, engine=engine).where(F.col("model_id") == mid)
    hits, new = embed_with_cache(texts, cache, ec["model_path"], partitions=ec["partitions"],
                                 threads=ec["threads_per_task"], **settings)
    new = keep(new)
    counts["texts_embedded_new"] = new.count()  # runs the model, once
    rows = new.select(F.lit(run_id).alias("run_id"), F.lit(mid).alias("model_id"), "text_hash", "embedding",
                      F.current_timestamp().alias("created_at"))
    if cache is not None:
        # Rewriting this run's partition must keep what an earlier attempt of the run cached.
        own = keep(cache.where(F.col("run_id") == run_id).select(*rows.columns))
        own.count()
        rows = own.unionByName(rows)
    delta_io.write_run(rows, cache_path, run_id, engine=engine)
    vectors = hits.unionByName(new).select("text_clean", "embedding")
    return texts.join(vectors, "text_clean", "left")


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
    if written["user_segments"] != counts["users"]:
        problems.append(f"user_segments got {written['user_segments']} rows for {counts['users']} users")
    if problems:
        raise RuntimeError("counts do not reconcile: " + "; ".join(problems))


def _write_runs_row(spark: SparkSession, conf: dict, res: RunResult, started: datetime, status: str, engine: str,
                    model_path: str | None, feature_params: dict | None, error: str | None = None) -> None:
    row = {
        **_run_facts(conf, res, started), "status": status, "error": error, "conf": config.snapshot(conf),
        "k_selection": [{c: s.get(c) for c in K_COLUMNS} for s in res.k_selection],
        "model_path": model_path, "report_path": res.report_path,
        "feature_params": json.dumps(feature_params) if feature_params is not None else None,
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
        "report_path string, feature_params string")
    df = spark.createDataFrame([row], schema)
    delta_io.write_run(df, f"{res.output}/runs", res.run_id, engine=engine)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        conf = config.load(args.conf, overrides_from_args(args))
    except (config.ConfigError, ValueError) as exc:
        print(f"seglake-segment: configuration error: {exc}", file=sys.stderr)
        return 2
    spark = build_session(conf["spark"])
    try:
        result = run(spark, conf)
    except ingest.InputError as exc:
        print(f"seglake-segment: input error: {exc}", file=sys.stderr)
        return 3
    print(summary.render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
