"""Pooling and fusion of text embeddings with behaviour."""
import math
from datetime import datetime

import numpy as np
import pytest

from jobs.user_vectors import behaviour_features, build_user_vectors, pool_texts, standardise

SCHEMA = "user_id string, embedding array<float>, ts timestamp"


def _vec(rows, user):
    return np.array(next(r for r in rows if r.user_id == user).features.toArray())


def test_mean_pooling_is_normalised_mean(spark):
    df = spark.createDataFrame([("a", [1.0, 0.0], None), ("a", [0.0, 1.0], None), ("b", [0.6, 0.8], None)], SCHEMA)
    rows = {r.user_id: r for r in pool_texts(df).collect()}
    np.testing.assert_allclose(rows["a"].text_vec, [math.sqrt(0.5), math.sqrt(0.5)], atol=1e-6)
    np.testing.assert_allclose(rows["b"].text_vec, [0.6, 0.8], atol=1e-6)
    assert rows["a"].n_texts == 2


def test_recency_pooling_weights_recent_texts(spark):
    old, new = datetime(2026, 1, 1), datetime(2026, 1, 31)  # 30 days apart
    df = spark.createDataFrame([("a", [1.0, 0.0], old), ("a", [0.0, 1.0], new)], SCHEMA)
    v = pool_texts(df, "recency", half_life_days=30).first().text_vec
    # Weights 0.5 (old) and 1 (new) -> direction (0.5, 1) normalised.
    np.testing.assert_allclose(v, np.array([0.5, 1.0]) / math.hypot(0.5, 1.0), atol=1e-6)


def test_behaviour_features_and_standardise(spark):
    ev = spark.createDataFrame([
        ("a", "view", None, "fashion"), ("a", "purchase", None, "fashion"), ("a", "rating", 5.0, "books"),
        ("b", "view", None, "books"),
    ], "user_id string, event_type string, rating double, category string")
    raw, names = behaviour_features(ev, ["fashion", "books"])
    a = {r.user_id: r for r in raw.collect()}["a"]
    assert a.n_events == 3 and a.b_view == pytest.approx(math.log1p(1)) and a.b_cart == 0.0
    assert a.b_cat_fashion == pytest.approx(2 / 3) and a.b_mean_rating == 5.0
    z, stats = standardise(raw, names)
    rows = {r.user_id: r for r in z.collect()}
    assert rows["a"].b_cat_fashion == pytest.approx(1.0) and rows["b"].b_cat_fashion == pytest.approx(-1.0)
    assert rows["b"].b_mean_rating == 0.0  # no ratings -> population mean
    assert stats["b_cat_fashion"] == pytest.approx((1 / 3, 1 / 3))


def test_fusion_rule_and_users_missing_a_side(spark):
    texts = spark.createDataFrame([("a", [1.0, 0.0], None), ("b", [0.0, 1.0], None), ("c", [0.0, 1.0], None)], SCHEMA)
    ev = spark.createDataFrame([("a", "view", None, "x"), ("a", "view", None, "x"), ("b", "purchase", None, "y"),
                                ("d", "purchase", None, "y")],
                               "user_id string, event_type string, rating double, category string")
    users, params = build_user_vectors(texts, ev, behaviour_weight=0.36, n_categories=2, text_dim=2)
    rows = users.collect()
    assert sorted(r.user_id for r in rows) == ["a", "b", "c", "d"]  # text-only c and events-only d kept
    by = {r.user_id: r for r in rows}
    assert (by["c"].n_events, by["d"].n_texts) == (0, 0)
    n_b = len(params["behaviour_features"])
    a, c, d = _vec(rows, "a"), _vec(rows, "c"), _vec(rows, "d")
    assert a.shape == (2 + n_b,)
    np.testing.assert_allclose(a[:2], [0.8, 0.0], atol=1e-6)  # sqrt(1 - 0.36) * unit text vector
    np.testing.assert_allclose(c[2:], 0.0)  # no events -> average behaviour (z = 0)
    np.testing.assert_allclose(d[:2], 0.0)  # no texts -> zero text part
    # Behaviour part is sqrt(w) * z / sqrt(d_b).
    zrow = standardise(*behaviour_features(ev, params["categories"]))[0].where("user_id = 'a'").first()
    expected = [zrow[c] * 0.6 / math.sqrt(n_b) for c in params["behaviour_features"]]
    np.testing.assert_allclose(a[2:], expected, atol=1e-6)


def test_without_events_only_text(spark):
    texts = spark.createDataFrame([("a", [3.0, 4.0], None)], SCHEMA)
    users, _ = build_user_vectors(texts, None, behaviour_weight=0.5, text_dim=2)
    np.testing.assert_allclose(users.first().features.toArray(), [0.6 * math.sqrt(0.5), 0.8 * math.sqrt(0.5)])
