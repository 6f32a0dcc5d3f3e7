"""Quality metrics from per-segment sums match scikit-learn's on the full data."""
import numpy as np
import pytest
from pyspark.ml.linalg import Vectors
from sklearn.metrics import adjusted_rand_score, calinski_harabasz_score, davies_bouldin_score

from jobs import metrics


def test_metrics_match_sklearn(spark):
    rng = np.random.default_rng(1)
    x = np.vstack([rng.normal(c, 0.5 + c / 10, (20 + 5 * c, 3)) for c in range(4)])
    labels = np.concatenate([[c] * (20 + 5 * c) for c in range(4)])
    df = spark.createDataFrame([(Vectors.dense(v), int(l)) for v, l in zip(x, labels)], ["features", "segment_id"])
    got = metrics.quality(df)
    assert got["davies_bouldin"] == pytest.approx(davies_bouldin_score(x, labels), rel=1e-6)
    assert got["calinski_harabasz"] == pytest.approx(calinski_harabasz_score(x, labels), rel=1e-6)
    means = np.vstack([x[labels == c].mean(0) for c in range(4)])
    assert got["wssse"] == pytest.approx(sum(((x[labels == c] - means[c]) ** 2).sum() for c in range(4)), rel=1e-9)
    sizes = np.bincount(labels) / len(labels)
    assert (got["min_share"], got["max_share"]) == (pytest.approx(sizes.min()), pytest.approx(sizes.max()))
    assert got["size_entropy"] == pytest.approx(-(sizes * np.log(sizes)).sum() / np.log(4))


def test_adjusted_rand_matches_sklearn():
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 4, 200), rng.integers(0, 5, 200)
    b[:120] = a[:120]
    pairs = {}
    for i, j in zip(a, b):
        pairs[(i, j)] = pairs.get((i, j), 0) + 1
    assert metrics.adjusted_rand([(i, j, c) for (i, j), c in pairs.items()]) == pytest.approx(adjusted_rand_score(a, b))
    assert metrics.adjusted_rand([(0, 5, 10), (1, 7, 10)]) == 1.0  # same partition, other ids


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_driver_scores_equal_sparks(spark, distance):
    """A sample on the driver is scored without Spark (jobs/cluster.score): the same silhouette
    as MLlib's ClusteringEvaluator, the same quality metrics, the same labels and pairwise ARI,
    on clusters of unequal spread with one point alone in its cluster."""
    from jobs import cluster

    rng = np.random.default_rng(3)
    x = np.vstack([rng.normal(c, 0.4 + c / 5, (15 + 4 * c, 5)) + 2 * np.eye(5)[c] for c in range(4)]
                  + [np.full((1, 5), -9.0)])
    df = spark.createDataFrame([(Vectors.dense(v),) for v in x], ["features"]).cache()
    model = cluster.driver_fit(spark, x, 5, distance=distance, seed=1)
    spark_pred = model.transform(df).select("segment_id").toPandas().segment_id.to_numpy()
    labels = cluster.predict_local(model, x, distance)
    assert (labels == spark_pred).all() and np.bincount(labels).min() == 1  # (the lone point)
    on_driver, in_spark = cluster.score(model, df, x, distance), cluster.score(model, df, None, distance)
    assert on_driver.keys() == in_spark.keys()
    for key, value in in_spark.items():
        assert on_driver[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    models = [cluster.driver_fit(spark, x, 3, distance=distance, seed=s, n_init=1) for s in (1, 2, 3)]
    cols = [f"_s{i}" for i in range(3)]
    pred = df
    for m, c in zip(models, cols):
        pred = m.copy().setPredictionCol(c).transform(pred)
    assert metrics.local_pairwise_ari([cluster.predict_local(m, x, distance) for m in models]) == pytest.approx(
        metrics.pairwise_ari(pred, cols))
    with pytest.raises(ValueError, match="more than one"):
        metrics.local_silhouette(x, np.zeros(len(x), dtype=int))
