"""Cluster stage: MLlib KMeans / BisectingKMeans, k given or picked by a documented rule."""
from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
from py4j.protocol import Py4JJavaError
from pyspark.ml.clustering import BisectingKMeans, BisectingKMeansModel, KMeans, KMeansModel
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs import driver_kmeans, metrics

log = logging.getLogger(__name__)
OTHER = "*"  # the group of users whose main language has no group of its own (or who have none)


def make_estimator(algorithm: str, k: int, seed: int = 42, max_iter: int = 40, distance: str = "euclidean",
                   features_col: str = "features", prediction_col: str = "segment_id", init_steps: int = 2):
    """An unfitted MLlib estimator writing `prediction_col` (`init_steps`: k-means|| rounds)."""
    if algorithm == "bisecting":
        return BisectingKMeans(k=k, seed=seed, maxIter=max_iter, distanceMeasure=distance,
                               featuresCol=features_col, predictionCol=prediction_col)
    # The block solver (GEMM over stacked rows) with 8 MB blocks, as measured in
    # bench/cluster_scale.py; MLlib's default picks it for dense data, with 1 MB blocks.
    solver = {"solver": "block", "maxBlockSizeInMB": 8.0} if distance == "euclidean" else {}
    return KMeans(k=k, seed=seed, maxIter=max_iter, distanceMeasure=distance, featuresCol=features_col,
                  predictionCol=prediction_col, initSteps=init_steps, **solver)


def silhouette(pred: DataFrame, distance: str = "euclidean", features_col: str = "features") -> float:
    """MLlib's distributed silhouette with the distance the model was fitted with."""
    measure = "cosine" if distance == "cosine" else "squaredEuclidean"
    return float(ClusteringEvaluator(featuresCol=features_col, predictionCol="segment_id",
                                     metricName="silhouette", distanceMeasure=measure).evaluate(pred))


def _fit_one(estimator, users: DataFrame):
    """estimator.fit(users), with one known MLlib failure handled: the block solver indexes
    past its arrays (ArrayIndexOutOfBoundsException in KMeansAggregator) when k-means|| finds
    fewer than k distinct centres: users with fewer distinct vectors than k (copies of one
    behaviour profile, say), or a small sample with few k-means|| candidates. The row solver
    returns the fewer centres (a restart with k of them has the lower cost and wins), and is
    only slower. (After a few of these the JVM throws the exception without its stack trace,
    so the class name is what is matched.)"""
    try:
        return estimator.fit(users)
    except Py4JJavaError as exc:
        if not (isinstance(estimator, KMeans) and estimator.getSolver() == "block"
                and "ArrayIndexOutOfBoundsException" in str(exc)):
            raise
        log.warning("MLlib's block solver failed (k-means|| found fewer than k=%d distinct centres); refitting "
                    "with the row solver", estimator.getK())
        return estimator.setSolver("row").fit(users)


def fit(users: DataFrame, k: int, *, algorithm: str = "kmeans", seed: int = 42, max_iter: int = 40,
        distance: str = "euclidean", n_init: int = 1, init_steps: int = 2, driver_fit_max_users: int = 0,
        driver_n_init: int = 10, final_n_init: int = 0, n_rows: int | None = None, local: np.ndarray | None = None,
        seeds: np.ndarray | None = None):
    """Fit `n_init` times (seeds seed, seed+1, ...) and keep the lowest within-cluster cost.

    One k-means|| run often stops in a poor local optimum (a cost above a smaller k's is the
    tell-tale); restarts, as in scikit-learn's n_init, make both the model and the k sweep
    far less dependent on the seed and on how the data happens to be partitioned.
    KMeans on at most `driver_fit_max_users` rows (`n_rows`, counted when not given) is fitted on
    the driver instead (`driver_fit`: k-means++ with `driver_n_init` restarts), which finds
    lower costs; `local` is those rows already collected (a sweep collects its sample once).
    `final_n_init` > driver_n_init: more restarts where they are cheap (`driver_restarts`).
    `users` should be cached: it is scanned once per restart.
    `seeds` (g x d, KMeans only): guided centroids, centres 0..g-1 of the fit (`fit_seeded`).
    """
    if local is None:
        local = driver_rows(users, algorithm, driver_fit_max_users, n_rows)
    if local is not None:
        restarts = driver_restarts(local.shape, k, driver_n_init, final_n_init)
        return driver_fit(users.sparkSession, local, k, seed=seed, distance=distance, n_init=restarts, fixed=seeds)
    if seeds is not None and len(seeds):
        return fit_seeded(users, k, seeds, seed=seed, max_iter=max_iter, distance=distance)
    best = None
    for i in range(n_init):
        model = _fit_one(make_estimator(algorithm, k, seed + i, max_iter, distance, init_steps=init_steps), users)
        if best is None or training_cost(model) < training_cost(best):
            best = model
    return best


# Restarts beyond driver_n_init only while n x k x d x restarts stays under this (seconds of
# GEMMs on 2 cores per Lloyd iteration): a 660-user sample gets final_n_init, 50k x 384 x 50 do not.
DRIVER_WORK_BUDGET = 5e9


def driver_restarts(shape: tuple[int, int], k: int, n_init: int, final_n_init: int) -> int:
    """Restarts of a driver fit: `n_init`, raised up to `final_n_init` when the fit is small.
    Best-of-10 costs still vary by about 1% with the seed on real vectors (scikit-learn's too);
    best-of-40 lands in the best optimum far more often."""
    n, d = shape
    fits = int(DRIVER_WORK_BUDGET // max(n * k * max(d, 1), 1))
    return max(n_init, min(final_n_init, fits))


def training_cost(model) -> float:
    """The fit's within-cluster cost: MLlib's training summary, or the driver fit's."""
    cost = getattr(model, "seglake_cost", None)
    return float(cost) if cost is not None else float(model.summary.trainingCost)


def driver_rows(users: DataFrame, algorithm: str, driver_fit_max_users: int,
                n_rows: int | None = None) -> np.ndarray | None:
    """The rows' vectors collected for a driver fit (KMeans, at most `driver_fit_max_users`
    rows: `n_rows`, counted when not given), else None (MLlib fits them)."""
    if algorithm != "kmeans" or driver_fit_max_users <= 0:
        return None
    n = n_rows if n_rows is not None else users.count()
    return collect_features(users) if 0 < n <= driver_fit_max_users else None


def collect_features(users: DataFrame, features_col: str = "features") -> np.ndarray:
    """The rows' feature vectors as an n x d float64 array on the driver (through Arrow)."""
    table = users.select(vector_to_array(features_col).alias("f")).toArrow()
    col = table.column("f").combine_chunks()
    if len(col) == 0:
        return np.zeros((0, 0))
    return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), -1).astype(np.float64)


def driver_fit(spark, x: np.ndarray, k: int, *, seed: int = 42, distance: str = "euclidean", n_init: int = 10,
               fixed: np.ndarray | None = None):
    """jobs/driver_kmeans.fit on the driver, returned as an MLlib KMeansModel (features ->
    segment_id) that saves, loads and predicts like a fitted one. Duplicate centres (fewer
    distinct points than k) are dropped, as MLlib returns fewer centres then (the order of
    the rest is kept: `fixed` seeds stay centres 0..g-1)."""
    centers, cost = driver_kmeans.fit(x, k, n_init=n_init, seed=seed, cosine=distance == "cosine", fixed=fixed)
    _, first = np.unique(centers, axis=0, return_index=True)
    return kmeans_model(spark, centers[np.sort(first)], cost, distance, f"KMeans_driver_{seed}")


def fit_seeded(users: DataFrame, k: int, seeds: np.ndarray, *, seed: int = 42, max_iter: int = 40,
               distance: str = "euclidean", seeding_rows: int = 20000):
    """KMeans on Spark whose first g centres start at `seeds` (guided segments), for fits too
    large for the driver. pyspark.ml's KMeans takes no initial model, the RDD-based
    pyspark.mllib KMeans does (`initialModel`): the other k - g initial centres are k-means++
    picks on a sample of `seeding_rows` users given the seeds; Lloyd iterations then run on
    every row, and the result becomes an ordinary ml KMeansModel (`kmeans_model`)."""
    from pyspark.mllib.clustering import KMeans as RDDKMeans
    from pyspark.mllib.clustering import KMeansModel as RDDKMeansModel
    from pyspark.mllib.linalg import Vectors as MLlibVectors

    n = users.count()
    local = collect_features(users.sample(fraction=min(1.0, seeding_rows / max(n, 1)), seed=seed).limit(seeding_rows))
    cosine = distance == "cosine"
    fixed = np.asarray(seeds, dtype=np.float64)
    if cosine:
        local = driver_kmeans._normalise(local)
        fixed = driver_kmeans._normalise(fixed)
    init = driver_kmeans.kmeans_pp(local, min(k, len(local) + len(fixed)), np.random.default_rng(seed), cosine, fixed)
    rdd = users.select("features").rdd.map(lambda r: MLlibVectors.fromML(r[0]))
    fitted = RDDKMeans.train(rdd, len(init), maxIterations=max_iter, seed=seed, distanceMeasure=distance,
                             initialModel=RDDKMeansModel([MLlibVectors.dense(c) for c in init]))
    centers = np.vstack([np.asarray(c) for c in fitted.clusterCenters])
    return kmeans_model(users.sparkSession, centers, float(fitted.computeCost(rdd)), distance, f"KMeans_seeded_{seed}")


def fit_hdbscan(users: DataFrame, n_users: int, *, sample_size: int = 50000, min_cluster_size: int = 15,
                seed: int = 42, distance: str = "euclidean"):
    """cluster.algorithm hdbscan: scikit-learn's HDBSCAN on a bounded sample (collected on the
    driver), its clusters' centroids as exemplars. Returns (model, thresholds): a KMeansModel of
    the exemplars, so every user goes to the nearest one (`assign`, and seglake-assign later),
    and per exemplar index the distance of its farthest sample member: a user beyond it is in no
    cluster's dense region and becomes noise (`flag_outliers`, mode noise). Raises ValueError
    when the sample holds fewer than two clusters."""
    from sklearn.cluster import HDBSCAN

    frac = min(1.0, sample_size / max(n_users, 1))
    x = collect_features(users.sample(fraction=frac, seed=seed).limit(sample_size) if frac < 1 else users)
    cosine = distance == "cosine"
    if cosine:
        x = driver_kmeans._normalise(x)
    if len(x) < 2 * min_cluster_size:
        raise ValueError(f"cluster.algorithm hdbscan: a sample of {len(x)} users cannot hold two clusters of "
                         f"cluster.hdbscan_min_cluster_size={min_cluster_size}; lower it or use kmeans")
    labels = HDBSCAN(min_cluster_size=min_cluster_size, copy=True).fit(x).labels_
    ids = sorted(set(labels) - {-1})
    if len(ids) < 2:
        raise ValueError(f"cluster.algorithm hdbscan found {len(ids)} cluster(s) in a sample of {len(x)} users "
                         f"(min_cluster_size {min_cluster_size}); lower cluster.hdbscan_min_cluster_size or use kmeans")
    centers = np.vstack([x[labels == c].mean(0) for c in ids])
    if cosine:
        centers = driver_kmeans._normalise(centers)
    thresholds, cost = {}, 0.0
    for i, c in enumerate(ids):
        members = x[labels == c]
        d = (1.0 - members @ centers[i]) if cosine else np.linalg.norm(members - centers[i], axis=1)
        # (+ a little: assign measures float32-rounded vectors, so a member can come out a hair farther)
        thresholds[i] = float(d.max()) * (1 + 1e-6) + 1e-6
        cost += float((d if cosine else d * d).sum())
    log.info("hdbscan: %d clusters in a sample of %d users, %.1f%% of it noise", len(ids), len(x),
             100.0 * float((labels == -1).mean()))
    return kmeans_model(users.sparkSession, centers, cost, distance, f"HDBSCAN_{seed}"), thresholds


def kmeans_model(spark, centers: np.ndarray, cost: float, distance: str = "euclidean", uid: str = "KMeans_seglake"):
    """An MLlib KMeansModel (features -> segment_id) with these centres, built in the JVM: it
    saves, loads and predicts like a fitted one; `seglake_cost` is its training cost."""
    jvm = spark.sparkContext._jvm
    vectors = jvm.org.apache.spark.mllib.linalg.Vectors
    arr = spark.sparkContext._gateway.new_array(jvm.org.apache.spark.mllib.linalg.Vector, len(centers))
    for i, c in enumerate(centers):
        arr[i] = vectors.fromJson(json.dumps({"type": 1, "values": [float(v) for v in c]}))
    old = jvm.org.apache.spark.mllib.clustering.KMeansModel(arr, distance, float(cost), 0)
    java_model = jvm.org.apache.spark.ml.clustering.KMeansModel(uid, old)
    model = KMeansModel(java_model)
    model._resetUid(java_model.uid())
    model.setFeaturesCol("features").setPredictionCol("segment_id")
    java_model.set(java_model.distanceMeasure(), distance).set(java_model.k(), len(centers))
    model._transfer_params_from_java()
    model.seglake_cost = float(cost)
    model.seglake_centers = np.asarray(centers, dtype=np.float64)
    return model


def predict_local(model, x: np.ndarray, distance: str = "euclidean") -> np.ndarray:
    """The segment of each row of `x` (n x d, on the driver) by the model's own rule: the
    nearest centre (cosine: of the unit row), the first one on a tie, as MLlib predicts."""
    centers = getattr(model, "seglake_centers", None)
    if centers is None:
        centers = np.vstack(model.clusterCenters())
    cosine = distance == "cosine"
    if cosine:
        x, centers = driver_kmeans._normalise(x), driver_kmeans._normalise(centers)
    return driver_kmeans._cost_matrix(x, np.einsum("ij,ij->i", x, x), centers, cosine).argmin(axis=1)


def concat_models(spark, models: dict[str, object], distance: str = "euclidean") -> tuple[object, dict[str, list[int]]]:
    """One KMeansModel holding every group's centres, in the order of `models` ({group: model}),
    and {group: its segment ids}: what `assign` needs to keep each user within their group."""
    centers, groups = [], {}
    for name, model in models.items():
        own = np.vstack(model.clusterCenters())
        groups[name] = list(range(sum(len(c) for c in centers), sum(len(c) for c in centers) + len(own)))
        centers.append(own)
    cost = sum(training_cost(m) for m in models.values())
    return kmeans_model(spark, np.vstack(centers), cost, distance, "KMeans_by_language"), groups


def language_group(languages: list[str]) -> "F.Column":
    """Each user's group: their main language when it is one of `languages`, else OTHER."""
    return F.when(F.col("lang").isin(list(languages)), F.col("lang")).otherwise(F.lit(OTHER))


def split_k(k: int, sizes: dict[str, int]) -> dict[str, int]:
    """A total of k segments (k >= 2 x number of groups) shared among groups in proportion to
    their users (largest remainder), each group at least 2 (a KMeans model needs two centres)
    and at most its users."""
    total = sum(sizes.values())
    quota = {g: k * n / total for g, n in sizes.items()}
    out = {g: max(min(2, sizes[g]), min(sizes[g], int(q))) for g, q in quota.items()}
    while sum(out.values()) > k:  # (the minimum overshot): from the groups most above quota
        g = max((g for g in out if out[g] > 2), key=lambda g: out[g] - quota[g])
        out[g] -= 1
    while sum(out.values()) < k:
        room = [g for g in out if out[g] < sizes[g]]
        if not room:
            break
        g = max(room, key=lambda g: quota[g] - out[g])
        out[g] += 1
    return out


def fit_on_sample(users: DataFrame, k: int, *, n_users: int, sample_size: int | None, seed: int = 42,
                  **fit_args):
    """`fit`, on a stratified sample of about `sample_size` users when there are more of them.

    A centroid is a mean: a few thousand users per segment pin it down, so the model's quality
    depends on the sample, not on the population, while a fit's time grows with users x
    iterations x restarts. Measured (bench/cluster_scale.py, 1M users x 384 dims, k = 50):
    fitting on 100k users and assigning all 1M (`assign`) takes about the time scikit-learn
    needs on one machine, fitting on all 1M over five times as long. Everyone is assigned
    afterwards; the sample is released when the fit is done.
    """
    if not sample_size or n_users <= sample_size:
        return fit(users, k, seed=seed, n_rows=n_users, **fit_args)
    # One partition per core: the cached users may have thousands of partitions, and every
    # iteration of every restart would schedule a task for each.
    cores = users.sparkSession.sparkContext.defaultParallelism
    sample = stratified_sample(users, n_users, sample_size, seed).select("features").coalesce(cores).persist()
    try:
        return fit(sample, k, seed=seed, n_rows=sample_size, **fit_args)
    finally:
        sample.unpersist()


def total_cost(assigned: DataFrame, distance: str = "euclidean") -> float:
    """The k-means objective over every assigned user, as MLlib defines it: the sum of squared
    euclidean distances, or of cosine distances, to the user's centroid."""
    d = F.col("distance") if distance == "cosine" else F.col("distance") * F.col("distance")
    return float(assigned.agg(F.sum(d)).first()[0] or 0.0)


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
            n_init: int = 1, init_steps: int = 2, tolerance: float = 0.0, driver_fit_max_users: int = 0,
            driver_n_init: int = 10) -> tuple[int, list[dict], object | None, DataFrame]:
    """Fit every k in [k_min, k_max] on a stratified sample and score it (silhouette, WSSSE,
    Davies-Bouldin, Calinski-Harabasz, balance). Returns (chosen k, per-k scores, the chosen
    k's model when the sample was all users — so it need not be fitted again — and the
    cached sample for further checks; the caller unpersists it)."""
    sample = stratified_sample(users, n_users, sample_size, seed).select("user_id", "features").cache()
    n_sample = sample.count()
    # A sample small enough for the driver is collected once, for every k's fit.
    local = driver_rows(sample, algorithm, driver_fit_max_users, n_sample)
    scores, models = [], {}
    for k in range(k_min, min(k_max, n_sample - 1) + 1):
        model = fit(sample, k, algorithm=algorithm, seed=seed, max_iter=max_iter, distance=distance, n_init=n_init,
                    init_steps=init_steps, driver_n_init=driver_n_init, local=local)
        if sample_size >= n_users and local is None:  # (a driver fit is refitted with its final restarts)
            models[k] = model
        row = {"k": k, **score(model, sample, local, distance), "cost": training_cost(model), "sample_size": n_sample}
        scores.append(row)
        log.info("k=%d silhouette=%.4f DB=%.3f CH=%.1f cost=%.2f (sample of %d users)", k, row["silhouette"],
                 row["davies_bouldin"], row["calinski_harabasz"], row["cost"], n_sample)
    k = choose_k(scores, tolerance)
    for s in scores:
        s["chosen"] = s["k"] == k
    return k, scores, models.get(k), sample


def score(model, sample: DataFrame, local: np.ndarray | None, distance: str) -> dict:
    """A k's silhouette, WSSSE, Davies-Bouldin, Calinski-Harabasz and balance on the sample: on
    the driver when the sample is there (`local`, the same formulas: jobs/metrics.py), else in
    Spark. A fit that collapsed to a single non-empty cluster has no silhouette."""
    if local is not None:
        labels = predict_local(model, local, distance)
        one = len(np.unique(labels)) < 2
        return {"silhouette": float("nan") if one else metrics.local_silhouette(local, labels, distance),
                **metrics.local_quality(local, labels)}
    pred = model.transform(sample).cache()
    try:
        used = pred.select("segment_id").distinct().count()
        return {"silhouette": silhouette(pred, distance) if used > 1 else float("nan"), **metrics.quality(pred)}
    finally:
        pred.unpersist()


def stability(sample: DataFrame, k: int, seeds: list[int], *, algorithm: str = "kmeans", max_iter: int = 40,
              distance: str = "euclidean", n_init: int = 1, init_steps: int = 2, driver_fit_max_users: int = 0,
              driver_n_init: int = 10) -> float:
    """Mean pairwise adjusted Rand index between fits with different seeds on `sample`
    (each fit as the job does it, n_init restarts included). 1 = the same segments."""
    pred = sample.select("features")
    local = driver_rows(sample, algorithm, driver_fit_max_users)
    if local is not None:  # (fitted and compared on the driver)
        return metrics.local_pairwise_ari([
            predict_local(fit(sample, k, seed=seed, distance=distance, driver_n_init=driver_n_init, local=local),
                          local, distance) for seed in seeds])
    cols = []
    for i, seed in enumerate(seeds):
        model = fit(sample, k, algorithm=algorithm, seed=seed, max_iter=max_iter, distance=distance, n_init=n_init,
                    init_steps=init_steps, driver_n_init=driver_n_init, local=local)
        model.setPredictionCol(f"_s{i}")
        pred = model.transform(pred)
        cols.append(f"_s{i}")
    pred = pred.cache()
    try:
        return metrics.pairwise_ari(pred, cols)
    finally:
        pred.unpersist()  # (it was left cached for the rest of the session)


def _nearest_two(x: np.ndarray, centers: np.ndarray, scores: np.ndarray, own: np.ndarray | None,
                 cosine: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(own id, own distance, runner-up id or -1, runner-up distance or NaN) per row of `x`
    (float64; unit rows and centroids for cosine, whose distance is 1 - cos).

    `scores` ranks the centroids per row (smaller = nearer; blocked centroids +inf), computed
    in float32: one GEMM, the whole cost of the stage. Only the two best are then measured
    exactly in float64 (x - c), and swapped if float32 rounding had them the wrong way round,
    so the reported distances and the nearest centroid do not depend on float32 precision.
    `own`, when given, is the segment already chosen (a bisecting tree's path)."""
    n, k = scores.shape
    rows = np.arange(n)

    def dist(ids: np.ndarray) -> np.ndarray:
        if cosine:
            return 1.0 - np.einsum("ij,ij->i", x, centers[ids])
        diff = x - centers[ids]
        return np.sqrt(np.einsum("ij,ij->i", diff, diff))

    if own is None:
        top = np.argpartition(scores, 1, axis=1)[:, :2] if k > 1 else np.zeros((n, 1), dtype=np.int64)
        first = top[:, 0]
        second = top[:, 1] if k > 1 else np.full(n, -1)
    else:
        first = own.astype(np.int64)
        rest = scores.copy()
        rest[rows, first] = np.inf
        second = rest.argmin(1) if k > 1 else np.full(n, -1)
    valid = (second >= 0) & np.isfinite(scores[rows, np.maximum(second, 0)])
    second = np.where(valid, second, -1)
    d1 = dist(first)
    d2 = np.where(valid, dist(np.maximum(second, 0)), np.nan)
    if own is None:
        swap = valid & (d2 < d1)
        first, second = np.where(swap, second, first), np.where(swap, first, second)
        d1, d2 = np.where(swap, d2, d1), np.where(swap, d1, d2)
    return first, d1, second, d2


def assign(users: DataFrame, model, distance: str = "euclidean", allowed: list[int] | None = None,
           groups: dict[str, list[int]] | None = None) -> DataFrame:
    """Add `segment_id` (the nearest centroid; a bisecting model's own tree path), `distance`
    to that segment's centroid (euclidean, or cosine distance 1 - cos), and the runner-up:
    `second_segment_id`, `second_distance` and `margin` = second_distance - distance (small =
    borderline user).

    With `allowed` (segment ids), users go to the nearest allowed centroid instead: the
    segments left out were too small to publish (privacy.min_segment_size) and are merged
    into their neighbours.

    With `groups` ({main language: its segment ids}, from a per-language fit), a user only
    goes to a segment of their own main language; users of any other language (or none) to
    the segments of group OTHER when there is one, else to any segment. When a user's group has
    no allowed segment left, any allowed segment will do.

    One Arrow UDF per batch of users (vectors sent as float32: half the bytes of doubles, 7
    significant digits): a float32 GEMM against all centroids ranks them, the best two are
    measured in float64 (`_nearest_two`). Measured (bench/cluster_scale.py) this is
    what makes assigning every user cheap next to the fit; MLlib's transform predicts row by
    row and would have to be followed by a second pass for the distances anyway.
    """
    centers = np.vstack(model.clusterCenters()).astype(np.float64)
    k, dims = centers.shape
    cosine = distance == "cosine"
    if cosine:
        centers = centers / np.maximum(np.linalg.norm(centers, axis=1, keepdims=True), 1e-12)
    blocked = np.zeros(k, dtype=bool) if allowed is None else ~np.isin(np.arange(k), list(allowed))
    c32t = np.ascontiguousarray(centers.T.astype(np.float32))
    c_sq = (centers * centers).sum(1).astype(np.float32)
    group_of = np.full(k, -1)
    names = sorted(groups or {})
    for gi, name in enumerate(names):
        group_of[list(groups[name])] = gi
    rest = names.index(OTHER) if OTHER in names else -1
    index = {name: gi for gi, name in enumerate(names) if name != OTHER}
    # A bisecting model assigns by walking its tree, which need not end at the nearest leaf:
    # its own prediction is kept unless segments are merged (then the nearest allowed wins).
    tree = isinstance(model, BisectingKMeansModel) and allowed is None

    @F.arrow_udf("segment_id int, distance double, second_segment_id int, second_distance double, "
                 "third_segment_id int, third_distance double")
    def _assign(vecs: pa.Array, seg: pa.Array, lang: pa.Array) -> pa.Array:
        n = len(vecs)
        if vecs.null_count:
            raise ValueError("user vectors must not be null")
        x = vecs.flatten().to_numpy(zero_copy_only=False).reshape(n, dims)
        xd = x.astype(np.float64)
        if cosine:
            xd /= np.maximum(np.linalg.norm(xd, axis=1, keepdims=True), 1e-12)
            x = xd.astype(np.float32)
        scores = x @ c32t
        if cosine:  # nearest = largest cosine
            np.negative(scores, out=scores)
        else:  # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; ||x||^2 is the same for every c
            scores *= -2.0
            scores += c_sq[None, :]
        mask = np.broadcast_to(blocked, scores.shape)
        if groups:
            row = np.array([index.get(v, rest) for v in lang.to_pylist()])
            own_group = (group_of[None, :] == row[:, None]) | (row[:, None] < 0)
            mask = mask | ~own_group
            mask = np.where(mask.all(1, keepdims=True), blocked[None, :], mask)
        scores[mask] = np.inf
        own = seg.to_numpy(zero_copy_only=False) if tree else None
        first, d1, second, d2 = _nearest_two(xd, centers, scores, own, cosine)
        third, d3 = _third(xd, centers, scores, first, second, cosine)
        return pa.StructArray.from_arrays(
            [pa.array(first.astype(np.int32)), pa.array(d1), pa.array(second.astype(np.int32)), pa.array(d2),
             pa.array(third.astype(np.int32)), pa.array(d3)],
            names=["segment_id", "distance", "second_segment_id", "second_distance", "third_segment_id",
                   "third_distance"])

    base = model.transform(users) if tree else users.withColumn("segment_id", F.lit(-1))
    vec = vector_to_array("features", "float32")
    lang = F.col("lang") if groups else F.lit(None).cast("string")
    return _unpacked(base.withColumn("_a", _assign(vec, F.col("segment_id"), lang)))


def _unpacked(df: DataFrame) -> DataFrame:
    """The assign UDF's struct `_a` as columns (-1, no runner-up, as null) and the margin."""
    def some(c: str):
        return F.when(F.col(f"_a.{c}") >= 0, F.col(f"_a.{c}"))

    return (df.withColumns({"segment_id": F.col("_a.segment_id"), "distance": F.col("_a.distance"),
                            "second_segment_id": some("second_segment_id"), "second_distance": F.col("_a.second_distance"),
                            "third_segment_id": some("third_segment_id"), "third_distance": F.col("_a.third_distance")})
            .withColumn("margin", F.col("second_distance") - F.col("distance")).drop("_a"))


def _third(x: np.ndarray, centers: np.ndarray, scores: np.ndarray, first: np.ndarray, second: np.ndarray,
           cosine: bool) -> tuple[np.ndarray, np.ndarray]:
    """The third-nearest allowed centroid (or -1) and its exact distance (or NaN), for the
    soft memberships (`memberships`)."""
    n, k = scores.shape
    if k < 3:
        return np.full(n, -1), np.full(n, np.nan)
    rows = np.arange(n)
    rest = scores.copy()
    rest[rows, first] = np.inf
    rest[rows, np.maximum(second, 0)] = np.inf
    third = rest.argmin(1)
    valid = (second >= 0) & np.isfinite(rest[rows, third])
    c = centers[third]
    d = 1.0 - np.einsum("ij,ij->i", x, c) if cosine else np.sqrt(np.einsum("ij,ij->i", x - c, x - c))
    return np.where(valid, third, -1), np.where(valid, d, np.nan)


def squared(distance_col, distance: str):
    """The squared euclidean distance a distance column stands for (cosine: 1 - cos of unit
    vectors is half their squared euclidean distance)."""
    return distance_col * distance_col if distance != "cosine" else 2.0 * distance_col


def fit_temperature(assigned: DataFrame, centers: np.ndarray, distance: str, sample_size: int = 5000,
                    seed: int = 42) -> float:
    """The softmax temperature of the memberships, fitted on the data: 2 sigma^2 of an
    isotropic Gaussian mixture around the centroids, sigma^2 the within-segment scatter per
    effective dimension: mean squared distance to the own centroid / the participation ratio
    (sum lambda)^2 / sum lambda^2 of the within-segment covariance's eigenvalues (a sample of
    users on the driver). Counting every dimension instead would make the posteriors
    needlessly sharp: user vectors vary in far fewer directions than they have."""
    n = assigned.count()
    rows = (assigned.sample(fraction=min(1.0, sample_size / max(n, 1)), seed=seed)
            .select(vector_to_array("features").alias("x"), "segment_id").limit(sample_size).collect())
    if len(rows) < 2:
        return 1.0
    x = np.array([r["x"] for r in rows], dtype=np.float64)
    c = np.asarray(centers, dtype=np.float64)
    if distance == "cosine":
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    resid = x - c[np.array([r["segment_id"] for r in rows])]  # (segment_id: the model index here)
    lam = np.linalg.svd(resid - resid.mean(0), compute_uv=False) ** 2
    d_eff = float(lam.sum() ** 2 / max((lam ** 2).sum(), 1e-300)) if lam.sum() > 0 else 1.0
    sigma2 = float((resid * resid).sum(1).mean()) / max(d_eff, 1.0)
    return max(2.0 * sigma2, 1e-12)


def outlier_thresholds(assigned: DataFrame, quantile: float) -> dict[int, float]:
    """Each segment's distance quantile: users beyond it are outliers (`flag_outliers`)."""
    rows = assigned.groupBy("segment_id").agg(F.percentile_approx("distance", float(quantile), 10000).alias("t")).collect()
    return {int(r["segment_id"]): float(r["t"]) for r in rows}


def flag_outliers(df: DataFrame, thresholds: dict[int, float] | None, mode: str = "flag") -> DataFrame:
    """Add `outlier`: farther from the own (nearest) centroid than the segment's threshold, so
    far from every centroid. mode noise: outliers get segment_id -1 (their nearest segment
    stays first in top_segment_ids); flag: they stay in their nearest segment. A segment
    without a threshold (new to the model) flags nobody."""
    if not thresholds:
        return df.withColumn("outlier", F.lit(False))
    table = F.create_map(*[x for sid, t in sorted(thresholds.items()) for x in (F.lit(int(sid)), F.lit(float(t)))])
    far = F.coalesce(F.col("distance") > F.element_at(table, F.col("segment_id")), F.lit(False))
    df = df.withColumn("outlier", far)
    if mode == "noise":
        df = df.withColumn("segment_id", F.when(F.col("outlier"), F.lit(-1)).otherwise(F.col("segment_id")))
    return df


def memberships(df: DataFrame, temperature: float, distance: str) -> DataFrame:
    """Add `top_segment_ids` (the nearest allowed segments, up to 3, nearest first) and
    `memberships`: their probabilities, a softmax of -squared distance / temperature over them
    (renormalised over the three: they sum to 1). Drops the third-nearest columns."""
    sq = [squared(F.col(c), distance) for c in ("distance", "second_distance", "third_distance")]
    w = [F.when(F.col(c).isNotNull(), F.exp(-(d - sq[0]) / F.lit(float(temperature)))).otherwise(F.lit(0.0))
         for c, d in zip(("distance", "second_distance", "third_distance"), sq)]
    total = w[0] + w[1] + w[2]
    ids = F.filter(F.array("segment_id", "second_segment_id", "third_segment_id"), lambda v: v.isNotNull())
    return (df.withColumn("top_segment_ids", ids)
            .withColumn("memberships", F.slice(F.array(*[x / total for x in w]), 1, F.size(ids)))
            .drop("third_segment_id", "third_distance"))


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
