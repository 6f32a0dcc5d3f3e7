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
