"""What the two jobs (seglake-segment, seglake-assign) share around their stages: run ids,
the run's persist scope, stage timing and logging, and reading an input as the job does."""
from __future__ import annotations

import logging
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Callable, Iterator

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession

from jobs import config, ingest
from jobs.clean import prepare_events, prepare_texts, rules

log = logging.getLogger("seglake")


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


@contextmanager
def run_scope(record_failure: Callable[[BaseException], None], what: str) -> Iterator[Callable[[DataFrame], DataFrame]]:
    """One job run: yields `keep(df)`, which persists df until the run ends (success or not).
    On an error, `record_failure(exc)` writes the failed run's row (its own errors are logged,
    never hiding the original) and the error propagates."""
    cached: list[DataFrame] = []

    def keep(df: DataFrame) -> DataFrame:
        cached.append(df.persist(StorageLevel.MEMORY_AND_DISK))
        return df

    try:
        yield keep
    except Exception as exc:
        try:
            record_failure(exc)
        except Exception:  # noqa: BLE001 - never hide the original error
            log.exception("could not record the failed %s", what)
        raise
    finally:
        for df in cached:
            df.unpersist()


@contextmanager
def stage(name: str, timings: dict[str, float], rate: bool = True) -> Iterator[dict[str, int]]:
    """Time a stage into `timings` and log its start and end. The body may put counts into the
    yielded dict ({"texts embedded": 8282}); the end line reports them, the first with its rate
    (unless `rate` is false), so a person following the log sees how much went through and how fast."""
    log.info("stage %s: start", name)
    t0 = time.perf_counter()
    facts: dict[str, int] = {}
    yield facts
    seconds = time.perf_counter() - t0
    timings[name] = round(seconds, 3)
    detail = "".join(f", {n:,} {what}" for what, n in facts.items())
    if facts and rate:
        what, n = next(iter(facts.items()))
        detail += f" ({n / max(seconds, 1e-9):,.1f} {what}/s)"
    log.info("stage %s: done in %.1f s%s", name, seconds, detail)


def read_input(spark: SparkSession, conf: dict, name: str) -> DataFrame:
    """The conf's `name` input (texts or events) read, mapped, validated and cleaned as the job
    does it: every row, with `reason` set on the ones that go to quarantine."""
    src = conf["input"][name]
    spec, prepare = (config.TEXT_COLUMNS, prepare_texts) if name == "texts" else (config.EVENT_COLUMNS, prepare_events)
    raw = ingest.read_source(spark, src["path"], src["format"], src["options"], conf["output"]["engine"], name)
    return (raw.transform(ingest.map_columns, conf["input"]["columns"][name], spec, src["path"], name)
            .transform(lambda d: prepare(d, **rules(conf, name))))
