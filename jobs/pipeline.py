"""What the two jobs (seglake-segment, seglake-assign) share: the run context every stage
takes, stage timing and logging, the run's persist scope, and the two stages both run
(ingest, embed).

A stage is a function of the context plus its own conf section that returns a small frozen
result; the DataFrame -> DataFrame work inside it lives in the stage's module (jobs/ingest.py,
jobs/embed.py, ...), which knows nothing of runs.
"""
from __future__ import annotations

import logging
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterator

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import config, ingest
from jobs.clean import prepare_events, prepare_texts, rules
from jobs.config import EmbedConf, Source
from jobs.embed import embed_cached, embed_texts
from jobs.hooks import Hooks, current
from jobs.tables import Lake

log = logging.getLogger("seglake")
INPUTS = ("texts", "events")


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


@dataclass
class RunContext:
    """One run of a job: its id, the lake it writes, the conf, and what the stages add as
    they go (timings, counts, quarantine reasons, the frames persisted until the run ends)."""

    spark: SparkSession
    conf: dict
    run_id: str
    lake: Lake
    hooks: Hooks = field(default_factory=current)  # (tests install theirs: jobs/hooks.py)
    started: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    timings: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    _persisted: list[DataFrame] = field(default_factory=list, repr=False)
    _session_conf: dict[str, str | None] = field(default_factory=dict, repr=False)  # what fit_to_input changed

    @property
    def engine(self) -> str:
        return self.lake.engine

    def keep(self, df: DataFrame) -> DataFrame:
        """Persist df until the run ends (success or not)."""
        self._persisted.append(df.persist(StorageLevel.MEMORY_AND_DISK))
        return df

    def release(self) -> None:
        # Newest first: uncaching a frame that later cached frames were built on makes Spark
        # re-plan and re-cache each of those (CacheManager.recacheByCondition), seconds per
        # frame with these plans; in reverse order no cached frame depends on the one dropped.
        for df in reversed(self._persisted):
            df.unpersist()
        self._persisted.clear()
        for key, value in self._session_conf.items():  # the session as the run found it
            if value is None:
                self.spark.conf.unset(key)
            else:
                self.spark.conf.set(key, value)
        self._session_conf.clear()

    def set_session_conf(self, settings: dict[str, str]) -> None:
        """Runtime SQL settings for the rest of this run (put back by `release`)."""
        for key, value in settings.items():
            self._session_conf.setdefault(key, self.spark.conf.get(key, None))
            self.spark.conf.set(key, value)

    def stage(self, name: str, rate: bool = True):
        return stage(name, self.timings, rate)

    def crash_point(self, point: str) -> None:
        """A place where the fault-tolerance tests kill the driver (inert otherwise)."""
        self.hooks.crash_point(point, self.run_id)


@contextmanager
def run_scope(ctx: RunContext, record_failure: Callable[[BaseException], None], what: str) -> Iterator[RunContext]:
    """One job run: on an error, `record_failure(exc)` writes the failed run's row (its own
    errors are logged, never hiding the original) and the error propagates; either way the
    run's persisted frames are released."""
    try:
        yield ctx
    except Exception as exc:
        try:
            record_failure(exc)
        except Exception:  # noqa: BLE001 - never hide the original error
            log.exception("could not record the failed %s", what)
        raise
    finally:
        ctx.release()


@contextmanager
def stage(name: str, timings: dict[str, float], rate: bool = True) -> Iterator[dict[str, int]]:
    """Time a stage into `timings` and log its start and end. The body may put counts into the
    yielded dict ({"texts embedded": 8282}); the end line reports them, the first with its rate
    (unless `rate` is false), so a person following the log sees how much went through and how fast."""
    log.info("stage %s: start", name)
    t0 = time.perf_counter()
    facts: dict[str, int | str] = {}  # counts ("12,345 users") or notes ("segments by language en 6, zh 6")
    yield facts
    seconds = time.perf_counter() - t0
    timings[name] = round(seconds, 3)
    detail = "".join(f", {n:,} {what}" if isinstance(n, int) else f", {what} {n}" for what, n in facts.items())
    if facts and rate and isinstance(next(iter(facts.values())), int):
        what, n = next(iter(facts.items()))
        detail += f" ({n / max(seconds, 1e-9):,.1f} {what}/s)"
    log.info("stage %s: done in %.1f s%s", name, seconds, detail)


def read_mapped(spark: SparkSession, conf: dict, src: Source, name: str, *, stream: bool = False,
                max_files_per_trigger: int | None = None) -> DataFrame:
    """One input read as configured and mapped to its logical columns (strings, plus
    `_corrupt_record`): a batch DataFrame, or a streaming one with `stream`."""
    engine = conf["output"]["engine"]
    if stream:
        raw = ingest.read_stream(spark, src.path, src.format, src.options, engine, name, max_files_per_trigger)
    else:
        raw = ingest.read_source(spark, src.path, src.format, src.options, engine, name)
    spec = config.TEXT_COLUMNS if name == "texts" else config.EVENT_COLUMNS
    return ingest.map_columns(raw, conf["input"]["columns"][name], spec, src.path, name)


def read_input(spark: SparkSession, conf: dict, name: str) -> DataFrame:
    """The conf's `name` input (texts or events) read, mapped, validated and cleaned as the
    full job does it: every row, with `reason` set on the ones that go to quarantine."""
    prepare = prepare_texts if name == "texts" else prepare_events
    return read_mapped(spark, conf, getattr(config.InputConf.of(conf), name), name).transform(
        lambda d: prepare(d, **rules(conf, name)))


@dataclass(frozen=True)
class Ingested:
    """The ingest stage's result: kept rows per input (None: no such input, or nothing kept
    when `drop_empty`), the quarantine rows, and the inputs' watermarks after this run."""

    texts: DataFrame | None
    events: DataFrame | None
    quarantine: DataFrame | None
    watermarks: dict


def ingest_stage(ctx: RunContext, inputs: dict[str, tuple[DataFrame, str]], *, before: dict | None = None,
                 drop_empty: bool = False, track_watermarks: bool = False) -> Ingested:
    """Validate and clean each input (name -> (mapped rows, source named in quarantine rows)).
    Rows not newer than `before`'s watermarks are tagged before_watermark. Counts go to
    ctx.counts (<name>_read, <name>_kept, quarantined) and ctx.reasons; nothing is dropped:
    read = kept + quarantined per input."""
    kept: dict[str, DataFrame | None] = {name: None for name in INPUTS}
    watermarks = dict(before or {"texts_watermark": None, "events_watermark": None})
    quarantine = None
    with ctx.stage("ingest") as facts:
        for name, (df, source) in inputs.items():
            prepare = prepare_texts if name == "texts" else prepare_events
            tagged = prepare(df, **rules(ctx.conf, name))
            if before is not None:
                tagged = ingest.tag_before_watermark(tagged, before.get(f"{name}_watermark"))
            tagged = ctx.keep(tagged)
            ctx.counts[f"{name}_read"], ctx.counts[f"{name}_kept"], r = ingest.reason_counts(tagged, name)
            ctx.reasons.update(r)
            good, bad = ingest.split_quarantine(tagged)
            q = ingest.to_quarantine(bad, name, source, ctx.run_id)
            quarantine = q if quarantine is None else quarantine.unionByName(q)
            if ctx.counts[f"{name}_kept"] or not drop_empty:
                kept[name] = good
            if track_watermarks and ctx.counts[f"{name}_kept"]:
                latest = good.agg(F.max("ts")).first()[0]
                prev = watermarks[f"{name}_watermark"]
                if latest is not None:
                    watermarks[f"{name}_watermark"] = latest if prev is None else max(prev, latest)
        ctx.counts["quarantined"] = sum(ctx.reasons.values())
        facts["rows read"] = sum(ctx.counts.get(f"{n}_read", 0) for n in INPUTS)
        facts["quarantined"] = ctx.counts["quarantined"]
    return Ingested(kept["texts"], kept["events"], quarantine, watermarks)


def small_input_settings(spark: SparkSession) -> dict[str, str]:
    """The SQL settings of a small run: no adaptive execution, one shuffle partition per core."""
    return {"spark.sql.adaptive.enabled": "false",
            "spark.sql.shuffle.partitions": str(max(spark.sparkContext.defaultParallelism, 1))}


def fit_to_input(ctx: RunContext) -> None:
    """Small inputs (spark.small_input_rows kept rows) run the rest of the full job with
    `small_input_settings`; large ones keep the profile's settings.

    Why: on 1,000 users x 10 texts (bench/small_runs.py, cold, 2 cores) adaptive execution's
    re-planning and 8 shuffle partitions of a few KB each took the non-embed stages from 75.7 s
    to 101.9 s. Only the full job: its input's size is its tables' size. An assign batch is small
    but MERGEs into tables of every user, whose joins need adaptive execution's choices."""
    rows = sum(ctx.counts.get(f"{n}_kept", 0) for n in INPUTS)
    limit = config.SparkConf.of(ctx.conf).small_input_rows
    if not limit or rows > limit:
        return
    settings = small_input_settings(ctx.spark)
    if all(ctx.spark.conf.get(k, None) == v for k, v in settings.items()):
        return
    ctx.set_session_conf(settings)
    log.info("small input (%s rows kept, spark.small_input_rows %s): adaptive execution off, %s shuffle partitions",
             f"{rows:,}", f"{limit:,}", settings["spark.sql.shuffle.partitions"])


@dataclass(frozen=True)
class Embedded:
    """The embed stage's result: the kept texts + `embedding` (None without texts) and the
    vectors' dimension (0 when not measured)."""

    texts: DataFrame | None
    dim: int = 0


def embed_stage(ctx: RunContext, texts: DataFrame | None, ec: EmbedConf, *, cache: bool = True,
                measure: bool = False) -> Embedded:
    """The kept texts + `embedding`, through the text_embeddings cache when `cache` (only
    texts the cache lacks run through the model). Counts texts_embedded_new and, with
    `measure`, texts_embedded, texts_embedded_distinct and texts_embedding_cache_hits."""
    c = ctx.counts
    with ctx.stage("embed") as facts:
        c["texts_embedded_new"] = 0
        if texts is None:
            return Embedded(None)
        if cache:
            embedded, c["texts_embedded_new"] = embed_cached(texts, ctx.lake, ctx.run_id, ec, persist=ctx.keep,
                                                             task_hook=ctx.hooks.task_hook)
            embedded = ctx.keep(embedded)
        else:
            embedded = ctx.keep(texts.transform(
                embed_texts, ec.model_path, threads_per_task=ec.threads_per_task, partitions=ec.partitions,
                dedupe=ec.dedupe, task_hook=ctx.hooks.task_hook, **ec.settings))
        dim = 0
        if measure:
            row = embedded.agg(F.count(F.lit(1)).alias("n"), F.countDistinct("text_clean").alias("d"),
                               F.max(F.size("embedding")).alias("dim")).first()
            c["texts_embedded"], c["texts_embedded_distinct"], dim = int(row["n"]), int(row["d"]), int(row["dim"])
            if not cache:
                c["texts_embedded_new"] = c["texts_embedded_distinct"]
            # Every distinct text either went through the model or came from the cache.
            c["texts_embedding_cache_hits"] = c["texts_embedded_distinct"] - c["texts_embedded_new"]
        facts["texts embedded"] = c["texts_embedded_new"]
        if measure:
            facts["from the cache"] = c["texts_embedding_cache_hits"]
    return Embedded(embedded, dim)
