#!/usr/bin/env python
"""The k sweep's scoring: on the driver, or in Spark, of the same fits on the same sample.

Claim under test (issues 17 and 21, "fewer Spark jobs per stage"): when the sweep's sample is
small enough for the driver fit (`cluster.driver_fit_max_users`), scoring each k there
(`jobs/cluster.score` with the collected rows: silhouette as MLlib's ClusteringEvaluator
computes it, WSSSE, Davies-Bouldin, Calinski-Harabasz, balance) gives the same scores as
scoring it in Spark (transform, a distinct count, ClusteringEvaluator, `metrics.quality`) for
far less time.

The run: one local[2] session (tests/conftest.py's settings for tiny inputs, as the tests run
the job; `--profile local` for conf/local.yaml's 8 shuffle partitions, as `make demo` runs
it); per size, planted Gaussian groups in --dims dimensions; every k in [k_min, k_max]
fitted once on the driver, then scored both ways in alternating order, timed on the driver
(wall seconds). Both ways must agree on every score (relative 1e-6). The first size's first
k is a warm-up and not timed.

    python bench/sweep_scoring.py [--sizes 660,20000] [--dims 384] [--k-min 4] [--k-max 12]
        [--profile tests|local] [--out bench/results/sweep_scoring.md]
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="660,20000")
    ap.add_argument("--dims", type=int, default=384)
    ap.add_argument("--k-min", type=int, default=4)
    ap.add_argument("--k-max", type=int, default=12)
    ap.add_argument("--profile", choices=["tests", "local"], default="tests")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "sweep_scoring.md"))
    args = ap.parse_args(argv)

    import numpy as np
    import pyspark
    from pyspark.ml.linalg import Vectors
    from pyspark.sql import SparkSession

    import tests.conftest as ct
    from bench.results_md import append_result
    from jobs import cluster

    settings = dict(ct.TEST_SPARK_CONF)
    if args.profile == "local":
        settings = {"spark.sql.shuffle.partitions": "8"}
    builder = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")

    rows, warm = [], True
    for n in (int(s) for s in args.sizes.split(",")):
        rng = np.random.default_rng(n)
        groups = 8
        centres = rng.normal(0, 1, (groups, args.dims))
        x = centres[rng.integers(0, groups, n)] + rng.normal(0, 0.6, (n, args.dims))
        sample = spark.createDataFrame([(Vectors.dense(v),) for v in x], ["features"]).cache()
        sample.count()
        t = {"driver": 0.0, "spark": 0.0}
        worst = 0.0
        for k in range(args.k_min, args.k_max + 1):
            model = cluster.driver_fit(spark, x, k, n_init=2)
            got = {}
            for way in (("driver", "spark") if k % 2 else ("spark", "driver")):
                t0 = time.perf_counter()
                got[way] = cluster.score(model, sample, x if way == "driver" else None, "euclidean")
                if not warm:
                    t[way] += time.perf_counter() - t0
            if warm:  # (the first k warms both paths up; it is scored again, timed)
                warm = False
                for way in ("driver", "spark"):
                    t0 = time.perf_counter()
                    got[way] = cluster.score(model, sample, x if way == "driver" else None, "euclidean")
                    t[way] += time.perf_counter() - t0
            for key, value in got["spark"].items():
                gap = abs(got["driver"][key] - value) / max(abs(value), 1e-12)
                assert math.isclose(got["driver"][key], value, rel_tol=1e-6, abs_tol=1e-12), (k, key, got)
                worst = max(worst, gap)
        n_k = args.k_max - args.k_min + 1
        rows.append(f"| {n:,} × {args.dims} | {n_k} | {t['spark']:.2f} s ({t['spark'] / n_k:.2f} s a k) | "
                    f"{t['driver']:.2f} s ({t['driver'] / n_k:.3f} s a k) | **{t['spark'] / t['driver']:.0f}×** | "
                    f"{worst:.1e} |")
        sample.unpersist()
    spark.stop()

    lines = [f"## {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
             "",
             f"`python bench/sweep_scoring.py {' '.join(argv if argv is not None else sys.argv[1:])}`; "
             f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
             f"pyspark {pyspark.__version__}, numpy {np.__version__}, profile {args.profile}, k {args.k_min}..{args.k_max}.",
             "",
             "| sample | k's | scored in Spark | scored on the driver | ratio | largest relative gap of a score |",
             "|---|---|---|---|---|---|",
             *rows, ""]
    append_result(args.out, "The k sweep's scoring: driver vs Spark", "sweep_scoring.py", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
