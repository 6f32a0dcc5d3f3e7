"""Segment quality metrics, computed in Spark from per-segment sums.

Only k-sized aggregates reach the driver: per segment the count, the mean vector and the
sum of squared norms (one pass), then the mean euclidean distance to the segment mean (a
second pass with the k means broadcast). From those:

* WSSSE  W = sum_i (sum ||x||^2 - n_i ||mu_i||^2)      (exact, about the segment means)
* Calinski-Harabasz = (B / (k - 1)) / (W / (n - k)),  B = sum_i n_i ||mu_i - mu||^2
* Davies-Bouldin = mean_i max_{j != i} (S_i + S_j) / ||mu_i - mu_j||,  S_i = mean ||x - mu_i||
* balance: smallest and largest share, size entropy normalised to [0, 1] (1 = equal sizes)
* silhouette: MLlib's ClusteringEvaluator with the model's distance (see jobs.cluster)

A sample already on the driver (the k sweep's, when it is small enough for a driver fit) is
scored by `local_quality` and `local_silhouette`: the same formulas on numpy arrays, with no
Spark job (in Spark, a k's scores ran about 40 stages).

Davies-Bouldin and Calinski-Harabasz use euclidean geometry whatever the model's distance
(for cosine models on unit vectors the ranking of k is the same).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from pyspark.ml.functions import vector_to_array
from pyspark.ml.stat import Summarizer
from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def _sq_norm(col: str):
    return F.aggregate(vector_to_array(col), F.lit(0.0), lambda acc, x: acc + x * x)


def segment_sums(pred: DataFrame, features_col: str = "features") -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """(counts, means k x d, sums of squared norms, segment ids) — one pass, k rows collected."""
    rows = (pred.groupBy("segment_id")
            .agg(F.count(F.lit(1)).alias("n"), Summarizer.mean(F.col(features_col)).alias("mean"),
                 F.sum(_sq_norm(features_col)).alias("sq"))
            .orderBy("segment_id").collect())
    ids = [int(r["segment_id"]) for r in rows]
    return (np.array([r["n"] for r in rows], dtype=np.float64),
            np.vstack([r["mean"].toArray() for r in rows]) if rows else np.zeros((0, 0)),
            np.array([r["sq"] for r in rows], dtype=np.float64), ids)


def mean_dist_to_means(pred: DataFrame, means: np.ndarray, ids: list[int], features_col: str = "features") -> np.ndarray:
    """S_i = mean euclidean distance of segment i's points to its mean (second pass)."""
    pos = {sid: i for i, sid in enumerate(ids)}
    lookup = np.full(max(ids) + 1, -1, dtype=np.int64)
    for sid, i in pos.items():
        lookup[sid] = i

    @F.pandas_udf("double")
    def _d(vecs: pd.Series, seg: pd.Series) -> pd.Series:
        if not len(vecs):
            return pd.Series([], dtype="float64")
        x = np.vstack(vecs.to_numpy())
        return pd.Series(np.linalg.norm(x - means[lookup[seg.to_numpy().astype(int)]], axis=1))

    rows = (pred.withColumn("_d", _d(vector_to_array(features_col), F.col("segment_id")))
            .groupBy("segment_id").agg(F.avg("_d").alias("s")).collect())
    out = np.zeros(len(ids))
    for r in rows:
        out[pos[int(r["segment_id"])]] = r["s"]
    return out


def from_sums(counts: np.ndarray, means: np.ndarray, sq: np.ndarray, spread: np.ndarray | None) -> dict:
    """The metrics from per-segment aggregates (pure numpy; unit-testable)."""
    n, k = float(counts.sum()), len(counts)
    shares = counts / n if n else counts
    within = float(np.sum(sq - counts * np.sum(means * means, axis=1)))
    within = max(within, 0.0)  # guard float round-off on perfect clusters
    mu = (counts[:, None] * means).sum(0) / n if n else np.zeros(means.shape[1])
    between = float(np.sum(counts * np.sum((means - mu) ** 2, axis=1)))
    ch = (between / (k - 1)) / (within / (n - k)) if k > 1 and n > k and within > 0 else float("nan")
    db = float("nan")
    if spread is not None and k > 1:
        gaps = np.linalg.norm(means[:, None, :] - means[None, :, :], axis=2)
        np.fill_diagonal(gaps, np.inf)
        ratios = (spread[:, None] + spread[None, :]) / np.where(gaps > 0, gaps, 1e-12)
        np.fill_diagonal(ratios, -np.inf)
        db = float(np.mean(ratios.max(axis=1)))
    ent = -float(np.sum([p * math.log(p) for p in shares if p > 0]))
    return {
        "wssse": within,
        "calinski_harabasz": ch,
        "davies_bouldin": db,
        "min_share": float(shares.min()) if k else float("nan"),
        "max_share": float(shares.max()) if k else float("nan"),
        "size_entropy": ent / math.log(k) if k > 1 else 0.0,
    }


def quality(pred: DataFrame, features_col: str = "features") -> dict:
    """WSSSE, Calinski-Harabasz, Davies-Bouldin and balance of an assignment (`segment_id`)."""
    counts, means, sq, ids = segment_sums(pred, features_col)
    spread = mean_dist_to_means(pred, means, ids, features_col) if len(ids) > 1 else None
    return from_sums(counts, means, sq, spread)


def local_quality(x: np.ndarray, labels: np.ndarray) -> dict:
    """`quality` of rows `x` (n x d) labelled `labels`, on the driver (the same aggregates)."""
    ids, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    sums = np.zeros((len(ids), x.shape[1]))
    np.add.at(sums, inverse, x)
    means = sums / counts[:, None]
    sq = np.bincount(inverse, weights=np.einsum("ij,ij->i", x, x), minlength=len(ids))
    spread = None
    if len(ids) > 1:
        spread = np.bincount(inverse, weights=np.linalg.norm(x - means[inverse], axis=1),
                             minlength=len(ids)) / counts
    return from_sums(counts.astype(np.float64), means, sq, spread)


def local_silhouette(x: np.ndarray, labels: np.ndarray, distance: str = "euclidean") -> float:
    """MLlib's silhouette (ClusteringEvaluator: squared euclidean, or cosine on unit rows) of
    rows `x` labelled `labels`, on the driver. As MLlib computes it: a point's mean distance to
    a cluster from the cluster's sums (exact for these distances), its own cluster's rescaled
    by n / (n - 1) to leave the point out, 0 for a point alone in its cluster."""
    ids, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if len(ids) < 2:
        raise ValueError("the silhouette needs more than one non-empty cluster")
    if distance == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)
    sums = np.zeros((len(ids), x.shape[1]))
    np.add.at(sums, inverse, x)
    if distance == "cosine":
        mean_d = 1.0 - (x @ sums.T) / counts[None, :]
    else:
        sq = np.einsum("ij,ij->i", x, x)
        sq_sums = np.bincount(inverse, weights=sq, minlength=len(ids))
        mean_d = sq[:, None] + (sq_sums / counts)[None, :] - 2.0 * (x @ sums.T) / counts[None, :]
    rows = np.arange(len(x))
    n_own = counts[inverse].astype(np.float64)
    alone = n_own == 1
    own = mean_d[rows, inverse] * n_own / np.where(alone, 2.0, n_own - 1.0)
    mean_d[rows, inverse] = np.inf
    other = mean_d.min(axis=1)
    coef = np.where(own < other, 1.0 - own / np.where(other == 0, 1.0, other),
                    np.where(own > other, other / np.where(own == 0, 1.0, own) - 1.0, 0.0))
    return float(np.mean(np.where(alone, 0.0, coef)))


def adjusted_rand(pairs: list[tuple[int, int, int]]) -> float:
    """ARI from a contingency table given as (label_a, label_b, count) rows."""
    if not pairs:
        return float("nan")
    a_sums: dict[int, int] = {}
    b_sums: dict[int, int] = {}
    for a, b, c in pairs:
        a_sums[a] = a_sums.get(a, 0) + c
        b_sums[b] = b_sums.get(b, 0) + c
    n = sum(c for _, _, c in pairs)
    comb = lambda x: x * (x - 1) / 2.0  # noqa: E731
    index = sum(comb(c) for _, _, c in pairs)
    sa, sb = sum(comb(c) for c in a_sums.values()), sum(comb(c) for c in b_sums.values())
    expected = sa * sb / comb(n) if n > 1 else 0.0
    top = (sa + sb) / 2.0
    return 1.0 if top == expected else float((index - expected) / (top - expected))


def local_pairwise_ari(labelings: list[np.ndarray]) -> float:
    """`pairwise_ari` of label arrays of the same rows, on the driver."""
    scores = []
    for i in range(len(labelings)):
        for j in range(i + 1, len(labelings)):
            pairs, counts = np.unique(np.stack([labelings[i], labelings[j]], axis=1), axis=0, return_counts=True)
            scores.append(adjusted_rand([(int(a), int(b), int(c)) for (a, b), c in zip(pairs, counts)]))
    return float(np.mean(scores)) if scores else float("nan")


def pairwise_ari(pred: DataFrame, cols: list[str]) -> float:
    """Mean ARI over all pairs of assignment columns of one frame (contingency in Spark)."""
    scores = []
    for i in range(len(cols)):
        for j in range(i + 1, len(cols)):
            rows = pred.groupBy(cols[i], cols[j]).count().collect()
            scores.append(adjusted_rand([(r[0], r[1], r[2]) for r in rows]))
    return float(np.mean(scores)) if scores else float("nan")
