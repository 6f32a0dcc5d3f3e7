#!/usr/bin/env python
"""The full job's scaling curve, stage by stage: time and peak memory at 10k, 100k, 1M users.

Claim under test: every stage of `seglake-segment` grows about linearly with the users, and
no stage collects per-user data on the driver (the driver's Python process keeps a flat peak).

Data: data/generate_sample.py `generate(...)` at each N, Parquet, the same settings as
bench/incremental.py (2-4 texts and 2-6 events per user, 1 % dirty rows), generated once per
(N, --seed) under --work (in a separate child process, not measured) and reused by later runs.

Each N runs in a fresh child process (this script with --point N, result as JSON): a fresh
driver, JVM and Python workers, so the peaks are per N. The child builds the session like
bench/incremental.py (conf/local.yaml + overrides through jobs.config.load, Spark local[2],
spark.driver.memory --driver-memory) and runs the full job once, `jobs.segment_users.run`,
on an empty lake: fixed k (--k), `cluster.stability_seeds: 0`, no HTML report; every other
cluster setting is the job's default (fit_sample_size, n_init, init_steps, max_iter).

Model: --model tiny (default) is the random 2-layer BERT of tests.conftest (hidden 32): it
keeps inference cheap so the run measures everything else at scale. Embedding 1M users' texts
through all-MiniLM-L6-v2 would take hours on 2 cores; the real model's embed rate is measured
separately, in bench/embed_throughput.py. --model minilm runs the packaged model (keep
--users small).

Stages: `jobs.pipeline.stage` (the context manager behind RunContext.stage, looked up as a
module global at call time) is wrapped in the child so that each stage's start and end also mark
the memory sampler. Per stage: the job's own seconds (RunResult.stage_seconds) and the
sampler's; `outside stages` is the rest of `run` (the lock, the runs-table rows).
Memory: bench/cluster_scale.py's StageSampler (bench/embed_memory.py's /proc Sampler, kept per
stage): every 0.2 s, VmRSS of the driver (the child's Python process), the JVM (in local
mode it is the Spark driver and the executors at once, so its peak mostly shows the heap it
was allowed to grow to) and the Python workers (pyspark.daemon + forked workers: the sum of
their RSS, an upper bound as forked workers share pages, and the largest one). Peaks are
sampled maxima within each stage; `driver VmHWM` is the kernel's exact high-water mark of the
driver process at the end (session start included). Row counts of every output table are read
from the Delta logs after the run (not measured).

Estimated runtime of the default sizes: bench/results/incremental.md measured the cold full
job at 200k users in 347.7 s (tiny model, same data settings, 4 GB driver), i.e. ~1.7 ms per
user; if the job is linear, 10k + 100k + 1M users take ~1.11M x 1.74 ms = ~32 min of job time,
plus a JVM start per N and the data generation the first time (cached afterwards).

    python bench/job_scale.py [--users 10000,100000,1000000] [--k 20] [--model tiny|minilm]
        [--driver-memory 12g] [--seed 7] [--work ~/.cache/seglake-bench/job-scale]
        [--out bench/results/job_scale.md] [--compare-lexical]

--compare-lexical runs every N a second time with lexical.weight 0 and reports the lexical
channel's cost as a share of the non-embed time (issue 18: at most 25 % at 1M users).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import shutil
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

from cluster_scale import StageSampler, mem_total  # noqa: E402 - the per-stage /proc sampler
from embed_memory import MiB, _status  # noqa: E402
from results_md import append_result  # noqa: E402

STAGES = ("ingest", "embed", "user_vectors", "cluster", "profile", "write")
OUTSIDE = "outside stages"
TABLES = ("user_segments", "segments", "k_selection", "quarantine", "text_embeddings", "user_vectors",
          "segment_history", "runs")


class JobSampler(StageSampler):
    """StageSampler whose time between stages counts as `idle` (a stage of its own) rather than
    not at all, so the whole run's peaks are the maxima over the stages."""

    idle: str | None = None

    @contextlib.contextmanager
    def stage(self, name: str):
        with super().stage(name):
            yield
        with self.lock:
            self.current = self.idle

    def enter_idle(self, name: str | None) -> None:
        self.sample()
        with self.lock:
            self.idle = self.current = name


# ---------------------------------------------------------------- data (child process)

def data_dir(args, n: int) -> Path:
    return Path(args.work) / f"raw-{n}-seed{args.seed}"


def generate_data(args) -> dict:
    sys.path.insert(0, str(REPO / "data"))
    from generate_sample import generate

    out = data_dir(args, args.generate)
    t = time.perf_counter()
    stats = generate(out, users=args.generate, seed=args.seed, fmt="parquet", texts_per_user=(2, 4),
                     events_per_user=(2, 6), dirty_rate=0.01, workers=2)
    return {"n": args.generate, "s": time.perf_counter() - t, "stats": stats}


# ---------------------------------------------------------------- one N (child process)

def table_rows(path: Path) -> int | None:
    from deltalake import DeltaTable

    if not DeltaTable.is_deltatable(str(path)):
        return None
    return DeltaTable(str(path)).to_pyarrow_dataset().count_rows()


def run_point(args) -> dict:
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from jobs import config
    from jobs import pipeline, segment_users
    from jobs.session import build_session

    n, raw = args.point, data_dir(args, args.point)
    lake = Path(args.work) / f"lake-{n}-{args.model}"
    if lake.exists():
        shutil.rmtree(lake)
    base = {
        "input": {"texts": {"path": str(raw / "texts.parquet"), "format": "parquet"},
                  "events": {"path": str(raw / "events.parquet"), "format": "parquet"}},
        "embed": {"model_path": args.model_path}, "cluster": {"k": args.k, "stability_seeds": 0},
        "output": {"root": str(lake), "report": False},
        "spark": {"conf": {"spark.ui.showConsoleProgress": "false", "spark.driver.memory": args.driver_memory}},
        "run_id": f"job-scale-{n}",
    }
    if args.lexical_weight is not None:
        base["lexical"] = {"weight": args.lexical_weight}
    conf = config.load(str(REPO / "conf" / "local.yaml"), base)

    sampler = JobSampler()
    sampler.start()
    with sampler.stage("session"):
        spark = build_session(conf["spark"])
        spark.sparkContext.setLogLevel("ERROR")

    original = pipeline.stage

    @contextlib.contextmanager
    def hooked(name, timings, rate=True):
        with sampler.stage(name), original(name, timings, rate) as facts:
            yield facts

    pipeline.stage = hooked
    driver_before = _status(os.getpid()).get("VmRSS", 0)
    sampler.enter_idle(OUTSIDE)
    t = time.perf_counter()
    try:
        res = segment_users.run(spark, conf)
    finally:
        wall = time.perf_counter() - t
        sampler.enter_idle(None)
        pipeline.stage = original
    sampler.stop_event.set()
    driver_hwm = _status(os.getpid()).get("VmHWM", 0)
    jvm = [pid for pid, (role, _) in sampler._roles().items() if role == "jvm"]
    jvm_hwm = sum(_status(pid).get("VmHWM", 0) for pid in jvm)
    stages = sampler.report()
    missing = [s for s in res.stage_seconds if s not in stages]
    assert not missing, f"stages not seen by the sampler hook: {missing}"
    # Not a sampler.stage (entered through enter_idle): its peaks are in sampler.peaks only.
    stages[OUTSIDE] = {**sampler.peaks.get(OUTSIDE, {}),
                       "s": wall - sum(s for k, s in sampler.seconds.items() if k in res.stage_seconds)}
    rows = {name: table_rows(lake / name) for name in TABLES}
    spark.stop()
    shutil.rmtree(lake, ignore_errors=True)  # only needed for the row counts (1M users: GBs)
    return {"n": n, "wall_s": wall, "job_stage_s": res.stage_seconds, "stages": stages, "counts": res.counts,
            "k": res.k, "segments": len(res.segments), "tables": rows, "driver_before": driver_before,
            "driver_hwm": driver_hwm, "jvm_hwm": jvm_hwm, "embed_texts_per_s": res.embed_texts_per_s}


# ---------------------------------------------------------------- parent

def spawn(args, extra: list[str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        path = fh.name
    cmd = [sys.executable, __file__, *extra, "--k", str(args.k), "--model", args.model, "--seed", str(args.seed),
           "--driver-memory", args.driver_memory, "--work", args.work, "--json", path]
    if args.model_path:
        cmd += ["--model-path", args.model_path]
    if args.lexical_weight is not None:
        cmd += ["--lexical-weight", str(args.lexical_weight)]
    subprocess.run(cmd, check=True)
    res = json.loads(Path(path).read_text(encoding="utf-8"))
    os.unlink(path)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", default="10000,100000,1000000", help="comma list of N")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--model", choices=("tiny", "minilm"), default="tiny")
    p.add_argument("--driver-memory", default="12g")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--work", default=os.path.expanduser("~/.cache/seglake-bench/job-scale"))
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "job_scale.md"))
    p.add_argument("--compare-lexical", action="store_true",
                   help="also run each N with lexical.weight 0 and report the lexical channel's cost")
    p.add_argument("--lexical-weight", type=float, help=argparse.SUPPRESS)
    # internal: one N in this (child) process, or the data of one N
    p.add_argument("--point", type=int, help=argparse.SUPPRESS)
    p.add_argument("--generate", type=int, help=argparse.SUPPRESS)
    p.add_argument("--model-path", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.point is not None or args.generate is not None:
        res = run_point(args) if args.point is not None else generate_data(args)
        Path(args.json).write_text(json.dumps(res, default=str), encoding="utf-8")
        return 0

    sizes = sorted({int(s) for s in args.users.split(",") if s})
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.model == "tiny":
        from tests.conftest import make_tiny_bert

        args.model_path = make_tiny_bert(work / "tiny-bert")
    t0 = time.perf_counter()
    gens, results = {}, []
    for n in sizes:
        if not (data_dir(args, n) / "stats.json").exists():
            print(f"== generating {n:,} users", flush=True)
            gens[n] = spawn(args, ["--generate", str(n)])
        print(f"== full job, {n:,} users", flush=True)
        results.append(spawn(args, ["--point", str(n)]))
    without = []
    if args.compare_lexical:
        args.lexical_weight = 0.0
        for n in sizes:
            print(f"== full job, {n:,} users, lexical.weight 0", flush=True)
            without.append(spawn(args, ["--point", str(n)]))
        args.lexical_weight = None
    total = time.perf_counter() - t0

    import pyspark
    import torch

    from jobs.config import DEFAULTS

    cc = DEFAULTS["cluster"]
    first = results[0]
    ns = [r["n"] for r in results]
    later = results[1:]
    names = [s for s in STAGES if any(s in r["stages"] for r in results)]
    names += sorted({s for r in results for s in r["stages"]} - set(names) - {"session", OUTSIDE})
    names += ["session", OUTSIDE]
    mb = lambda b: f"{b / MiB:,.0f}" if b else "—"  # noqa: E731

    def st(r, name, key):
        return r["stages"].get(name, {}).get(key, 0)

    def job_s(r, name):
        if name in r["job_stage_s"]:
            return r["job_stage_s"][name]
        return st(r, name, "s")

    def peak(r, key, names=names):
        return max((st(r, s, key) for s in names if s != "session"), default=0)

    def ratio(a, b):
        return f"{a / b:.2f}" if b else "—"

    cmd = " ".join(["python bench/job_scale.py", *(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))])
    cols = lambda label: " | ".join(f"{label} {n:,}" for n in ns)  # noqa: E731
    lines = [
        f"## full job, {args.model} model, users {', '.join(f'{n:,}' for n in ns)} "
        f"({datetime.now(timezone.utc):%Y-%m-%d})",
        "",
        f"`{cmd}` — {platform.machine()}, {os.cpu_count()} cores, {mem_total() / 2**30:.1f} GiB RAM, "
        f"Python {platform.python_version()}, pyspark {pyspark.__version__}, torch {torch.__version__}. "
        f"Total {total / 60:.1f} min.",
        "",
        f"Settings: conf/local.yaml + overrides, Spark local[2], driver memory {args.driver_memory}, one fresh "
        f"child process per N, empty lake; k = {args.k} fixed, stability_seeds 0, no report; cluster defaults "
        f"fit_sample_size {cc['fit_sample_size']:,}, n_init {cc['n_init']}, init_steps {cc['init_steps']}, "
        f"max_iter {cc['max_iter']}. Model: "
        + ("the random tiny BERT of tests.conftest (hidden 32; the real model's embed rate is measured in "
           "bench/embed_throughput.py)." if args.model == "tiny" else "all-MiniLM-L6-v2 (packaged)."),
        "",
        "Data and counts:",
        "",
        f"| | {' | '.join(f'{n:,}' for n in ns)} |",
        f"| --- | {' | '.join('---:' for _ in ns)} |",
    ]
    for key in ("texts_read", "texts_kept", "texts_embedded_new", "events_read", "events_kept", "quarantined",
                "users", "users_text_only", "users_events_only"):
        lines.append(f"| {key} | {' | '.join(format(r['counts'].get(key, 0), ',') for r in results)} |")
    lines.append(f"| k / segments | {' | '.join(str(r['k']) + ' / ' + str(r['segments']) for r in results)} |")
    lines.append(f"| embed texts/s | {' | '.join(format(r['embed_texts_per_s'], ',.0f') for r in results)} |")
    for name in TABLES:
        vals = [r["tables"].get(name) for r in results]
        lines.append(f"| rows in {name} | {' | '.join('—' if v is None else f'{v:,}' for v in vals)} |")
    if gens:
        lines.append(f"| data generation s (not measured further) | "
                     f"{' | '.join(format(gens[n]['s'], '.1f') if n in gens else 'cached' for n in ns)} |")

    growth_hdr = " | ".join(f"time × {r['n'] / first['n']:,.0f}× users" for r in later)
    lines += [
        "",
        "Per stage: seconds (the job's own stage_seconds; `session` = the JVM start, `outside stages` = the "
        "rest of `run`: lock, runs-table rows), time growth against the smallest N, and sampled peak RSS in "
        "MiB within the stage: driver (the child's Python process), JVM, Python workers (sum / largest).",
        "",
        f"| stage | {cols('s @')} | {growth_hdr}{' | ' if growth_hdr else ''}{cols('driver @')} | {cols('JVM @')} "
        f"| {cols('workers @')} |",
        f"| --- | {' | '.join('---:' for _ in range(len(ns) * 5 - 1))} |",
    ]

    def row(label, secs, drv, jvm, wrk):
        g = " | ".join(ratio(s, secs[0]) for s in secs[1:])
        return (f"| {label} | {' | '.join(f'{s:.1f}' for s in secs)} | {g}{' | ' if g else ''}"
                f"{' | '.join(drv)} | {' | '.join(jvm)} | {' | '.join(wrk)} |")

    for name in names:
        lines.append(row(name, [job_s(r, name) for r in results], [mb(st(r, name, "driver")) for r in results],
                         [mb(st(r, name, "jvm")) for r in results],
                         [f"{mb(st(r, name, 'python'))} / {mb(st(r, name, 'worker_max'))}" for r in results]))
    lines.append(row("**whole run**", [r["wall_s"] for r in results], [mb(peak(r, "driver")) for r in results],
                     [mb(peak(r, "jvm")) for r in results],
                     [f"{mb(peak(r, 'python'))} / {mb(peak(r, 'worker_max'))}" for r in results]))

    if later:
        lines += ["", "Growth against the smallest N (linear = the users ratio; peaks: the stage's sampled "
                      "peak RSS ratio):", "",
                  "| stage | users × | time × | driver peak × | JVM peak × | workers peak (sum) × |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for name in [*names, "whole run"]:
            for r in later:
                if name == "whole run":
                    a, b = (r["wall_s"], first["wall_s"])
                    pk = lambda x, key: peak(x, key)  # noqa: E731
                else:
                    a, b = job_s(r, name), job_s(first, name)
                    pk = lambda x, key, name=name: st(x, name, key)  # noqa: E731
                lines.append(f"| {name} | {r['n'] / first['n']:,.0f} | {ratio(a, b)} | "
                             f"{ratio(pk(r, 'driver'), pk(first, 'driver'))} | {ratio(pk(r, 'jvm'), pk(first, 'jvm'))} "
                             f"| {ratio(pk(r, 'python'), pk(first, 'python'))} |")

    lines += ["", "Driver (the child's Python process) at each N, MiB: RSS after the session started and "
                  "before `run`, sampled peak RSS during `run`, the kernel's VmHWM at the end (session start "
                  "included); JVM VmHWM at the end.", "",
              "| users | driver RSS before run | driver peak during run | peak − before | driver VmHWM | JVM VmHWM |",
              "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        d = peak(r, "driver")
        lines.append(f"| {r['n']:,} | {mb(r['driver_before'])} | {mb(d)} | {mb(d - r['driver_before'])} "
                     f"| {mb(r['driver_hwm'])} | {mb(r['jvm_hwm'])} |")

    lines += ["", "Seconds per stage, the job's own against the sampler's (the hook's enter/exit):", "",
              f"| stage | {' | '.join(f'job / sampler @ {n:,}' for n in ns)} |",
              f"| --- | {' | '.join('---:' for _ in ns)} |"]
    for name in [s for s in names if s in first["job_stage_s"]]:
        pairs = [f"{job_s(r, name):.1f} / {st(r, name, 's'):.1f}" for r in results]
        lines.append(f"| {name} | {' | '.join(pairs)} |")
    if without:
        w = DEFAULTS["lexical"]["weight"]
        lines += ["", f"Lexical channel cost: each N run again in a fresh child with `lexical.weight: 0` (the "
                      f"table above: the default, {w}). Non-embed time = the whole run minus the embed stage; the "
                      "channel's cost is the difference (term counts and the vocabulary in user_vectors, the "
                      f"projection, {DEFAULTS['lexical']['dim']} more dimensions to cluster).", "",
                  f"| users | non-embed s, weight 0 | non-embed s, weight {w} | channel's cost s | share of non-embed "
                  "time | user_vectors s (0 → w) | cluster s (0 → w) | profile s (0 → w) |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for on, off in zip(results, without):
            a, b = on["wall_s"] - job_s(on, "embed"), off["wall_s"] - job_s(off, "embed")
            lines.append(f"| {on['n']:,} | {b:.1f} | {a:.1f} | {a - b:.1f} | {(a - b) / a:.1%} | "
                         + " | ".join(f"{job_s(off, st_):.1f} → {job_s(on, st_):.1f}"
                                      for st_ in ("user_vectors", "cluster", "profile")) + " |")
    lines.append("")
    append_result(args.out, "Full job scaling curve, stage by stage", "job_scale.py", lines)

    print("\nSummary (time growth against the smallest N; driver peak during run, MiB):")
    for name in names:
        print(f"  {name:15s} " + "  ".join(f"{r['n']:>9,}: {job_s(r, name):7.1f} s ×{ratio(job_s(r, name), job_s(first, name))}"
                                            f" drv {mb(st(r, name, 'driver'))}" for r in results))
    print("  whole run       " + "  ".join(f"{r['n']:>9,}: {r['wall_s']:7.1f} s drv peak {mb(peak(r, 'driver'))} "
                                            f"(before run {mb(r['driver_before'])})" for r in results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
