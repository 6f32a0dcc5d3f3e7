"""Cluster stage: MLlib KMeans / BisectingKMeans, k given or picked by silhouette."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from pyspark.ml.clustering import BisectingKMeans, KMeans
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

log = logging.getLogger(__name__)


def make_estimator(algorithm: str, k: int, seed: int = 42, max_iter: int = 40, distance: str = "euclidean",
                   features_col: str = "features"):
    """An unfitted MLlib estimator writing `segment_id`."""
    cls = {"kmeans": KMeans, "bisecting": BisectingKMeans}[algorithm]
    return cls(k=k, seed=seed, maxIter=max_iter, distanceMeasure=distance, featuresCol=features_col,
               predictionCol="segment_id")


def silhouette(pred: DataFrame, distance: str = "euclidean", features_col: str = "features") -> float:
    """MLlib's distributed silhouette with the distance the model was fitted with."""
    measure = "cosine" if distance == "cosine" else "squaredEuclidean"
    return float(ClusteringEvaluator(featuresCol=features_col, predictionCol="segment_id",
                                     metricName="silhouette", distanceMeasure=measure).evaluate(pred))


def sweep_k(users: DataFrame, k_min: int, k_max: int, *, n_users: int, sample_size: int = 20000,
            algorithm: str = "kmeans", seed: int = 42, max_iter: int = 40, distance: str = "euclidean",
            n_init: int = 1) -> tuple[int, list[dict], object | None]:
    """Fit every k in [k_min, k_max] on a sample of users; return (best k, per-k scores, and
    the best k's model when the sample was all users, so it need not be fitted again).

    Rule: the highest silhouette wins; an exact tie goes to the smaller k (fewer segments
    are easier to act on). k above the sample's size - 1 is skipped.
    """
    fraction = min(1.0, sample_size / max(n_users, 1))
    sample = users.select("features").sample(fraction=fraction, seed=seed) if fraction < 1 else users.select("features")
    sample = sample.cache()
    n_sample = sample.count()
    scores, models = [], {}
    try:
        for k in range(k_min, min(k_max, n_sample - 1) + 1):
            model = fit(sample, k, algorithm=algorithm, seed=seed, max_iter=max_iter, distance=distance,
                        n_init=n_init)
            if fraction >= 1:
                models[k] = model
            pred = model.transform(sample)
            # A k whose fit collapsed to a single non-empty cluster has no silhouette.
            used = pred.select("segment_id").distinct().count()
            sil = silhouette(pred, distance) if used > 1 else float("nan")
            cost = float(model.summary.trainingCost)
            scores.append({"k": k, "silhouette": sil, "cost": cost, "sample_size": n_sample})
            log.info("k=%d silhouette=%.4f cost=%.2f (sample of %d users)", k, sil, cost, n_sample)
    finally:
        sample.unpersist()
    valid = [s for s in scores if not np.isnan(s["silhouette"])]
    if not valid:
        raise ValueError(f"cannot pick k: only {n_sample} users in the sample for k in [{k_min}, {k_max}]")
    best = max(valid, key=lambda s: (s["silhouette"], -s["k"]))
    return best["k"], scores, models.get(best["k"])


def fit(users: DataFrame, k: int, *, algorithm: str = "kmeans", seed: int = 42, max_iter: int = 40,
        distance: str = "euclidean", n_init: int = 1):
    """Fit `n_init` times (seeds seed, seed+1, ...) and keep the lowest within-cluster cost.

    One k-means|| run often stops in a poor local optimum (a cost above a smaller k's is the
    tell-tale); restarts, as in scikit-learn's n_init, make both the model and the k sweep
    far less dependent on the seed and on how the data happens to be partitioned.
    `users` should be cached: it is scanned once per restart.
    """
    best = None
    for i in range(n_init):
        model = make_estimator(algorithm, k, seed + i, max_iter, distance).fit(users)
        if best is None or model.summary.trainingCost < best.summary.trainingCost:
            best = model
    return best


def assign(users: DataFrame, model, distance: str = "euclidean") -> DataFrame:
    """Add `segment_id` and `distance` (euclidean, or cosine distance 1 - cos) to the centroid."""
    centers = np.vstack(model.clusterCenters()).astype(np.float64)
    if distance == "cosine":
        centers = centers / np.maximum(np.linalg.norm(centers, axis=1, keepdims=True), 1e-12)

    @F.pandas_udf("double")
    def _dist(vecs: pd.Series, seg: pd.Series) -> pd.Series:
        x = np.vstack(vecs.to_numpy()) if len(vecs) else np.zeros((0, centers.shape[1]))
        c = centers[seg.to_numpy().astype(int)]
        if distance == "cosine":
            nx = np.maximum(np.linalg.norm(x, axis=1), 1e-12)
            return pd.Series(1.0 - (x * c).sum(1) / nx)
        return pd.Series(np.linalg.norm(x - c, axis=1))

    pred = model.transform(users)
    return pred.withColumn("distance", _dist(vector_to_array("features"), F.col("segment_id")))
