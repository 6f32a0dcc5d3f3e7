"""Clustering: which users share a segment, k selection, distances, both algorithms."""
import numpy as np
import pytest
from pyspark.ml.linalg import Vectors

from jobs import cluster


@pytest.fixture(scope="module")
def blobs(spark):
    rng = np.random.default_rng(0)
    centers = np.eye(8)[:4] * 5
    rows = [(f"g{g}-{i}", Vectors.dense(centers[g] + rng.normal(0, 0.3, 8)), g, "en" if g < 3 else "zh", 3, 1)
            for g in range(4) for i in range(30)]
    return spark.createDataFrame(rows, ["user_id", "features", "truth", "lang", "n_texts", "n_events"]).cache()


def _groups_match(rows):
    """Every planted group maps to exactly one segment and vice versa."""
    pairs = {(r.truth, r.segment_id) for r in rows}
    return len(pairs) == len({t for t, _ in pairs}) == len({s for _, s in pairs})


@pytest.mark.parametrize("algorithm, distance", [("kmeans", "euclidean"), ("kmeans", "cosine"),
                                                 ("bisecting", "euclidean")])
def test_fit_assign_recovers_groups(blobs, algorithm, distance):
    model = cluster.fit(blobs, 4, algorithm=algorithm, distance=distance, seed=42)
    rows = cluster.assign(blobs, model, distance).collect()
    assert _groups_match(rows)
    centers = np.vstack(model.clusterCenters())

    def dist(x, c):
        return (1 - x @ c / np.linalg.norm(x) / np.linalg.norm(c)) if distance == "cosine" else np.linalg.norm(x - c)

    for r in rows[:5]:
        x = r.features.toArray()
        d = [dist(x, c) for c in centers]
        assert r.distance == pytest.approx(d[r.segment_id], rel=1e-6)
        runner_up = min((v, j) for j, v in enumerate(d) if j != r.segment_id)
        assert (r.second_distance, r.second_segment_id) == (pytest.approx(runner_up[0], rel=1e-6), runner_up[1])
        assert r.margin == pytest.approx(runner_up[0] - d[r.segment_id], rel=1e-6)


def test_sweep_picks_planted_k(blobs):
    k, scores, model, sample = cluster.sweep_k(blobs, 2, 7, n_users=120, sample_size=1000)
    assert k == 4 and [s["chosen"] for s in scores] == [False, False, True, False, False, False]
    assert [s["k"] for s in scores] == [2, 3, 4, 5, 6, 7]
    assert max(scores, key=lambda s: s["silhouette"])["k"] == 4
    assert all(s["cost"] > 0 and s["sample_size"] == 120 for s in scores)
    assert len(model.clusterCenters()) == 4  # the whole population was the sample: model reused
    four = scores[2]
    assert four["min_share"] == four["max_share"] == 0.25 and four["size_entropy"] == pytest.approx(1.0)
    assert four["davies_bouldin"] == min(s["davies_bouldin"] for s in scores)
    assert four["calinski_harabasz"] == max(s["calinski_harabasz"] for s in scores)


def test_sweep_on_a_sample(blobs):
    k, scores, model, sample = cluster.sweep_k(blobs, 3, 5, n_users=120, sample_size=60, seed=3)
    assert k == 4 and 30 <= scores[0]["sample_size"] <= 90
    assert model is None  # fitted on a sample only: the caller refits on everyone
    # Stratified: the small 'zh' stratum (30 users) is kept whole (min 50 per stratum).
    assert sample.where("user_id like 'g3-%'").count() == 30


def test_choose_k_rule():
    scores = [{"k": 3, "silhouette": 0.50}, {"k": 4, "silhouette": 0.505}, {"k": 5, "silhouette": 0.52},
              {"k": 6, "silhouette": float("nan")}]
    assert cluster.choose_k(scores, 0.0) == 5
    assert cluster.choose_k(scores, 0.02) == 3
    assert cluster.choose_k(scores, 0.017) == 4


def test_stability(blobs):
    assert cluster.stability(blobs.select("features"), 4, [1, 2, 3]) == pytest.approx(1.0)
    assert cluster.stability(blobs.select("features"), 9, [1, 2, 3]) < 0.95  # splitting 4 blobs 9 ways is arbitrary


def test_bisecting_tree(spark, blobs, tmp_path):
    model = cluster.fit(blobs, 4, algorithm="bisecting")
    model.write().save(str(tmp_path / "m"))
    tree = cluster.bisecting_tree(spark, str(tmp_path / "m"))
    assert sorted(tree) == [0, 1, 2, 3]
    assert all(path[0] == -1 and path[-1] == leaf for leaf, path in tree.items())
    # Two leaves under the same parent are siblings: a binary tree over 4 leaves has 3 splits.
    assert len({n for path in tree.values() for n in path if n < 0}) == 3


def test_restarts_keep_the_lowest_cost(blobs):
    singles = [cluster.fit(blobs, 6, seed=s).summary.trainingCost for s in (7, 8, 9)]
    best = cluster.fit(blobs, 6, seed=7, n_init=3).summary.trainingCost
    assert best == pytest.approx(min(singles))


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_driver_fit_is_an_mllib_model_at_scikit_learns_cost(spark, tmp_path, distance):
    """The driver fit (k-means++, 10 restarts) reaches scikit-learn's cost on overlapping groups
    where MLlib's k-means|| does not do better, and its model saves, loads and predicts like MLlib's."""
    from pyspark.ml.clustering import KMeansModel
    from sklearn.cluster import KMeans as SkKMeans

    rng = np.random.default_rng(5)
    x = np.vstack([rng.normal(c, 1.2, (40, 6)) for c in rng.normal(0, 2.5, (7, 6))])
    users = spark.createDataFrame([(Vectors.dense(v),) for v in x], ["features"]).cache()
    model = cluster.fit(users, 7, distance=distance, driver_fit_max_users=1000, n_init=3)
    mllib = cluster.fit(users, 7, distance=distance, n_init=3)
    assert cluster.training_cost(model) <= cluster.training_cost(mllib) * (1 + 1e-9)
    pred = cluster.assign(users, model, distance)
    assert cluster.total_cost(pred, distance) == pytest.approx(cluster.training_cost(model), rel=1e-6)
    if distance == "euclidean":
        sk = SkKMeans(7, n_init=10, random_state=0).fit(x)
        assert cluster.training_cost(model) <= sk.inertia_ * 1.002
    model.write().save(str(tmp_path / "m"))
    loaded = KMeansModel.load(str(tmp_path / "m"))
    assert loaded.getDistanceMeasure() == distance and loaded.getPredictionCol() == "segment_id"
    same = loaded.transform(users).select("segment_id").collect()
    assert [r.segment_id for r in same] == [r.segment_id for r in pred.select("segment_id").collect()]


def test_driver_fit_returns_fewer_centres_for_fewer_distinct_points(spark):
    users = spark.createDataFrame([(Vectors.dense([float(i % 3), 0.0]),) for i in range(30)], ["features"])
    model = cluster.fit(users, 5, driver_fit_max_users=100)
    assert len(model.clusterCenters()) == 3


def test_silhouette_high_for_planted_groups(blobs):
    pred = cluster.assign(blobs, cluster.fit(blobs, 4), "euclidean")
    assert cluster.silhouette(pred) > 0.8


def test_fit_on_a_sample_then_assign_everyone(blobs):
    model = cluster.fit_on_sample(blobs, 4, n_users=120, sample_size=60, seed=3)
    pred = cluster.assign(blobs, model, "euclidean")
    rows = pred.collect()
    assert len(rows) == 120 and _groups_match(rows)
    # The nearest centroid, as MLlib itself would predict it, and the objective over everyone.
    mllib = {r.user_id: r.segment_id for r in model.transform(blobs).collect()}
    assert all(mllib[r.user_id] == r.segment_id for r in rows)
    centers = np.vstack(model.clusterCenters())
    expected = sum(float(((r.features.toArray() - centers[r.segment_id]) ** 2).sum()) for r in rows)
    assert cluster.total_cost(pred) == pytest.approx(expected, rel=1e-6)  # vectors travel as float32


def test_fewer_distinct_vectors_than_k(spark):
    # 5 distinct vectors, k = 8: MLlib's block solver fails on this; the fit falls back to
    # the row solver, which returns the 5 centres, and every user is still assigned.
    rows = [(f"u{i}", Vectors.dense([float(i % 5), 2.0 * (i % 5)])) for i in range(60)]
    users = spark.createDataFrame(rows, ["user_id", "features"])
    model = cluster.fit(users, 8)
    assert len(model.clusterCenters()) == 5
    pred = cluster.assign(users, model).collect()
    assert len(pred) == 60 and {r.distance for r in pred} == {0.0}
    assert len({r.segment_id for r in pred}) == 5


def test_driver_restarts_grow_only_while_cheap():
    assert cluster.driver_restarts((660, 399), 10, 10, 40) == 40  # the sample: best of 40
    assert cluster.driver_restarts((50_000, 384), 50, 10, 40) == 10  # 9.6e8 per restart: the minimum
    assert cluster.driver_restarts((20_000, 384), 30, 10, 40) == 21  # 5e9 / 2.3e8
    assert cluster.driver_restarts((50, 4), 3, 10, 0) == 10  # final_n_init 0: the sweep's restarts


def test_split_k_shares_k_by_group_size():
    assert cluster.split_k(10, {"en": 500, "zh": 160}) == {"en": 8, "zh": 2}
    assert cluster.split_k(6, {"en": 100, "zh": 100, "*": 100}) == {"en": 2, "zh": 2, "*": 2}
    # Every group gets two segments (a KMeans model needs two centres), none more than its users.
    assert cluster.split_k(7, {"en": 1000, "zh": 3, "*": 2}) == {"en": 3, "zh": 2, "*": 2}
    assert cluster.split_k(20, {"en": 990_000, "zh": 10_000}) == {"en": 18, "zh": 2}


def test_per_language_model_keeps_users_within_their_language(spark, blobs):
    from pyspark.sql import functions as F

    en, zh = blobs.where(F.col("lang") == "en"), blobs.where(F.col("lang") == "zh")
    models = {"en": cluster.fit(en, 3, driver_fit_max_users=1000), "zh": cluster.fit(zh, 2, driver_fit_max_users=1000)}
    model, groups = cluster.concat_models(spark, models, "euclidean")
    assert groups == {"en": [0, 1, 2], "zh": [3, 4]} and len(model.clusterCenters()) == 5
    assert cluster.training_cost(model) == pytest.approx(sum(cluster.training_cost(m) for m in models.values()))
    # Users placed right on an English centre: a Chinese one still goes to a Chinese segment,
    # one of another language (no group of its own, no "*" group) to the nearest of any.
    centre = model.clusterCenters()[0]
    probe = spark.createDataFrame([(f"p-{lang}", Vectors.dense(centre), lang) for lang in ("en", "zh", "fr")],
                                  ["user_id", "features", "lang"])
    got = {r.user_id: r.segment_id for r in cluster.assign(probe, model, groups=groups).collect()}
    assert got["p-en"] == 0 and got["p-zh"] in (3, 4) and got["p-fr"] == 0
    rows = cluster.assign(blobs, model, groups=groups).collect()
    assert all((r.segment_id in groups[r.lang]) and (r.second_segment_id is None or r.second_segment_id
               in groups[r.lang]) for r in rows)
    assert _groups_match([r for r in rows if r.lang == "en"])
    # With the "*" group every other language goes there; with the Chinese segments merged
    # away (privacy), Chinese users take the nearest allowed segment of any language.
    other = {"en": [0, 1], "zh": [3, 4], "*": [2]}
    got = {r.user_id: r.segment_id for r in cluster.assign(probe, model, groups=other).collect()}
    assert got["p-fr"] == 2 and got["p-en"] == 0
    got = {r.user_id: r.segment_id for r in cluster.assign(probe, model, allowed=[0, 1, 2], groups=groups).collect()}
    assert got["p-zh"] == 0


def test_memberships_and_outliers(blobs):
    """Soft membership: the three nearest segments, probabilities summing to 1, nearest
    first; a user half-way between two centroids splits evenly. Outliers: beyond their
    segment's distance quantile; noise mode puts them in segment -1."""
    model = cluster.fit(blobs, 4, seed=42)
    centers = np.vstack(model.clusterCenters())
    assigned = cluster.assign(blobs, model)
    t = cluster.fit_temperature(assigned, centers, "euclidean")
    # Within-group noise is 0.3 per coordinate: the fitted 2 sigma^2 is of that order (0.18),
    # far below counting all 8 dimensions' scatter as one (8 x 0.09 = 0.72).
    assert 0.05 < t < 0.5
    rows = cluster.memberships(assigned, t, "euclidean").collect()
    for r in rows:
        assert len(r.top_segment_ids) == len(r.memberships) == 3 and r.top_segment_ids[0] == r.segment_id
        assert sum(r.memberships) == pytest.approx(1.0) and list(r.memberships) == sorted(r.memberships, reverse=True)
    a, b = centers[0], centers[1]
    mid = blobs.sparkSession.createDataFrame([("mid", Vectors.dense((a + b) / 2), 0, "en", 1, 1)], blobs.columns)
    m = cluster.memberships(cluster.assign(mid, model), t, "euclidean").first()
    assert set(m.top_segment_ids[:2]) == {0, 1} and m.memberships[0] == pytest.approx(0.5, abs=1e-3)
    assert m.memberships[2] < 1e-6
    # Outliers: the farthest 10% of each segment; a far-away user in noise mode.
    thresholds = cluster.outlier_thresholds(assigned, 0.9)
    assert set(thresholds) == {0, 1, 2, 3}
    flagged = cluster.flag_outliers(assigned, thresholds).collect()
    assert 4 <= sum(r.outlier for r in flagged) <= 20 and {r.segment_id for r in flagged} == {0, 1, 2, 3}
    for r in flagged:
        assert r.outlier == (r.distance > thresholds[r.segment_id])
    far = blobs.sparkSession.createDataFrame([("far", Vectors.dense(centers[2] + 3.0), 0, "en", 1, 1)], blobs.columns)
    noise = cluster.flag_outliers(cluster.assign(far, model), thresholds, "noise").first()
    assert noise.outlier and noise.segment_id == -1 and noise.second_segment_id is not None


def test_driver_fit_keeps_guided_seeds_first():
    """Guided seeds are centres 0..g-1 of the fit and end at their members' mean; the other
    centres are discovered (k-means++ given the seeds)."""
    from jobs import driver_kmeans

    rng = np.random.default_rng(1)
    truth = np.eye(6)[:4] * 5
    x = np.vstack([truth[g] + rng.normal(0, 0.3, (40, 6)) for g in range(4)])
    seed = truth[2] * 0.6 + 0.4  # a rough description of group 2
    for cosine in (False, True):
        centers, _ = driver_kmeans.fit(x, 4, n_init=3, seed=0, cosine=cosine, fixed=seed[None, :])
        target = truth[2] / np.linalg.norm(truth[2]) if cosine else truth[2]
        assert np.linalg.norm(centers[0] - target) < 0.2  # moved from the seed to group 2's mean
        nearest = sorted(int(np.argmin(np.linalg.norm(truth - c, axis=1))) for c in centers)
        assert nearest == [0, 1, 2, 3]  # and the other three groups were found


def test_hdbscan_on_a_sample_assigns_everyone_or_noise(blobs):
    """cluster.algorithm hdbscan: HDBSCAN on the (here whole) sample, exemplars as a KMeans
    model; every user goes to the nearest, and past the cluster's farthest member to noise."""
    model, thresholds = cluster.fit_hdbscan(blobs, 120, sample_size=120, min_cluster_size=10)
    rows = cluster.assign(blobs, model).collect()
    assert len(model.clusterCenters()) == 4 and _groups_match(rows) and set(thresholds) == {0, 1, 2, 3}
    flagged = cluster.flag_outliers(cluster.assign(blobs, model), thresholds, "noise").collect()
    assert sum(r.segment_id == -1 for r in flagged) <= 12  # at most the tails HDBSCAN left as noise
    centers = np.vstack(model.clusterCenters())
    far = blobs.sparkSession.createDataFrame([("far", Vectors.dense(centers[1] + 2.0), 0, "en", 1, 1)], blobs.columns)
    assert cluster.flag_outliers(cluster.assign(far, model), thresholds, "noise").first().segment_id == -1
    with pytest.raises(ValueError, match="cannot hold two clusters"):
        cluster.fit_hdbscan(blobs, 120, sample_size=120, min_cluster_size=200)
    one = blobs.where("truth = 0")  # one dense group: HDBSCAN finds no two clusters in it
    with pytest.raises(ValueError, match=r"hdbscan found [01] cluster"):
        cluster.fit_hdbscan(one, 30, sample_size=30, min_cluster_size=10)
