#!/usr/bin/env python
"""Incremental assignment against a full run, side by side in one process and one session.

Data: data/generate_sample.py at --users users (parquet). A --share of the users (default
1%) get one new text and one new event, dated after everything else; the rest is history.

Measured (wall time of each job's `run`, same SparkSession, same conf):
  1. full job on the history, cold (empty lake)            - what a nightly re-fit costs
  2. seglake-assign of the new rows (1% of users touched)   - the incremental path
  3. full job on the same history again, new run id         - the cached rerun (embeddings
                                                             come from text_embeddings)
The full job runs with a fixed k (--k), no stability check and no report: its cheapest
form, so the ratios are conservative.

    python bench/incremental.py [--users 200000] [--model tiny|minilm] [--share 0.01] [--k 20]
                                [--work DIR] [--out bench/results/incremental.md]

--model tiny is a random 2-layer BERT (hidden 32): it keeps inference cheap so the run
measures everything else at scale; --model minilm is the packaged all-MiniLM-L6-v2
(inference dominates the full run: at ~160 texts/s on 2 cores keep --users small).
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from jobs.session import local_env  # noqa: E402 - needs the repo on sys.path
from results_md import append_result  # noqa: E402 - bench/ is on sys.path (this script's folder)

local_env()

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

log = logging.getLogger("bench.incremental")


def prepare(work: Path, users: int, share: float, seed: int) -> dict:
    """Generate once (cached in work/), then split into history and new rows."""
    sys.path.insert(0, str(REPO / "data"))
    from generate_sample import generate

    raw = work / f"raw-{users}"
    if not (raw / "stats.json").exists():
        generate(raw, users=users, seed=seed, fmt="parquet", texts_per_user=(2, 4), events_per_user=(2, 6),
                 dirty_rate=0.01, workers=2)
    texts, events = pq.read_table(raw / "texts.parquet"), pq.read_table(raw / "events.parquet")
    rng = np.random.default_rng(seed)
    ids = np.unique(texts.column("user_id").drop_null().to_numpy(zero_copy_only=False))
    chosen = pa.array(rng.choice(ids, size=max(1, int(len(ids) * share)), replace=False))
    out = {"users_with_texts": len(ids), "users_touched": len(chosen)}
    for name, table in (("texts", texts), ("events", events)):
        # The new rows: one row of each chosen user, re-dated after all history.
        mask = pc.is_in(table.column("user_id"), value_set=chosen)
        picked = table.filter(mask)
        pdf = picked.to_pandas().drop_duplicates("user_id", keep="last")
        pdf["ts"] = "2027-01-01T00:00:00Z"
        if name == "texts":  # a new text, not a copy of one already in the embedding cache
            pdf["text"] = pdf["text"] + " (update)"
        hist_dir, new_dir = work / f"hist-{users}", work / f"new-{users}"
        hist_dir.mkdir(parents=True, exist_ok=True)
        new_dir.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, hist_dir / f"{name}.parquet")
        pq.write_table(pa.Table.from_pandas(pdf, preserve_index=False), new_dir / f"{name}.parquet")
        out[f"{name}_history"], out[f"{name}_new"] = table.num_rows, len(pdf)
        out[f"{name}_history_path"], out[f"{name}_new_path"] = str(hist_dir / f"{name}.parquet"), str(
            new_dir / f"{name}.parquet")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=200_000)
    p.add_argument("--share", type=float, default=0.01)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--model", choices=("tiny", "minilm"), default="tiny")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--work", default=os.path.expanduser("~/.cache/seglake-bench"))
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "incremental.md"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from jobs import assign, config
    from jobs.segment_users import run as full_run
    from jobs.session import build_session

    work = Path(args.work)
    t0 = time.perf_counter()
    data = prepare(work, args.users, args.share, args.seed)
    log.info("data ready in %.0f s: %s", time.perf_counter() - t0, data)
    model_path = None
    if args.model == "tiny":
        from tests.conftest import make_tiny_bert

        model_path = make_tiny_bert(work / "tiny-bert")
    lake = work / f"lake-{args.users}-{args.model}"
    if lake.exists():
        import shutil

        shutil.rmtree(lake)
    base = {
        "input": {"texts": {"path": data["texts_history_path"], "format": "parquet"},
                  "events": {"path": data["events_history_path"], "format": "parquet"}},
        "assign": {"texts": {"path": data["texts_new_path"], "format": "parquet"},
                   "events": {"path": data["events_new_path"], "format": "parquet"}},
        "embed": {"model_path": model_path}, "cluster": {"k": args.k, "stability_seeds": 0},
        "output": {"root": str(lake), "report": False},
        "spark": {"conf": {"spark.ui.showConsoleProgress": "false"}},
    }
    conf = config.load(str(REPO / "conf" / "local.yaml"), base)
    spark = build_session(conf["spark"])
    timings = {}

    def timed(name, fn):
        t = time.perf_counter()
        res = fn()
        timings[name] = time.perf_counter() - t
        log.info("%s: %.1f s", name, timings[name])
        return res

    full = timed("full", lambda: full_run(spark, {**conf, "run_id": "full-cold"}))
    inc = timed("assign", lambda: assign.run(spark, {**conf, "run_id": "assign-1pct"}))
    rerun = timed("rerun", lambda: full_run(spark, {**conf, "run_id": "full-cached"}))

    import pyspark
    import torch

    cmd = "python bench/incremental.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    lines = [
        f"## {args.model} model, {args.users:,} users ({datetime.now(timezone.utc):%Y-%m-%d})",
        "",
        f"`{cmd}` — {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"pyspark {pyspark.__version__}, torch {torch.__version__}, Spark local[2] in one session.",
        "",
        f"History: {data['texts_history']:,} texts and {data['events_history']:,} events of "
        f"{full.counts['users']:,} users; new: {data['texts_new']:,} texts and {data['events_new']:,} events of "
        f"{data['users_touched']:,} users ({args.share:.0%}). Full job with k = {args.k} fixed.",
        "",
        "| run | wall s | vs full | texts embedded | stage seconds |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for name, label, res, emb in (
            ("full", "full job, cold (empty lake)", full, full.counts["texts_embedded_new"]),
            ("assign", f"seglake-assign, {args.share:.0%} of users", inc, inc.counts.get("texts_embedded_new")),
            ("rerun", "full job again, embedding cache warm", rerun, rerun.counts["texts_embedded_new"])):
        stages = ", ".join(f"{k} {v:.1f}" for k, v in res.stage_seconds.items())
        lines.append(f"| {label} | {timings[name]:.1f} | {timings[name] / timings['full']:.3f} | {emb:,} | {stages} |")
    lines += ["", f"assign: users touched {inc.counts.get('users_touched', 0):,}, new "
                  f"{inc.counts.get('users_new', 0):,}, segment changed {inc.counts.get('users_changed', 0):,}; "
                  f"drift far_share {inc.drift.get('far_share', float('nan')):.3f}, "
                  f"PSI {inc.drift.get('psi', float('nan')):.3f}.", ""]
    append_result(args.out, "Incremental assignment vs full run", "incremental.py", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
