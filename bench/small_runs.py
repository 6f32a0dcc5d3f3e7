#!/usr/bin/env python
"""Small runs: where a full job on 1,000 users spends its time, stage by stage, in Spark jobs.

Claim under test (issue 21): for 1,000 users x 10 texts with a fixed k, the stages other than
embed take <= 90 s together on this machine (2 cores, Spark local[2], conf/local.yaml).

Data: data/generate_sample.py `generate(...)` with --users users, exactly --texts texts and
2-6 events each, 1 % dirty rows, Parquet, generated once per (users, texts, seed) under --work.

The run: one child process (fresh driver, JVM and Python workers) builds the session from
conf/local.yaml and runs `jobs.segment_users.run` once on an empty lake with cluster.k --k,
stability_seeds 0, no HTML report, MLflow off, the model --model (tiny: the 2-layer random BERT
of tests.conftest; minilm: the packaged all-MiniLM-L6-v2) on --backend / --precision. A warm-up
run on 20 users first (untimed) starts the JVM's code paths and the Python workers, as a
second run in a long-lived session would find them; --cold skips it.

Per stage (`jobs.pipeline.stage`, wrapped as in bench/job_scale.py): the job's own seconds and
the number of Spark jobs it started (the DAG scheduler's job counter). The non-embed total is the sum of every stage but embed, plus the time
outside the stages (the lock and the runs rows).

    python bench/small_runs.py [--users 1000] [--texts 10] [--k 8] [--model tiny|minilm]
        [--backend torch|onnx] [--precision auto|int8] [--cold] [--conf KEY=VALUE ...]
        [--out bench/results/small_runs.md]
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

from results_md import append_result, mem_total  # noqa: E402

TARGET_S = 90.0


def data_dir(args, users: int) -> Path:
    return Path(args.work) / f"raw-{users}x{args.texts}-seed{args.seed}"


def ensure_data(args, users: int) -> Path:
    out = data_dir(args, users)
    if not (out / "texts.parquet").exists():
        sys.path.insert(0, str(REPO / "data"))
        from generate_sample import generate

        generate(out, users=users, seed=args.seed, fmt="parquet", texts_per_user=(args.texts, args.texts),
                 events_per_user=(2, 6), dirty_rate=0.01, workers=1)
    return out


def job_conf(args, raw: Path, lake: Path, run_id: str) -> dict:
    from jobs import config

    base = {
        "input": {"texts": {"path": str(raw / "texts.parquet"), "format": "parquet"},
                  "events": {"path": str(raw / "events.parquet"), "format": "parquet"}},
        "embed": {"model_path": args.model_path, "backend": args.backend, "precision": args.precision},
        "cluster": {"k": args.k, "stability_seeds": 0},
        "output": {"root": str(lake), "report": False}, "tracking": {"mlflow": False},
        "spark": {"conf": {"spark.ui.showConsoleProgress": "false", **dict(kv.split("=", 1) for kv in args.conf)}},
        "run_id": run_id,
    }
    return config.load(str(REPO / "conf" / "local.yaml"), base)


def run_point(args) -> dict:
    from jobs import pipeline, segment_users
    from jobs.session import build_session

    raw = ensure_data(args, args.users)
    warm_raw = ensure_data(args, 20)
    work = Path(tempfile.mkdtemp(prefix="small-runs-", dir=args.work))
    conf = job_conf(args, raw, work / "lake", "small")
    t = time.perf_counter()
    spark = build_session(conf["spark"])
    spark.sparkContext.setLogLevel("ERROR")
    session_s = time.perf_counter() - t
    tracker = spark.sparkContext.statusTracker()

    def jobs_so_far() -> int:
        """Jobs started so far: the scheduler's next job id (every job, whatever its group)."""
        try:
            return int(spark.sparkContext._jsc.sc().dagScheduler().nextJobId().get())
        except Exception:  # noqa: BLE001 - an internal accessor: fall back to the jobs without a group
            return len(tracker.getJobIdsForGroup(None))

    warm_s = None
    if not args.cold:
        t = time.perf_counter()
        segment_users.run(spark, job_conf(args, warm_raw, work / "warm", "warm"))
        warm_s = time.perf_counter() - t
    jobs: dict[str, int] = {}
    original = pipeline.stage

    @contextlib.contextmanager
    def counted(name, timings, rate=True):
        before = jobs_so_far()
        with original(name, timings, rate) as facts:
            yield facts
        jobs[name] = jobs_so_far() - before

    pipeline.stage = counted
    before = jobs_so_far()
    t = time.perf_counter()
    try:
        res = segment_users.run(spark, conf)
    finally:
        pipeline.stage = original
    wall = time.perf_counter() - t
    total_jobs = jobs_so_far() - before
    spark.stop()
    shutil.rmtree(work, ignore_errors=True)
    return {"wall_s": wall, "session_s": session_s, "warm_s": warm_s, "stage_s": res.stage_seconds,
            "jobs": jobs, "total_jobs": total_jobs, "counts": res.counts, "k": res.k}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--texts", type=int, default=10)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--model", choices=("tiny", "minilm"), default="tiny")
    p.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    p.add_argument("--precision", default="auto")
    p.add_argument("--cold", action="store_true", help="no warm-up run")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="a Spark setting for the job")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--work", default=os.path.expanduser("~/.cache/seglake-bench/small-runs"))
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "small_runs.md"))
    p.add_argument("--point", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model-path", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.point:
        Path(args.json).write_text(json.dumps(run_point(args)), encoding="utf-8")
        return 0

    if args.model == "tiny":
        from tests.conftest import make_tiny_bert

        args.model_path = make_tiny_bert(Path(args.work) / "tiny-bert")
    else:
        from udfs.embedding import resolve_model_path

        args.model_path = resolve_model_path(None)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        out_json = fh.name
    cmd = [sys.executable, __file__, "--point", "--users", str(args.users), "--texts", str(args.texts), "--k",
           str(args.k), "--backend", args.backend, "--precision", args.precision, "--seed", str(args.seed),
           "--work", args.work, "--model-path", args.model_path, "--json", out_json]
    if args.cold:
        cmd.append("--cold")
    for kv in args.conf:
        cmd += ["--conf", kv]
    subprocess.run(cmd, check=True)
    res = json.loads(Path(out_json).read_text(encoding="utf-8"))
    os.unlink(out_json)

    stages = res["stage_s"]
    outside = res["wall_s"] - sum(stages.values())
    non_embed = res["wall_s"] - stages.get("embed", 0.0)
    cmd_line = " ".join(["python bench/small_runs.py",
                         *(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))])
    lines = [
        f"## {args.users:,} users × {args.texts} texts, k = {args.k}, {args.model} model, {args.backend} "
        f"({datetime.now(timezone.utc):%Y-%m-%d})", "",
        f"`{cmd_line}` — {platform.machine()}, {os.cpu_count()} cores, {mem_total() / 2**30:.1f} GiB RAM, "
        f"load average {'/'.join(f'{x:.1f}' for x in os.getloadavg())} at end. Session start "
        f"{res['session_s']:.1f} s; warm-up run (20 users) "
        + (f"{res['warm_s']:.1f} s" if res["warm_s"] is not None else "skipped (--cold)")
        + f"; texts kept {res['counts'].get('texts_kept', 0):,}, users {res['counts'].get('users', 0):,}, k {res['k']}.",
        "",
        "| stage | seconds | Spark jobs |", "| --- | ---: | ---: |",
        *(f"| {name} | {s:.1f} | {res['jobs'].get(name, '–')} |" for name, s in stages.items()),
        f"| outside stages | {outside:.1f} | {res['total_jobs'] - sum(res['jobs'].values())} |",
        f"| **all but embed** | **{non_embed:.1f}** (target ≤ {TARGET_S:.0f}: "
        f"{'met' if non_embed <= TARGET_S else 'not met'}) | {res['total_jobs'] - res['jobs'].get('embed', 0)} |",
        f"| whole run | {res['wall_s']:.1f} | {res['total_jobs']} |", "",
    ]
    append_result(args.out, "Small runs: stage seconds and Spark jobs of one full run", "small_runs.py", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
