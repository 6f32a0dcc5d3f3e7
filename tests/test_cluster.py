"""Clustering: which users share a segment, k selection, distances, both algorithms."""
import numpy as np
import pytest
from pyspark.ml.linalg import Vectors

from jobs import cluster


@pytest.fixture(scope="module")
def blobs(spark):
    rng = np.random.default_rng(0)
    centers = np.eye(8)[:4] * 5
    rows = [(f"g{g}-{i}", Vectors.dense(centers[g] + rng.normal(0, 0.3, 8)), g) for g in range(4) for i in range(30)]
    return spark.createDataFrame(rows, ["user_id", "features", "truth"]).cache()


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
    r = rows[0]
    x, c = r.features.toArray(), centers[r.segment_id]
    want = (1 - x @ c / np.linalg.norm(x) / np.linalg.norm(c)) if distance == "cosine" else np.linalg.norm(x - c)
    assert r.distance == pytest.approx(want, rel=1e-6)


def test_sweep_picks_planted_k(blobs):
    k, scores, model = cluster.sweep_k(blobs, 2, 7, n_users=120, sample_size=1000)
    assert k == 4
    assert [s["k"] for s in scores] == [2, 3, 4, 5, 6, 7]
    assert max(scores, key=lambda s: s["silhouette"])["k"] == 4
    assert all(s["cost"] > 0 and s["sample_size"] == 120 for s in scores)
    assert len(model.clusterCenters()) == 4  # the whole population was the sample: model reused


def test_sweep_on_a_sample(blobs):
    k, scores, model = cluster.sweep_k(blobs, 3, 5, n_users=120, sample_size=60, seed=3)
    assert k == 4 and 30 <= scores[0]["sample_size"] <= 90
    assert model is None  # fitted on a sample only: the caller refits on everyone


def test_restarts_keep_the_lowest_cost(blobs):
    singles = [cluster.fit(blobs, 6, seed=s).summary.trainingCost for s in (7, 8, 9)]
    best = cluster.fit(blobs, 6, seed=7, n_init=3).summary.trainingCost
    assert best == pytest.approx(min(singles))


def test_silhouette_high_for_planted_groups(blobs):
    pred = cluster.assign(blobs, cluster.fit(blobs, 4), "euclidean")
    assert cluster.silhouette(pred) > 0.8
