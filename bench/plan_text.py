#!/usr/bin/env python
"""Plan text: what rendering every query's plan string costs a small full run.

Claim under test (issue 17, fast tests; small runs in production): Spark renders each query's
plan as text when the query starts (for the UI's SQL tab, whether or not the UI is on), and
SegLake's plans are long (wide feature arrays, Delta file lists). Capping that text
(`spark.sql.maxPlanStringLength`) and using the simple explain mode (`spark.sql.ui.explainMode`)
make a small run faster; jobs/session.py's BASE_CONF sets both.

The run: one session as the tests build it (tests/conftest.py: local[2], native Delta, the
tests' Spark settings), the 2-layer random BERT of tests.conftest, and test_assign's history
(30 users in three vocabulary groups, 90 texts, 40 events). A first run warms the JVM (untimed
in the comparison); then, per round, the full job (`jobs.segment_users.run`) into an empty lake
once per setting, the settings alternating so the VM's drift falls on all of them alike.

    python bench/plan_text.py [--rounds 2] [--out bench/results/plan_text.md]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = {
    "Spark's formatted plan, 200,000 characters (before)": {
        "spark.sql.maxPlanStringLength": "200000", "spark.sql.ui.explainMode": "formatted"},
    "formatted, 2,000 characters": {
        "spark.sql.maxPlanStringLength": "2000", "spark.sql.ui.explainMode": "formatted"},
    "simple, 20,000 characters (BASE_CONF now)": {
        "spark.sql.maxPlanStringLength": "20000", "spark.sql.ui.explainMode": "simple"},
}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None, help="append a markdown table here")
    args = ap.parse_args(argv)

    import tests.conftest as tc
    from jobs.segment_users import run
    from tests import test_assign as ta

    spark = next(tc.spark.__wrapped__())
    tmp = Path(tempfile.mkdtemp(prefix="seglake-plan-text-"))
    tiny = tc.make_tiny_bert(tmp / "tiny")
    conf = ta._conf(tmp, tiny, run_id="full1")

    def once(settings: dict[str, str]) -> float:
        for key, value in settings.items():
            spark.conf.set(key, value)
        shutil.rmtree(tmp / "lake", ignore_errors=True)
        t0 = time.perf_counter()
        run(spark, conf)
        return time.perf_counter() - t0

    cold = once(SETTINGS[next(iter(SETTINGS))])
    print(f"warm-up (cold JVM) {cold:.1f} s", flush=True)
    seconds: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for r in range(args.rounds):
        for name, settings in SETTINGS.items():
            seconds[name].append(once(settings))
            print(f"round {r + 1}: {name}: {seconds[name][-1]:.1f} s", flush=True)
    shutil.rmtree(tmp, ignore_errors=True)

    base = min(seconds[next(iter(SETTINGS))])
    lines = [f"\n## {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {args.rounds} rounds, warm-up {cold:.1f} s\n",
             "| plan text | full run, each round (s) | best | best / before |", "|---|---|---|---|"]
    for name, xs in seconds.items():
        lines.append(f"| {name} | {', '.join(f'{x:.1f}' for x in xs)} | {min(xs):.1f} | {min(xs) / base:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as out:
            out.write(text)


if __name__ == "__main__":
    main()
