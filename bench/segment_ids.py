#!/usr/bin/env python
"""Stable segment ids across refits, measured on the bundled sample (data/sample).

Three full runs of seglake-segment in one process and one Spark session, with the job's
defaults (conf/local.yaml, k auto) and the packaged model (or --model tiny):

  A  the base: the sample minus a --share of its users and minus a --share of the
     remaining users' texts (the users and texts that arrive later);
  B  the same input as A, another cluster.seed: a refit that should change nothing;
  C  the whole sample: A's input plus the new users and the new texts;
  D  A's input with a guided segment ("new parents": baby, diapers, stroller, ...).

B and C each run into their own copy of A's lake (its embedding cache too), so each is
matched against A. Reported for each: the share of the users present in both runs whose
published segment id stayed the same, the ARI between the two runs' segmentations (how stable
the segmentation itself is: ids can only be kept when the segments are), and the relations
in segment_lineage. Targets (issue 19): B >= 98% when the segmentation is stable by ARI,
C >= 95% of the old users.

    python bench/segment_ids.py [--model minilm|tiny] [--share 0.05] [--work DIR]
                                [--out bench/results/segment_ids.md]
"""
from __future__ import annotations

import argparse
import logging
import platform
import shlex
import shutil
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
import pandas as pd  # noqa: E402

log = logging.getLogger("bench.segment_ids")


def split_sample(work: Path, share: float, seed: int) -> dict[str, Path]:
    """base/ (A's input) and full/ (C's input: the sample as it is), as CSV."""
    texts = pd.read_csv(REPO / "data" / "sample" / "texts.csv", dtype=str, keep_default_na=False)
    events = pd.read_csv(REPO / "data" / "sample" / "events.csv", dtype=str, keep_default_na=False)
    rng = np.random.default_rng(seed)
    users = np.array(sorted(set(texts.user_id) - {""}))
    late_users = set(rng.choice(users, size=int(round(len(users) * share)), replace=False))
    kept = texts[~texts.user_id.isin(late_users)]
    late_texts = rng.random(len(kept)) < share
    base = {"texts": kept[~late_texts], "events": events[~events.user_id.isin(late_users)]}
    out = {}
    for name, frames in (("base", base), ("full", {"texts": texts, "events": events})):
        d = work / name
        d.mkdir(parents=True, exist_ok=True)
        for table, df in frames.items():
            df.to_csv(d / f"{table}.csv", index=False)
        out[name] = d
    out["late_users"], out["late_texts"] = len(late_users), int(late_texts.sum())
    return out


def ids_of(lake: Path, run_id: str) -> pd.Series:
    from deltalake import DeltaTable

    us = DeltaTable(str(lake / "user_segments")).to_pandas(filters=[("run_id", "=", run_id)])
    return us.set_index("user_id").segment_id.sort_index()


def compare(lake: Path, before: str, after: str) -> dict:
    from deltalake import DeltaTable
    from sklearn.metrics import adjusted_rand_score

    a, b = ids_of(lake, before), ids_of(lake, after)
    common = a.index.intersection(b.index)
    lin = DeltaTable(str(lake / "segment_lineage")).to_pandas(filters=[("run_id", "=", after)])
    return {"common": len(common), "kept": float((a[common] == b[common]).mean()),
            "ari": float(adjusted_rand_score(a[common], b[common])),
            "relations": lin.relation.value_counts().to_dict(), "k": (a.nunique(), b.nunique())}


GUIDED = [{"name": "new parents", "describe": "baby, diapers, stroller, newborn, toddler, kids"}]


def guided_capture(lake: Path, run_id: str) -> dict:
    """ARI between "in the guided segment" and "planted parenting", over English users."""
    from deltalake import DeltaTable
    from sklearn.metrics import adjusted_rand_score

    labels = pd.read_csv(REPO / "data" / "sample" / "labels.csv", dtype=str).set_index("user_id")[["group"]]
    us = DeltaTable(str(lake / "user_segments")).to_pandas(filters=[("run_id", "=", run_id)]).set_index("user_id")
    segs = DeltaTable(str(lake / "segments")).to_pandas(filters=[("run_id", "=", run_id)])
    sid = int(segs[segs.name == GUIDED[0]["name"]].segment_id.iloc[0])
    en = us[us.lang == "en"].join(labels)
    return {"ari": float(adjusted_rand_score(en.group == "parenting", en.segment_id == sid)),
            "members": int((en.segment_id == sid).sum()), "planted": int((en.group == "parenting").sum())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=("minilm", "tiny"), default="minilm")
    ap.add_argument("--share", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--work", default="/tmp/seglake-bench-ids")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "segment_ids.md"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    import pyspark
    import torch

    from jobs import config
    from jobs.segment_users import run as full_run
    from jobs.session import build_session

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    inputs = split_sample(work, args.share, args.seed)
    model = None  # (embed.model_path null: the packaged all-MiniLM-L6-v2)
    if args.model == "tiny":
        from tests.conftest import make_tiny_bert

        model = make_tiny_bert(work / "tiny-bert")

    def conf(data: Path, lake: Path, run_id: str, seed: int, guided: list | None = None) -> dict:
        base = {"input": {"texts": {"path": str(data / "texts.csv")}, "events": {"path": str(data / "events.csv")}},
                "output": {"root": str(lake), "report": False}, "embed": {"model_path": model},
                "cluster": {"seed": seed, "guided": guided or []}, "tracking": {"mlflow": False}, "run_id": run_id,
                "spark": {"conf": {"spark.ui.showConsoleProgress": "false"}}}
        return config.load(str(REPO / "conf" / "local.yaml"), base)

    first = conf(inputs["base"], work / "lake-A", "A", 42)
    spark = build_session(first["spark"])
    seconds = {}
    t = time.perf_counter()
    full_run(spark, first)
    seconds["A"] = time.perf_counter() - t
    for name, data, seed, guided in (("B", inputs["base"], 43, None), ("C", inputs["full"], 42, None),
                                     ("D", inputs["base"], 42, GUIDED)):
        lake = work / f"lake-{name}"
        shutil.copytree(work / "lake-A", lake)
        t = time.perf_counter()
        full_run(spark, conf(data, lake, name, seed, guided))
        seconds[name] = time.perf_counter() - t
    b, c, d = (compare(work / f"lake-{x}", "A", x) for x in "BCD")
    guided_ari = guided_capture(work / "lake-D", "D")
    spark.stop()

    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## {when}: the sample, model {args.model}, share {args.share}",
        "",
        f"`{shlex.join(['python', 'bench/segment_ids.py', *(argv or sys.argv[1:])])}` on {platform.processor() or platform.machine()}, "
        f"pyspark {pyspark.__version__}, torch {torch.__version__}; job defaults (k auto), one session. "
        f"A left out {inputs['late_users']} users and {inputs['late_texts']} texts.",
        "",
        "| refit | users in both runs | kept their id | ARI between the runs | k (A, refit) | lineage relations | target | run (s) |",
        "|---|---:|---:|---:|---|---|---|---:|",
        f"| B: A's input, cluster.seed 43 | {b['common']} | {b['kept']:.1%} | {b['ari']:.3f} | {b['k']} | "
        f"{b['relations']} | ≥ 98% when stable | {seconds['B']:.0f} |",
        f"| C: + {args.share:.0%} new users, + {args.share:.0%} new texts | {c['common']} | {c['kept']:.1%} | "
        f"{c['ari']:.3f} | {c['k']} | {c['relations']} | ≥ 95% | {seconds['C']:.0f} |",
        f"| D: A's input + guided {GUIDED[0]['name']!r} | {d['common']} | {d['kept']:.1%} | {d['ari']:.3f} | {d['k']} | "
        f"{d['relations']} | – | {seconds['D']:.0f} |",
        "",
        f"D's guided segment against the planted English parenting users: ARI {guided_ari['ari']:.3f} "
        f"({guided_ari['members']} members, {guided_ari['planted']} planted; target ≥ 0.9). "
        f"Run A (cold, empty lake): {seconds['A']:.0f} s.",
    ]
    append_result(args.out, "Stable segment ids across refits", "segment_ids.py", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
