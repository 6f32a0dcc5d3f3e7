#!/usr/bin/env python
"""Peak memory of the embed UDF against the size of one partition.

Claim under test: the embed stage never holds a whole partition of texts as Python objects,
only one Arrow batch (`spark.sql.execution.arrow.maxRecordsPerBatch` rows) at a time; very
long texts are truncated by tokens; so the Python worker's peak memory is flat in the
partition size.

Each point runs in a fresh child process (fresh JVM and Python worker, so high-water marks
start clean): Spark local[1], spark.python.worker.reuse=true, one partition of N texts
generated inside Spark (spark.range(N, numPartitions=1) + string expressions: the driver
never holds them), `udfs.embedding.embed_udf(model, batch_size=64, token_budget=8192,
device="cpu", threads=1)` over the column, consumed by an aggregate (count, sum of vector
sizes): nothing is collected on the driver. The bench calls the UDF directly; the jobs'
`jobs.embed.embed_texts` / `embed_with_cache` add a shuffle and a distinct in the JVM in front
of the same UDF, which changes nothing on the Python side.

Memory: a thread in the driver walks the driver's process tree in /proc every 0.2 s. The
JVM is the driver's `java` child; the Python daemon is the JVM's `pyspark.daemon` child;
the UDF runs in the daemon's forked children (the workers). For each it keeps VmHWM
(kernel high-water mark of resident memory, exact) and VmRSS samples (the curve). A one-row
job first loads the model in the worker; its VmHWM then is the baseline, and the main job
must run in the same (reused) worker process, which is checked.

    python bench/embed_memory.py [--sizes 10000,100000,1000000] [--long-sizes 10000,100000]
        [--long-fraction 0.01] [--long-kb 200] [--model tiny|minilm] [--arrow-batch 10000]
        [--extra-batch 1024] [--out bench/results/embed_memory.md]

--model tiny is a random 2-layer BERT (hidden 32, max 128 tokens, tests.conftest) so 1M texts
fit in minutes; --model minilm is the packaged all-MiniLM-L6-v2 (max 256 tokens, ~75 texts/s
on one core: keep --sizes small).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from jobs.session import local_env  # noqa: E402 - needs the repo on sys.path
from results_md import append_result  # noqa: E402 - bench/ is on sys.path (this script's folder)

local_env()

SAMPLE_S = 0.2
MiB = 1024 * 1024


# ---------------------------------------------------------------- /proc sampling

def _ppid_map() -> dict[int, int]:
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                stat = fh.read()
            out[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError):
            continue
    return out


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in bytes (empty if the process is gone)."""
    vals = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":", 1)
                    vals[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return vals


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class Sampler(threading.Thread):
    """Every SAMPLE_S seconds: the driver's process tree, each process's role, VmHWM, VmRSS.

    Records are keyed by (pid, command line), not pid: the JVM starts the Python daemon with
    posix_spawn, whose child shares the JVM's memory until it execs, so under the daemon's pid
    /proc first shows the JVM's RSS and command line. A new command line (an exec) starts a new
    record. (Seen before this was keyed so: a 'daemon' peak of 409 MiB that was the JVM's.)
    """

    def __init__(self):
        super().__init__(daemon=True)
        self.root = os.getpid()
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.procs: dict[tuple[int, str], dict] = {}  # (pid, cmdline) -> {role, hwm, rss_max}
        self.curve: list[tuple[float, int]] = []  # (time, sum of worker RSS)
        self.mark = None  # curve recorded only between start_curve() and stop_curve()

    def _roles(self) -> dict[int, tuple[str, str]]:
        """pid -> (role, cmdline) for the driver and its descendants."""
        ppid = _ppid_map()
        children: dict[int, list[int]] = {}
        for pid, parent in ppid.items():
            children.setdefault(parent, []).append(pid)
        roles = {self.root: ("driver", _cmdline(self.root))}
        stack = [self.root]
        while stack:
            pid = stack.pop()
            for child in children.get(pid, []):
                cmd = _cmdline(child)
                parent_role = roles[pid][0]
                if parent_role == "driver" and "java" in cmd.split(" ", 1)[0]:
                    role = "jvm"
                elif parent_role == "jvm" and "pyspark.daemon" in cmd:
                    role = "daemon"
                elif (parent_role == "daemon" and "pyspark" in cmd) or (parent_role == "jvm" and "pyspark.worker" in cmd):
                    role = "worker"
                else:
                    role = "other"
                roles[child] = (role, cmd)
                stack.append(child)
        return roles

    def sample(self) -> None:
        now = time.perf_counter()
        worker_rss = 0
        roles = self._roles()
        with self.lock:
            for pid, (role, cmd) in roles.items():
                st = _status(pid)
                if not st or not cmd or _cmdline(pid) != cmd:  # gone, or exec'd in between
                    continue
                rec = self.procs.setdefault((pid, cmd), {"pid": pid, "role": role, "hwm": 0, "rss_max": 0,
                                                         "cmd": " ".join(cmd.split()[:4])[:120]})
                rec["role"] = role
                rec["hwm"] = max(rec["hwm"], st.get("VmHWM", 0))
                rec["rss_max"] = max(rec["rss_max"], st.get("VmRSS", 0))
                if role == "worker":
                    worker_rss += st.get("VmRSS", 0)
            if self.mark is not None:
                self.curve.append((now - self.mark, worker_rss))

    def run(self) -> None:
        while not self.stop_event.wait(SAMPLE_S):
            self.sample()

    def start_curve(self) -> None:
        with self.lock:
            self.mark, self.curve = time.perf_counter(), []

    def stop_curve(self) -> list[tuple[float, int]]:
        self.sample()
        with self.lock:
            self.mark, curve = None, list(self.curve)
        return curve

    def snapshot(self) -> list[dict]:
        self.sample()
        with self.lock:
            return [dict(rec) for rec in self.procs.values()]


# ---------------------------------------------------------------- one point (child process)

def _texts(spark, n: int, long_fraction: float, long_kb: int, words: list[str]):
    """N texts in ONE partition, generated by Spark: 4-64 words picked by hash of (id, i),
    plus '#id' so they are distinct (no dedupe shortcut). A `long_fraction` of the rows
    (by hash) repeat their text to about `long_kb` KB."""
    from pyspark.sql import functions as F

    vocab = F.array(*[F.lit(w) for w in words])
    n_words = (F.pmod(F.xxhash64("id", F.lit(-1)), F.lit(61)) + 4).cast("int")
    picked = F.transform(F.sequence(F.lit(1), n_words),
                         lambda i: F.element_at(vocab, (F.pmod(F.xxhash64("id", i), F.lit(len(words))) + 1).cast("int")))
    text = F.concat(F.concat_ws(" ", picked), F.lit(" #"), F.col("id").cast("string"))
    df = spark.range(0, n, 1, numPartitions=1).select("id", text.alias("text"))
    if long_fraction > 0:
        threshold = round(long_fraction * 1_000_000)
        df = df.selectExpr(
            "id",
            f"CASE WHEN pmod(xxhash64(id, -2), 1000000) < {threshold} "
            f"THEN repeat(concat(text, ' '), CAST(ceil({long_kb * 1024} / (length(text) + 1)) AS INT)) "
            "ELSE text END AS text")
    return df


def run_point(args) -> dict:
    from pyspark.sql import functions as F

    from jobs.session import build_session
    from tests.conftest import TINY_WORDS
    from udfs.embedding import embed_udf

    sampler = Sampler()
    sampler.start()
    spark = build_session({"master": "local[1]", "app_name": "embed-memory", "conf": {
        "spark.python.worker.reuse": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(args.arrow_batch),
        "spark.driver.memory": args.driver_memory,
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
    }})
    spark.sparkContext.setLogLevel("ERROR")
    udf = embed_udf(args.model_path, batch_size=64, token_budget=8192, device="cpu", threads=1)

    def job(n, long_fraction):
        df = _texts(spark, n, long_fraction, args.long_kb, TINY_WORDS)
        assert df.rdd.getNumPartitions() == 1
        out = df.select(udf(F.col("text")).alias("embedding"), F.length("text").alias("chars"))
        row = out.agg(F.count(F.lit(1)).alias("rows"), F.sum(F.size("embedding")).alias("values"),
                      F.sum(F.when(F.col("chars") > 100_000, 1).otherwise(0)).alias("long"),
                      F.sum("chars").alias("chars"), F.max("chars").alias("max_chars")).first()
        return row.asDict()

    # Warm-up: one row loads the model into the (reused) worker: that worker's VmHWM is the baseline.
    job(1, 0.0)
    warm = sampler.snapshot()
    warm_workers = {rec["pid"]: rec for rec in warm if rec["role"] == "worker"}
    baseline = max((rec["hwm"] for rec in warm_workers.values()), default=0)
    sampler.start_curve()
    t = time.perf_counter()
    stats = job(args.point, args.long_fraction)
    wall = time.perf_counter() - t
    curve = sampler.stop_curve()
    final = sampler.snapshot()
    spark.stop()
    sampler.stop_event.set()
    workers = {rec["pid"]: rec for rec in final if rec["role"] == "worker"}

    def peak(role, key="hwm"):
        return max((rec[key] for rec in final if rec["role"] == role), default=0)

    rss = [r for _, r in curve if r]
    quart = []
    if curve:
        for q in (0.25, 0.5, 0.75, 1.0):
            cut = [r for s, r in curve if s <= q * wall and r]
            quart.append(cut[-1] if cut else 0)
    return {
        "n": args.point, "long_fraction": args.long_fraction, "arrow_batch": args.arrow_batch, "wall_s": wall,
        "stats": stats, "worker_baseline": baseline, "worker_peak": peak("worker"),
        "worker_rss_max_sampled": max(rss, default=0), "worker_rss_quartiles": quart,
        "workers_seen": len(workers), "same_worker": set(warm_workers) <= set(workers) and len(workers) == 1,
        "jvm_peak": peak("jvm"), "daemon_peak": peak("daemon"), "driver_peak": peak("driver"),
        "samples": len(curve),
        "processes": final,
    }


def spawn_point(args, n: int, long_fraction: float, arrow_batch: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        path = fh.name
    cmd = [sys.executable, __file__, "--point", str(n), "--long-fraction", str(long_fraction), "--long-kb",
           str(args.long_kb), "--arrow-batch", str(arrow_batch), "--driver-memory", args.driver_memory,
           "--model-path", args.model_path, "--json", path]
    print(f"== N={n:,} long={long_fraction:g} arrow_batch={arrow_batch}", flush=True)
    subprocess.run(cmd, check=True)
    with open(path, encoding="utf-8") as fh:
        res = json.load(fh)
    os.unlink(path)
    print(json.dumps(res), flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--long-sizes", default="10000,100000", help="sizes run again with --long-fraction long texts")
    p.add_argument("--long-fraction", type=float, default=0.01)
    p.add_argument("--long-kb", type=int, default=200)
    p.add_argument("--model", choices=("tiny", "minilm"), default="tiny")
    p.add_argument("--arrow-batch", type=int, default=10000, help="spark.sql.execution.arrow.maxRecordsPerBatch")
    p.add_argument("--extra-batch", type=int, default=1024,
                   help="rerun the largest long-text point with this arrow batch (0: skip)")
    p.add_argument("--driver-memory", default="2g")
    p.add_argument("--work", default=os.path.expanduser("~/.cache/seglake-bench"))
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "embed_memory.md"))
    # internal: one point in this (child) process
    p.add_argument("--point", type=int, help=argparse.SUPPRESS)
    p.add_argument("--model-path", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.point is not None:
        res = run_point(args)
        Path(args.json).write_text(json.dumps(res), encoding="utf-8")
        return 0

    if args.model == "tiny":
        from tests.conftest import make_tiny_bert

        args.model_path = make_tiny_bert(Path(args.work) / "tiny-bert")
    else:
        from udfs.embedding import resolve_model_path

        args.model_path = resolve_model_path(None)
    from udfs.embedding import model_max_tokens

    sizes = [int(s) for s in args.sizes.split(",") if s]
    long_sizes = [int(s) for s in args.long_sizes.split(",") if s] if args.long_fraction > 0 else []
    t0 = time.perf_counter()
    results = [spawn_point(args, n, 0.0, args.arrow_batch) for n in sizes]
    results += [spawn_point(args, n, args.long_fraction, args.arrow_batch) for n in long_sizes]
    if long_sizes and args.extra_batch:
        results.append(spawn_point(args, max(long_sizes), args.long_fraction, args.extra_batch))
    total = time.perf_counter() - t0

    import pyspark
    import torch
    import transformers

    max_tokens = model_max_tokens(args.model_path, fallback=128 if args.model == "tiny" else 512)
    cmd = " ".join(["python bench/embed_memory.py", *(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))])
    mb = lambda b: f"{b / MiB:,.0f}"  # noqa: E731
    lines = [
        f"## {args.model} model ({datetime.now(timezone.utc):%Y-%m-%d})",
        "",
        f"`{cmd}` — {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"pyspark {pyspark.__version__}, torch {torch.__version__}, transformers {transformers.__version__}; "
        f"Spark local[1], worker reuse on, driver memory {args.driver_memory}; embed_udf batch_size=64, "
        f"token_budget=8192, threads=1, max tokens {max_tokens}. Total {total / 60:.1f} min.",
        "",
        "Worker = the Python process that ran the UDF (forked by pyspark.daemon); MiB; `peak` is its "
        "VmHWM at the end, `base` its VmHWM after a one-row warm-up job (model loaded), "
        "`RSS @25/50/75/100 %` sampled VmRSS at those points of the run's wall time.",
        "",
        "| N texts | long texts | arrow batch | wall s | texts/s | worker base | worker peak | peak − base "
        "| peak vs first | RSS @25/50/75/100 % | JVM peak | driver peak | chars in partition |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    ref = {}
    for r in results:
        key = (r["long_fraction"] > 0)
        ref.setdefault(key, r)
        first = ref[key]
        s = r["stats"]
        assert s["rows"] == r["n"], s
        quart = "/".join(mb(q) for q in r["worker_rss_quartiles"])
        lines.append(
            f"| {r['n']:,} | {s['long']:,} | {r['arrow_batch']:,} | {r['wall_s']:.1f} | {r['n'] / r['wall_s']:,.0f} "
            f"| {mb(r['worker_baseline'])} | {mb(r['worker_peak'])} | {mb(r['worker_peak'] - r['worker_baseline'])} "
            f"| {r['worker_peak'] / first['worker_peak']:.2f}× (N {r['n'] / first['n']:,.0f}×) | {quart} "
            f"| {mb(r['jvm_peak'])} | {mb(r['driver_peak'])} | {s['chars'] / MiB:,.0f} MiB |")
    notes = []
    for r in results:
        if not r["same_worker"] or r["workers_seen"] != 1:
            notes.append(f"N={r['n']:,} long={r['long_fraction']:g}: {r['workers_seen']} worker processes seen "
                         f"(same as warm-up: {r['same_worker']})")
    lines += ["", "Every point: one worker process, the same one that loaded the model in the warm-up."
              if not notes else "Worker processes: " + "; ".join(notes), ""]
    append_result(args.out, "Embed stage memory against partition size", "embed_memory.py", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
