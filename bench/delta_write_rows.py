#!/usr/bin/env python
"""Rows written by a native Delta write: counting the committed partition, or the commit's metrics.

Claim under test (issue 17, "fewer Spark jobs per check"): `jobs.delta_native.write` learns how
many rows it wrote from its own commit's operation metrics (DESCRIBE HISTORY, found by the
commit's userMetadata tag) for less driver time than counting the new partition, which reads
the new snapshot and scans its files. A full tiny job makes about 14 such writes and an assign
batch about 5, each followed by one of the two.

The run: one local[2] session with the Delta jars (tests/conftest.py's settings for tiny
inputs), one partitioned table; --writes replaceWhere writes of --rows rows, each a new run_id
partition, tagged as the job tags them; after each, both ways of getting its row count, in
alternating order, timed on the driver (wall seconds). The first --warmup writes are not timed.
Both must agree on every write. Medians are reported, and their ratio.

    python bench/delta_write_rows.py [--writes 24] [--warmup 4] [--rows 50]
        [--out bench/results/delta_write_rows.md]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writes", type=int, default=24)
    ap.add_argument("--warmup", type=int, default=4)
    ap.add_argument("--rows", type=int, default=50)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "delta_write_rows.md"))
    args = ap.parse_args(argv)

    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    import tests.conftest as ct
    from jobs import delta_native

    builder = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
    for key, value in {**ct.TEST_SPARK_CONF, **ct.delta_settings()}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    path = str(Path(tempfile.mkdtemp(prefix="seglake-bench-")) / "table")

    def by_count(run_id: str) -> int:
        return spark.read.format("delta").load(path).where(F.col("run_id") == run_id).count()

    times: dict[str, list[float]] = {"count": [], "metrics": []}
    for i in range(args.writes + args.warmup):
        run_id = f"r{i}"
        df = spark.range(args.rows).select(F.lit(run_id).alias("run_id"), "id", (F.col("id") * 0.5).alias("x"))
        tag = delta_native.commit_tag(spark)
        (df.write.format("delta").mode("overwrite").partitionBy("run_id")
         .option("replaceWhere", f"run_id = '{run_id}'").option("userMetadata", tag).save(path))
        ways = {"count": lambda: by_count(run_id),
                "metrics": lambda: delta_native._rows_committed(spark, path, tag, lambda: -1)}
        got = {}
        for name in (("count", "metrics") if i % 2 else ("metrics", "count")):
            t0 = time.perf_counter()
            got[name] = ways[name]()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)
        assert got["count"] == got["metrics"] == args.rows, got
    spark.stop()

    med = {k: statistics.median(v) for k, v in times.items()}
    line = (f"| {datetime.now(timezone.utc):%Y-%m-%d} | {args.writes} writes of {args.rows} rows | "
            f"{med['count']:.3f} s | {med['metrics']:.3f} s | {med['count'] / med['metrics']:.1f}x |")
    out = Path(args.out)
    if not out.exists():
        out.write_text("# Rows written by a native Delta write (bench/delta_write_rows.py)\n\n"
                       "| date | writes | count of the partition (median) | commit metrics (median) | ratio |\n"
                       "|---|---|---|---|---|\n", encoding="utf-8")
    with out.open("a", encoding="utf-8") as fh:
        fh.write(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
