"""Cluster stage: MLlib KMeans / BisectingKMeans, k given or picked by a documented rule."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from pyspark.ml.clustering import BisectingKMeans, KMeans
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs import metrics

log = logging.getLogger(__name__)


def make_estimator(algorithm: str, k: int, seed: int = 42, max_iter: int = 40, distance: str = "euclidean",
                   features_col: str = "features", prediction_col: str = "segment_id"):
    """An unfitted MLlib estimator writing `prediction_col`."""
    cls = {"kmeans": KMeans, "bisecting": BisectingKMeans}[algorithm]
    return cls(k=k, seed=seed, maxIter=max_iter, distanceMeasure=distance, featuresCol=features_col,
               predictionCol=prediction_col)


def silhouette(pred: DataFrame, distance: str = "euclidean", features_col: str = "features") -> float:
    """MLlib's distributed silhouette with the distance the model was fitted with."""
    measure = "cosine" if distance == "cosine" else "squaredEuclidean"
    return float(ClusteringEvaluator(featuresCol=features_col, predictionCol="segment_id",
                                     metricName="silhouette", distanceMeasure=measure).evaluate(pred))


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


def stratified_sample(users: DataFrame, n_users: int, sample_size: int, seed: int = 42,
                      min_per_stratum: int = 50) -> DataFrame:
    """About `sample_size` users, sampled per stratum (main language x has texts x has
    events) so small strata — e.g. events-only users — are not lost: each stratum gets at
    least `min_per_stratum` users (or all of them)."""
    if sample_size >= n_users:
        return users
    stratum = F.concat_ws("|", F.coalesce(F.col("lang"), F.lit("-")), (F.col("n_texts") > 0).cast("string"),
                          (F.col("n_events") > 0).cast("string"))
    tagged = users.withColumn("_stratum", stratum)
    sizes = {r["_stratum"]: r["count"] for r in tagged.groupBy("_stratum").count().collect()}
    base = sample_size / n_users
    fractions = {s: min(1.0, max(base, min_per_stratum / n)) for s, n in sizes.items()}
    return tagged.sampleBy("_stratum", fractions, seed).drop("_stratum")


def choose_k(scores: list[dict], tolerance: float = 0.0) -> int:
    """The rule: the best silhouette, then the smallest k whose silhouette is within
    `tolerance` of it (fewer segments are easier to act on when quality is on par)."""
    valid = [s for s in scores if not np.isnan(s["silhouette"])]
    if not valid:
        raise ValueError("cannot pick k: no k produced more than one non-empty segment")
    best = max(s["silhouette"] for s in valid)
    return min(s["k"] for s in valid if s["silhouette"] >= best - tolerance)


def sweep_k(users: DataFrame, k_min: int, k_max: int, *, n_users: int, sample_size: int = 20000,
            algorithm: str = "kmeans", seed: int = 42, max_iter: int = 40, distance: str = "euclidean",
            n_init: int = 1, tolerance: float = 0.0) -> tuple[int, list[dict], object | None, DataFrame]:
    """Fit every k in [k_min, k_max] on a stratified sample and score it (silhouette, WSSSE,
    Davies-Bouldin, Calinski-Harabasz, balance). Returns (chosen k, per-k scores, the chosen
    k's model when the sample was all users — so it need not be fitted again — and the
    cached sample for further checks; the caller unpersists it)."""
    sample = stratified_sample(users, n_users, sample_size, seed).select("user_id", "features").cache()
    n_sample = sample.count()
    scores, models = [], {}
    for k in range(k_min, min(k_max, n_sample - 1) + 1):
        model = fit(sample, k, algorithm=algorithm, seed=seed, max_iter=max_iter, distance=distance, n_init=n_init)
        if sample_size >= n_users:
            models[k] = model
        pred = model.transform(sample).cache()
        used = pred.select("segment_id").distinct().count()
        # A k whose fit collapsed to a single non-empty cluster has no silhouette.
        row = {"k": k, "silhouette": silhouette(pred, distance) if used > 1 else float("nan"),
               "cost": float(model.summary.trainingCost), "sample_size": n_sample}
        row.update(metrics.quality(pred))
        pred.unpersist()
        scores.append(row)
        log.info("k=%d silhouette=%.4f DB=%.3f CH=%.1f cost=%.2f (sample of %d users)", k, row["silhouette"],
                 row["davies_bouldin"], row["calinski_harabasz"], row["cost"], n_sample)
    k = choose_k(scores, tolerance)
    for s in scores:
        s["chosen"] = s["k"] == k
    return k, scores, models.get(k), sample


def stability(sample: DataFrame, k: int, seeds: list[int], *, algorithm: str = "kmeans", max_iter: int = 40,
              distance: str = "euclidean", n_init: int = 1) -> float:
    """Mean pairwise adjusted Rand index between fits with different seeds on `sample`
    (each fit as the job does it, n_init restarts included). 1 = the same segments."""
    pred = sample.select("features")
    cols = []
    for i, seed in enumerate(seeds):
        model = fit(sample, k, algorithm=algorithm, seed=seed, max_iter=max_iter, distance=distance, n_init=n_init)
        model.setPredictionCol(f"_s{i}")
        pred = model.transform(pred)
        cols.append(f"_s{i}")
    return metrics.pairwise_ari(pred.cache(), cols)


def assign(users: DataFrame, model, distance: str = "euclidean", allowed: list[int] | None = None) -> DataFrame:
    """Add `segment_id` (the model's assignment), `distance` to that segment's centroid
    (euclidean, or cosine distance 1 - cos), and the runner-up: `second_segment_id`,
    `second_distance` and `margin` = second_distance - distance (small = borderline user).

    With `allowed` (segment ids), users go to the nearest allowed centroid instead: the
    segments left out were too small to publish (privacy.min_segment_size) and are merged
    into their neighbours."""
    centers = np.vstack(model.clusterCenters()).astype(np.float64)
    blocked = None
    if allowed is not None:
        blocked = np.ones(len(centers), dtype=bool)
        blocked[list(allowed)] = False
    if distance == "cosine":
        centers = centers / np.maximum(np.linalg.norm(centers, axis=1, keepdims=True), 1e-12)

    @F.pandas_udf("segment_id int, distance double, second_segment_id int, second_distance double")
    def _dist(vecs: pd.Series, seg: pd.Series) -> pd.DataFrame:
        if not len(vecs):
            return pd.DataFrame({"segment_id": [], "distance": [], "second_segment_id": [], "second_distance": []})
        x = np.vstack(vecs.to_numpy())
        if distance == "cosine":
            nx = np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
            d = 1.0 - (x / nx) @ centers.T
        else:
            # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2, as one GEMM against all centroids.
            d2 = (x * x).sum(1)[:, None] - 2 * x @ centers.T + (centers * centers).sum(1)[None, :]
            d = np.sqrt(np.maximum(d2, 0.0))
        if blocked is not None:
            d[:, blocked] = np.inf
            own = d.argmin(1)
        else:
            own = seg.to_numpy().astype(int)  # the model's own prediction (a bisecting tree's path)
        rows = np.arange(len(x))
        own_d = d[rows, own]
        d[rows, own] = np.inf
        second = d.argmin(1) if d.shape[1] > 1 else np.full(len(x), -1)
        second_d = d[rows, second] if d.shape[1] > 1 else np.full(len(x), np.nan)
        none = ~np.isfinite(second_d)  # only one segment allowed: no runner-up
        second, second_d = np.where(none, -1, second), np.where(none, np.nan, second_d)
        return pd.DataFrame({"segment_id": own.astype("int32"), "distance": own_d,
                             "second_segment_id": second.astype("int32"), "second_distance": second_d})

    pred = model.transform(users).withColumn("_a", _dist(vector_to_array("features"), F.col("segment_id")))
    return (pred.withColumn("segment_id", F.col("_a.segment_id")).withColumn("distance", F.col("_a.distance"))
            .withColumn("second_segment_id", F.when(F.col("_a.second_segment_id") >= 0, F.col("_a.second_segment_id")))
            .withColumn("second_distance", F.col("_a.second_distance"))
            .withColumn("margin", F.col("second_distance") - F.col("distance"))
            .drop("_a"))


def bisecting_tree(spark, model_path: str) -> dict[int, list[int]]:
    """For a saved BisectingKMeans model: {leaf segment_id: lineage of node ids from the root
    down to the leaf}. Internal nodes have negative ids (the root is -1), leaves are the
    segment ids, so lineage[1] is the coarsest split a segment belongs to."""
    nodes = spark.read.parquet(f"{model_path}/data/data").select("index", "children").collect()
    children = {int(r["index"]): [int(c) for c in (r["children"] or [])] for r in nodes}
    parent = {c: p for p, cs in children.items() for c in cs}
    lineage = {}
    for node in children:
        if node >= 0:
            path = [node]
            while path[-1] in parent:
                path.append(parent[path[-1]])
            lineage[node] = path[::-1]
    return lineage
