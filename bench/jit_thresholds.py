#!/usr/bin/env python
"""The test JVM's C2 thresholds: a tiny full job + an assign batch with and without them.

Claim under test (issue 17, `make test`'s time): a test session's driver JVM runs hundreds of
short plans, and with the JVM's default thresholds its C2 compiler thread keeps about one of
the two cores busy (JFR) compiling code that runs a few times only. Would raising the Tier4
(C2) thresholds 3x (THREE_X) save CPU? Measured 2026-12-07: cold JVMs 12% less CPU, warm
ones 6.5% more, so tests/conftest.py keeps the JVM's defaults.

The run: for each JVM option set (`--options`, the tests' set against none by default), in
alternating order, one fresh child process starts a local[2] session with the tests' settings
for tiny inputs (TEST_SPARK_CONF, the Delta jars) and runs `--reps` pairs of a full job
(test_assign's 30 users, tiny random BERT) and an assign batch (its NEW_TEXTS), each pair into
an empty lake. The first pair is the cold one (a fresh JVM: what a test subprocess pays); the
later ones are warm (a test worker's session). Reported per pair: wall seconds of the two and
the JVM's CPU seconds (utime + stime of the driver JVM from /proc). Lower CPU is what matters
when two test workers share two cores.

    python bench/jit_thresholds.py [--reps 3] [--rounds 2] [--out bench/results/jit_thresholds.md]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NONE = "(JVM defaults)"
THREE_X = ("-XX:Tier4InvocationThreshold=15000 -XX:Tier4MinInvocationThreshold=1800 "
           "-XX:Tier4CompileThreshold=45000 -XX:Tier4BackEdgeThreshold=120000")


def _child(options: str, reps: int) -> list[dict]:
    """Runs in a fresh process: `reps` full job + assign pairs; per pair wall and JVM CPU."""
    import tests.conftest as ct
    from jobs import assign
    from jobs.segment_users import run as full_run
    from pyspark.sql import SparkSession
    from tests import test_assign as ta

    settings = {**ct.TEST_SPARK_CONF, **ct.delta_settings()}
    if options != NONE:
        settings["spark.driver.extraJavaOptions"] = options
    builder = SparkSession.builder.master("local[2]")
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = (builder.config("spark.ui.enabled", "false").config("spark.sql.session.timeZone", "UTC")
             .config("spark.driver.memory", "4g").config("spark.python.worker.reuse", "true")
             .config("spark.python.daemon.module", "tests.spark_daemon")
             .config("spark.executorEnv.PYTHONPATH", str(ROOT))
             .config("spark.sql.execution.arrow.maxRecordsPerBatch", "512").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    pid = spark._jvm.java.lang.ProcessHandle.current().pid()

    def jvm_cpu() -> float:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    tmp = Path(tempfile.mkdtemp(prefix="seglake-jit-"))
    model = ct.make_tiny_bert(tmp / "tiny")
    out = []
    for rep in range(reps):
        d = tmp / f"r{rep}"
        c0, t0 = jvm_cpu(), time.perf_counter()
        full_run(spark, ta._conf(d, model, run_id="full1"))
        t1 = time.perf_counter()
        texts = ta._csv(d / "new" / "texts.csv", "user_id,text,ts,item_id,lang", ta.NEW_TEXTS)
        events = ta._csv(d / "new" / "events.csv", "user_id,item_id,event_type,rating,category,ts", ta.NEW_EVENTS)
        assign.run(spark, ta._conf(d, model, run_id="a1", assign__texts__path=texts, assign__events__path=events))
        out.append({"full_s": t1 - t0, "assign_s": time.perf_counter() - t1, "jvm_cpu_s": jvm_cpu() - c0})
    spark.stop()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3, help="pairs per child (the first is cold)")
    ap.add_argument("--rounds", type=int, default=2, help="children per option set, alternating")
    ap.add_argument("--options", nargs="*", default=None, help=f"JVM option sets ({NONE!r}: none)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "jit_thresholds.md"))
    args = ap.parse_args(argv)
    if args.child is not None:
        print("RESULT " + json.dumps(_child(args.child, args.reps)), flush=True)
        return 0

    from bench.results_md import append_result

    sets = args.options or [NONE, THREE_X]
    rows: dict[str, list[list[dict]]] = {s: [] for s in sets}
    started = time.time()
    for r in range(args.rounds):
        for s in (sets if r % 2 == 0 else sets[::-1]):
            proc = subprocess.run([sys.executable, __file__, "--child", s, "--reps", str(args.reps)], cwd=ROOT,
                                  capture_output=True, text=True, timeout=3600)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode != 0 or line is None:
                sys.exit(f"child for {s!r} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
            rows[s].append(json.loads(line[7:]))
            print(f"round {r}, {s}: {rows[s][-1]}", flush=True)

    def mean(s: str, key: str, cold: bool) -> float:
        vals = [p[key] for child in rows[s] for i, p in enumerate(child) if (i == 0) == cold]
        return sum(vals) / len(vals)

    base = sets[0]
    lines = [f"## {len(sets)} JVM option sets, {args.rounds} children each, {args.reps} pairs per child "
             f"({datetime.now(timezone.utc):%Y-%m-%d})", "",
             f"`python bench/jit_thresholds.py --reps {args.reps} --rounds {args.rounds}` — {platform.machine()}, "
             f"{os.cpu_count()} cores, Python {platform.python_version()}; {(time.time() - started) / 60:.1f} min.", "",
             "Per pair (full job + assign batch), wall seconds and the driver JVM's CPU seconds; "
             "cold = the first pair of each fresh JVM, warm = the later ones (means).", "",
             "| JVM options | cold wall s | cold JVM CPU s | warm wall s | warm JVM CPU s | warm CPU vs first set |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for s in sets:
        lines.append(f"| `{s}` | {mean(s, 'full_s', True) + mean(s, 'assign_s', True):.1f} | "
                     f"{mean(s, 'jvm_cpu_s', True):.1f} | {mean(s, 'full_s', False) + mean(s, 'assign_s', False):.1f} | "
                     f"{mean(s, 'jvm_cpu_s', False):.1f} | "
                     f"{mean(s, 'jvm_cpu_s', False) / mean(base, 'jvm_cpu_s', False):.3f}x |")
    lines += ["", "Every pair, in run order (wall full + assign s / JVM CPU s):", ""]
    for s in sets:
        pairs = "; ".join(f"{p['full_s']:.1f} + {p['assign_s']:.1f} / {p['jvm_cpu_s']:.1f}" for child in rows[s]
                          for p in child)
        lines.append(f"- `{s}`: {pairs}")
    append_result(args.out, "The test JVM's C2 thresholds", "jit_thresholds.py", lines + [""])
    return 0


if __name__ == "__main__":
    sys.exit(main())
