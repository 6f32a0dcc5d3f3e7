#!/usr/bin/env python
"""Cluster stage at scale: MLlib KMeans (fit + assign every user) against scikit-learn.

One run, the same generated data for every method, a scaling curve over --users.

Data: N users x D dims (default 384) of clustered float32 vectors, generated inside Spark
(spark.range + an Arrow UDF; the driver never holds them) and written once to Parquet under
--work as (user_id bigint, features array<float>). Every method reads that Parquet; the
data is reused by later runs with the same N, D, --true-k, --spread and --seed.
The generator: --true-k centres (default 2 x k, so k-means has to merge true clusters and
the init matters), centre components N(0, spread^2), unequal cluster weights (0.5..2,
normalised), per-cluster noise N(0, s^2) per dim with s in 0.7..1.3. Batches are seeded by
(seed, first id of the batch).

Methods (each in a fresh child process: fresh JVM and Python workers, so peak memory is
per method; the JVM start and a warm-up job that starts the Python workers are not timed):

  sklearn       scikit-learn KMeans(n_clusters=k, algorithm="lloyd", max_iter=iters, n_init=1,
                init="k-means++", random_state=seed, tol=0) on float32 numpy; prepare = read
                the Parquet with pyarrow into one (N, D) float32 array (the baseline runs on
                one machine's memory by definition); fit + predict(all users) timed.
  job           the job's cluster stage: users read from Parquet, `array_to_vector`, cached
                and counted (prepare: the job has `users` cached when the cluster stage
                starts); `jobs.cluster.fit_on_sample(users, k, sample_size=--sample,
                n_init=--n-init, init_steps=--job-init-steps, max_iter=iters)` (a stratified
                sample; the job's estimator: block solver, 8 MB blocks, tol 1e-4; defaults
                50k users, 8 restarts, 1 k-means|| round; the restart with the lowest sample
                cost wins) then `jobs.cluster.assign` on every user
                (the job's Arrow UDF: float32 GEMM ranking, exact float64 distances).
  mllib-full    the same, fitted on all users (`jobs.cluster.fit`).
  mllib-block   MLlib KMeans on ALL users with solver="block", maxBlockSizeInMB=--block-mb,
                initSteps=--init-steps, tol=--tol, fitted on the Parquet column through
                `array_to_vector`, not cached (the block solver caches its own double
                blocks, so no user-level cache: no double caching; MLlib 4.2 rejects the
                Parquet array<float> itself because its elements are nullable);
                assign = `jobs.cluster.assign` (below).
  mllib-sample  the same estimator fitted on a uniform sample of --sample users (read from
                Parquet, `sample`, `array_to_vector`, cached; part of fit time), then every
                user assigned with `jobs.cluster.assign`.

Assign, for every Spark method: `jobs.cluster.assign` (the job's Arrow UDF: a float32 GEMM
ranks the centroids, the best two are measured in float64) over the users as MLlib vectors;
mllib-block / mllib-sample convert the Parquet column with `array_to_vector` first, as the job
holds its users.

Timing: `fit` and `assign` (assign = every user assigned, consumed by an aggregate: count,
sum of distance^2 - nothing per user reaches the driver). `fit+assign` is the target number,
compared with sklearn's fit+predict; `prepare` is reported beside it.
Cost (not timed): for every method's final centroids, sum over ALL N users of the squared
distance to the nearest centroid, in float64, in Spark (Arrow UDF + sum), from the same
Parquet. The sklearn reference cost is the same quantity computed in numpy float64 in the
sklearn child; the sanity check computes the Spark cost of sklearn's centroids and compares it
with both sklearn's inertia_ and that numpy value (must agree to 1e-4 relative).
Memory: a thread samples /proc every 0.2 s (bench/embed_memory.py's Sampler, extended per
stage): the driver (the child's Python process: sklearn runs there), the JVM, and the Python
workers (pyspark.daemon + its forked workers: the sum of their RSS, an upper bound since
forked workers share pages, and the largest single worker). Peaks are sampled VmRSS maxima
within each stage.

    python bench/cluster_scale.py [--users 10000,100000,1000000] [--dims 384] [--k 50]
        [--iters 20] [--sample 100000] [--methods sklearn,mllib-full,mllib-block,mllib-sample]
        [--init-steps 1] [--block-mb 8] [--tol 0] [--driver-memory 12g] [--arrow-batch 8192]
        [--work DIR] [--out bench/results/cluster_scale.md]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from jobs.session import local_env  # noqa: E402 - needs the repo on sys.path

local_env()

from embed_memory import MiB, Sampler, _cmdline, _status  # noqa: E402 - the /proc sampler of the embed bench
from results_md import append_result, mem_total  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402 - module level: the Arrow UDFs' type hints are resolved in these globals

METHODS = ("sklearn", "job", "mllib-full", "mllib-block", "mllib-sample")


# ---------------------------------------------------------------- memory per stage

class StageSampler(Sampler):
    """embed_memory's Sampler, with the sampled RSS maxima kept per named stage."""

    def __init__(self):
        super().__init__()
        self.current: str | None = None
        self.peaks: dict[str, dict[str, int]] = {}
        self.seconds: dict[str, float] = {}

    def sample(self) -> None:
        roles = self._roles()
        cur = {"driver": 0, "jvm": 0, "python": 0, "worker_max": 0}
        for pid, (role, cmd) in roles.items():
            st = _status(pid)
            if not st or not cmd or _cmdline(pid) != cmd:  # gone, or exec'd in between
                continue
            rss = st.get("VmRSS", 0)
            if role in ("driver", "jvm"):
                cur[role] += rss
            elif role in ("daemon", "worker"):
                cur["python"] += rss
                if role == "worker":
                    cur["worker_max"] = max(cur["worker_max"], rss)
        with self.lock:
            if self.current is not None:
                peak = self.peaks.setdefault(self.current, {})
                for key, value in cur.items():
                    peak[key] = max(peak.get(key, 0), value)

    @contextlib.contextmanager
    def stage(self, name: str):
        with self.lock:
            self.current = name
        self.sample()
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = time.perf_counter() - t
            self.sample()
            with self.lock:
                self.current = None
            print(f"   {name}: {self.seconds[name]:.2f} s, peak RSS MiB "
                  + ", ".join(f"{k} {v / MiB:,.0f}" for k, v in self.peaks.get(name, {}).items()), flush=True)

    def report(self) -> dict:
        return {name: {"s": s, **self.peaks.get(name, {})} for name, s in self.seconds.items()}


# ---------------------------------------------------------------- data

def data_dir(args, n: int) -> Path:
    return Path(args.work) / f"data-n{n}-d{args.dims}-t{args.true_k}-s{args.spread:g}-seed{args.seed}"


def n_partitions(n: int, dims: int) -> int:
    """Files of about 64 MiB, at least 4 (so 2 cores share even the small sizes)."""
    p = max(4, math.ceil(n * dims * 4 / (64 * MiB)))
    return p + p % 2


def generator(args):
    """(centres, weights, scales) of the synthetic mixture, from --seed."""

    rng = np.random.default_rng(args.seed)
    centres = (rng.standard_normal((args.true_k, args.dims)) * args.spread).astype(np.float32)
    weights = rng.uniform(0.5, 2.0, args.true_k)
    scales = rng.uniform(0.7, 1.3, args.true_k).astype(np.float32)
    return centres, weights / weights.sum(), scales


def generate(spark, args, n: int, path: Path) -> None:
    from pyspark.sql import functions as F

    centres, weights, scales = generator(args)
    seed, dims, true_k = args.seed, args.dims, args.true_k

    @F.arrow_udf("array<float>")
    def _vectors(ids: pa.Array) -> pa.Array:
        idv = ids.to_numpy(zero_copy_only=False)
        if not len(idv):
            return pa.array([], type=pa.list_(pa.float32()))
        rng = np.random.default_rng([seed, int(idv[0]), len(idv)])
        label = rng.choice(true_k, size=len(idv), p=weights)
        x = rng.standard_normal((len(idv), dims), dtype=np.float32)
        x *= scales[label][:, None]
        x += centres[label]
        offsets = pa.array(np.arange(0, len(idv) * dims + 1, dims, dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, pa.array(x.ravel()))

    df = spark.range(0, n, 1, numPartitions=n_partitions(n, args.dims)).select(
        F.col("id").alias("user_id"), _vectors("id").alias("features"))
    df.write.mode("overwrite").parquet(str(path))


def load_numpy(path: Path, n: int, dims: int):
    """The Parquet into one (n, dims) float32 array, batch by batch (peak: the array + a batch)."""
    import pyarrow.parquet as pq

    x = np.empty((n, dims), dtype=np.float32)
    row = 0
    for f in sorted(path.glob("*.parquet")):
        for batch in pq.ParquetFile(f).iter_batches(batch_size=65536, columns=["features"]):
            col = batch.column(0)
            vals = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, dims)
            x[row:row + len(vals)] = vals
            row += len(vals)
    assert row == n, (row, n)
    return x


# ---------------------------------------------------------------- Spark helpers

def nearest_cost(col, centers):
    """float64 squared distance of each row of the array<float> column to its nearest centroid
    (nearest by the expansion, then the exact sum of squared differences to it)."""
    from pyspark.sql import functions as F

    c = np.asarray(centers, dtype=np.float64)
    c2 = (c * c).sum(1)
    dims = c.shape[1]

    @F.arrow_udf("double")
    def _cost(v: pa.Array) -> pa.Array:
        n = len(v)
        x = v.flatten().to_numpy(zero_copy_only=False).reshape(n, dims).astype(np.float64)
        near = ((x * x).sum(1)[:, None] - 2 * x @ c.T + c2[None, :]).argmin(1)
        diff = x - c[near]
        return pa.array(np.einsum("ij,ij->i", diff, diff))

    return _cost(col)


def spark_cost(raw, centers) -> float:
    from pyspark.sql import functions as F

    return float(raw.select(nearest_cost(F.col("features"), centers).alias("d2")).agg(F.sum("d2")).first()[0])


def consume(assigned) -> dict:
    """Assign every user, nothing per user to the driver: count, sum of distance^2, and the
    runner-up columns so they are computed too."""
    from pyspark.sql import functions as F

    row = assigned.agg(F.count(F.lit(1)).alias("n"), F.sum(F.col("distance") ** 2).alias("cost"),
                       F.sum("segment_id").alias("ids"), F.sum("second_distance").alias("sd"),
                       F.countDistinct("segment_id").alias("used")).first()
    return {"n": int(row["n"]), "assign_cost": float(row["cost"]), "segments_used": int(row["used"])}


# ---------------------------------------------------------------- one method (child process)

def run_sklearn(args, sampler: StageSampler) -> dict:
    from sklearn.cluster import KMeans

    n, path = args.point, data_dir(args, args.point)
    with sampler.stage("prepare"):
        x = load_numpy(path, n, args.dims)
    km = KMeans(n_clusters=args.k, algorithm="lloyd", max_iter=args.iters, n_init=1, init="k-means++",
                random_state=args.seed, tol=0)
    with sampler.stage("fit"):
        km.fit(x)
    with sampler.stage("assign"):
        labels = km.predict(x)
    with sampler.stage("cost"):  # float64, exact, in chunks (not timed in the totals)
        c = km.cluster_centers_.astype(np.float64)
        cost = 0.0
        for i in range(0, n, 65536):
            diff = x[i:i + 65536].astype(np.float64) - c[labels[i:i + 65536]]
            cost += float(np.einsum("ij,ij->", diff, diff))
    centers_path = path.parent / f"sklearn-centers-{path.name}-k{args.k}-i{args.iters}.npy"
    np.save(centers_path, km.cluster_centers_)
    return {"cost": cost, "inertia": float(km.inertia_), "iters": int(km.n_iter_),
            "segments_used": len(np.unique(labels)), "centers_path": str(centers_path), "n": n}


def run_spark(args, sampler: StageSampler) -> dict:
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    from jobs import cluster
    from jobs.session import build_session

    n, path, method = args.point, data_dir(args, args.point), args.method
    with sampler.stage("session"):
        spark = build_session({"master": "local[2]", "app_name": f"cluster-scale-{method}", "conf": {
            "spark.driver.memory": args.driver_memory,
            "spark.sql.execution.arrow.maxRecordsPerBatch": str(args.arrow_batch),
            "spark.sql.shuffle.partitions": "8",
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
        }})
        spark.sparkContext.setLogLevel("ERROR")
        raw = spark.read.parquet(str(path))
        # Warm-up, as in a long-running job: the Python workers (reused) start here, not in
        # the first timed UDF; a first scan of the Parquet footers.
        # (The aggregates read the UDF's output: a bare count would prune the UDF away.)
        zeros = np.zeros((2, args.dims))
        raw.limit(64).select(nearest_cost(F.col("features"), zeros).alias("d2")).agg(F.sum("d2")).first()
        spark.range(0, 4096, 1, numPartitions=2).select(
            nearest_cost(F.array(*[F.lit(0.0).cast("float")] * args.dims), zeros).alias("d2")
        ).agg(F.sum("d2")).first()
    out: dict = {"n": n, "partitions": raw.rdd.getNumPartitions()}
    vectors = raw.select("user_id", array_to_vector("features").alias("features"))  # the job's users, uncached

    def estimator():
        return KMeans(k=args.k, seed=args.seed, maxIter=args.iters, tol=args.tol, initSteps=args.init_steps,
                      solver="block", maxBlockSizeInMB=args.block_mb, featuresCol="features",
                      predictionCol="segment_id")

    if method in ("mllib-full", "job"):
        with sampler.stage("prepare"):
            # The job's `users` frame: Vector features and the stratification columns, cached.
            users = raw.select("user_id", array_to_vector("features").alias("features"), F.lit("en").alias("lang"),
                               F.lit(1).alias("n_texts"), F.lit(0).alias("n_events")).cache()
            assert users.count() == n
        with sampler.stage("fit"):
            fit_args = dict(seed=args.seed, max_iter=args.iters, n_init=args.n_init, init_steps=args.job_init_steps)
            if method == "job":
                model = cluster.fit_on_sample(users, args.k, n_users=n, sample_size=args.sample, **fit_args)
            else:
                model = cluster.fit(users, args.k, **fit_args)
        with sampler.stage("assign"):
            out.update(consume(cluster.assign(users, model)))
    elif method == "mllib-block":
        with sampler.stage("fit"):
            # Not `fit(raw)`: MLlib wants array<float> with non-null elements and Parquet's are
            # nullable (IllegalArgumentException). The Vector conversion is not cached: the
            # block solver caches its own blocks.
            model = estimator().fit(raw.select(array_to_vector("features").alias("features")))
        with sampler.stage("assign"):
            out.update(consume(cluster.assign(vectors, model)))
    elif method == "mllib-sample":
        with sampler.stage("fit"):
            fraction = min(1.0, args.sample / n)
            sample = raw.sample(fraction=fraction, seed=args.seed) if fraction < 1.0 else raw
            sample = sample.select(array_to_vector("features").alias("features")).cache()
            out["sample_size"] = sample.count()
            model = estimator().fit(sample)
        with sampler.stage("assign"):
            out.update(consume(cluster.assign(vectors, model)))
    else:
        raise ValueError(method)
    assert out["n"] == n, out
    out["iters"] = int(model.summary.numIter)
    out["mllib_training_cost"] = float(model.summary.trainingCost)
    centers = np.vstack(model.clusterCenters())
    out["centers_returned"] = len(centers)
    with sampler.stage("cost"):
        out["cost"] = spark_cost(raw, centers)
    if args.check_centers:
        with sampler.stage("check"):
            out["check_cost"] = spark_cost(raw, np.load(args.check_centers))
    spark.stop()
    return out


def run_point(args) -> dict:
    sampler = StageSampler()
    sampler.start()
    if args.method == "generate":
        from jobs.session import build_session

        with sampler.stage("session"):
            spark = build_session({"master": "local[2]", "app_name": "cluster-scale-generate", "conf": {
                "spark.driver.memory": args.driver_memory, "spark.ui.enabled": "false",
                "spark.ui.showConsoleProgress": "false",
                "spark.sql.execution.arrow.maxRecordsPerBatch": str(min(args.arrow_batch, 4096))}})
            spark.sparkContext.setLogLevel("ERROR")
        with sampler.stage("generate"):
            generate(spark, args, args.point, data_dir(args, args.point))
        spark.stop()
        res = {"n": args.point}
    elif args.method == "sklearn":
        res = run_sklearn(args, sampler)
    else:
        res = run_spark(args, sampler)
    sampler.stop_event.set()
    res["stages"] = sampler.report()
    return res


# ---------------------------------------------------------------- parent

FORWARD = ("dims", "k", "iters", "sample", "n_init", "job_init_steps", "true_k", "spread", "seed", "init_steps", "block_mb", "tol",
           "driver_memory", "arrow_batch", "work")


def spawn(args, n: int, method: str, check_centers: str | None = None) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        path = fh.name
    cmd = [sys.executable, __file__, "--point", str(n), "--method", method, "--json", path]
    for key in FORWARD:
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    if check_centers:
        cmd += ["--check-centers", check_centers]
    print(f"== N={n:,} {method}", flush=True)
    subprocess.run(cmd, check=True)
    res = json.loads(Path(path).read_text(encoding="utf-8"))
    os.unlink(path)
    res["method"] = method
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", default="10000,100000,1000000", help="comma list of N")
    p.add_argument("--dims", type=int, default=384)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--sample", type=int, default=50_000, help="users the job / mllib-sample methods fit on")
    p.add_argument("--job-init-steps", type=int, default=1, help="k-means|| steps of the job / mllib-full methods (the job's cluster.init_steps)")
    p.add_argument("--n-init", type=int, default=8, help="restarts of the job / mllib-full methods (the job's n_init)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--true-k", type=int, help="true clusters in the generated data (default 2 x k)")
    p.add_argument("--spread", type=float, default=0.5, help="std of the true centres' components (noise std ~1)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--init-steps", type=int, default=1, help="k-means|| steps of mllib-block/-sample (MLlib: 2)")
    p.add_argument("--block-mb", type=float, default=8.0, help="maxBlockSizeInMB of mllib-block/-sample (MLlib: 0 = 1 MB)")
    p.add_argument("--tol", type=float, default=0.0, help="tol of mllib-block/-sample (mllib-full keeps the job's 1e-4)")
    p.add_argument("--driver-memory", default="12g")
    p.add_argument("--arrow-batch", type=int, default=8192, help="spark.sql.execution.arrow.maxRecordsPerBatch")
    p.add_argument("--work", default=os.path.expanduser("~/.cache/seglake-bench/cluster-scale"))
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "cluster_scale.md"))
    # internal: one method at one size in this (child) process
    p.add_argument("--point", type=int, help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--check-centers", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.true_k is None:
        args.true_k = 2 * args.k

    if args.point is not None:
        res = run_point(args)
        Path(args.json).write_text(json.dumps(res), encoding="utf-8")
        return 0

    sizes = [int(s) for s in args.users.split(",") if s]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        p.error(f"unknown methods {sorted(unknown)}; choose from {', '.join(METHODS)}")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results, gens, checks = [], {}, {}
    for n in sizes:
        if not (data_dir(args, n) / "_SUCCESS").exists():
            gens[n] = spawn(args, n, "generate")
        sk = spawn(args, n, "sklearn") if "sklearn" in methods else None
        if sk:
            results.append(sk)
        first_spark = True
        for m in methods:
            if m == "sklearn":
                continue
            res = spawn(args, n, m, check_centers=sk["centers_path"] if sk and first_spark else None)
            if "check_cost" in res:
                checks[n] = {"inertia": sk["inertia"], "numpy": sk["cost"], "spark": res["check_cost"]}
                rel = max(abs(res["check_cost"] - sk["inertia"]) / sk["inertia"],
                          abs(res["check_cost"] - sk["cost"]) / sk["cost"])
                checks[n]["rel"] = rel
                print(f"   sanity N={n:,}: sklearn inertia_ {sk['inertia']:.6g}, numpy float64 {sk['cost']:.6g}, "
                      f"Spark cost of sklearn's centroids {res['check_cost']:.6g}: max rel diff {rel:.2e} "
                      f"({'OK' if rel <= 1e-4 else 'MISMATCH'})", flush=True)
            first_spark = False
            results.append(res)
    total = time.perf_counter() - t0

    import numpy  # noqa: F811 - for its version
    import pyspark
    import sklearn

    def stage_s(r, name):
        return r["stages"].get(name, {}).get("s", 0.0)

    def peak(r, key, names=("prepare", "fit", "assign")):
        return max((r["stages"].get(s, {}).get(key, 0) for s in names), default=0)

    base = {r["n"]: r for r in results if r["method"] == "sklearn"}
    mb = lambda b: f"{b / MiB:,.0f}" if b else "—"  # noqa: E731
    cmd = " ".join(["python bench/cluster_scale.py", *(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))])
    lines = [
        f"## {args.dims} dims, k = {args.k}, {args.iters} iterations, users {', '.join(f'{n:,}' for n in sizes)} "
        f"({datetime.now(timezone.utc):%Y-%m-%d})",
        "",
        f"`{cmd}` — {platform.machine()}, {os.cpu_count()} cores, {mem_total() / 2**30:.1f} GiB RAM, "
        f"Python {platform.python_version()}, pyspark {pyspark.__version__}, scikit-learn {sklearn.__version__}, "
        f"numpy {numpy.__version__}; Spark local[2], driver memory {args.driver_memory}, Arrow batch "
        f"{args.arrow_batch:,}. Total {total / 60:.1f} min.",
        "",
        f"Data: generated, {args.true_k} true clusters (centre std {args.spread:g}, noise std 0.7-1.3, unequal "
        f"sizes), float32, Parquet; every method reads the same files. mllib-block / mllib-sample: "
        f"solver=block, maxBlockSizeInMB={args.block_mb:g}, initSteps={args.init_steps}, tol={args.tol:g}; "
        f"mllib-sample fits on ~{args.sample:,} users. mllib-full: the job's code and MLlib defaults.",
        "",
        "Seconds; `fit+assign` is the clustering stage (the target: ≤ 3× sklearn's fit+predict), `prepare` is "
        "loading/caching the input (sklearn: Parquet → numpy; mllib-full: array → Vector, cached). Cost = sum "
        "over all users of the squared distance to the nearest final centroid, float64, computed in Spark "
        "(sklearn: numpy), target ≤ 1.01× sklearn's. Peak RSS in MiB over prepare/fit/assign: JVM, Python "
        "workers (daemon + workers, summed), driver (the child's Python process; sklearn runs there).",
        "",
        "| users | method | prepare | fit | assign | fit+assign | × sklearn | µs/user | iters | cost | cost × sklearn "
        "| target | JVM peak | Python workers peak | driver peak |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in results:
        fa = stage_s(r, "fit") + stage_s(r, "assign")
        b = base.get(r["n"])
        bfa = stage_s(b, "fit") + stage_s(b, "assign") if b else float("nan")
        ratio, cratio = (fa / bfa, r["cost"] / b["cost"]) if b else (float("nan"), float("nan"))
        ok = "—" if r["method"] == "sklearn" or not b else ("yes" if ratio <= 3 and cratio <= 1.01 else "no")
        name = r["method"] + (f" ({r['sample_size']:,})" if "sample_size" in r else "")
        lines.append(
            f"| {r['n']:,} | {name} | {stage_s(r, 'prepare'):.1f} | {stage_s(r, 'fit'):.1f} | {stage_s(r, 'assign'):.1f} "
            f"| {fa:.1f} | {ratio:.2f} | {fa / r['n'] * 1e6:,.0f} | {r['iters']} | {r['cost']:.6g} | {cratio:.4f} | {ok} "
            f"| {mb(peak(r, 'jvm'))} | {mb(peak(r, 'python'))} | {mb(peak(r, 'driver'))} |")
    lines += ["", "Stages (seconds, sampled peak RSS in MiB within the stage; `cost`/`check` are the untimed "
                  "evaluation passes, `session` the JVM start and a warm-up that starts the Python "
                  "workers):", "",
              "| users | method | stage | s | JVM | Python workers (sum / largest) | driver |",
              "| ---: | --- | --- | ---: | ---: | ---: | ---: |"]
    for n, g in gens.items():
        for name, st in g["stages"].items():
            lines.append(f"| {n:,} | generate | {name} | {st['s']:.1f} | {mb(st.get('jvm', 0))} "
                         f"| {mb(st.get('python', 0))} / {mb(st.get('worker_max', 0))} | {mb(st.get('driver', 0))} |")
    for r in results:
        for name, st in r["stages"].items():
            lines.append(f"| {r['n']:,} | {r['method']} | {name} | {st['s']:.1f} | {mb(st.get('jvm', 0))} "
                         f"| {mb(st.get('python', 0))} / {mb(st.get('worker_max', 0))} | {mb(st.get('driver', 0))} |")
    if len(sizes) > 1:
        lines += ["", "Growth from the smallest size (time and peak memory of fit+assign; linear = the users "
                      "ratio):", "", "| method | users × | fit+assign × | JVM peak × | Python workers peak × "
                                     "| driver peak × |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for m in methods:
            rows = sorted((r for r in results if r["method"] == m), key=lambda r: r["n"])
            if len(rows) < 2:
                continue
            first = rows[0]
            ffa = stage_s(first, "fit") + stage_s(first, "assign")
            for r in rows[1:]:
                def x(key, r=r, first=first):
                    a, b_ = peak(r, key), peak(first, key)
                    return f"{a / b_:.2f}" if b_ else "—"
                lines.append(f"| {m} | {r['n'] / first['n']:,.0f} | "
                             f"{(stage_s(r, 'fit') + stage_s(r, 'assign')) / ffa:.2f} | {x('jvm')} | {x('python')} "
                             f"| {x('driver')} |")
    lines += [""]
    for n, c in checks.items():
        lines.append(f"Sanity, {n:,} users: sklearn inertia_ {c['inertia']:.8g}, its float64 cost in numpy "
                     f"{c['numpy']:.8g}, the Spark cost of sklearn's centroids {c['spark']:.8g}: max relative "
                     f"difference {c['rel']:.1e} ({'OK' if c['rel'] <= 1e-4 else 'MISMATCH'}, limit 1e-4).")
    for r in results:
        if r["method"] != "sklearn":
            rel = abs(r["assign_cost"] - r["cost"]) / r["cost"]
            lines.append(f"{r['method']} at {r['n']:,}: the assign output's own sum of distance² is "
                         f"{rel:.1e} (relative) off the float64 cost; {r['segments_used']} of {args.k} segments used; "
                         f"MLlib trainingCost {r['mllib_training_cost']:.6g}; {r['partitions']} input partitions.")
    lines.append("")
    append_result(args.out, "Cluster stage at scale: MLlib against scikit-learn", "cluster_scale.py", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
