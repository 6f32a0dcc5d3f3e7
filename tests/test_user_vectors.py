"""User state (pooled texts + behaviour aggregates), running updates, and fusion into features."""
import math
from datetime import datetime

import numpy as np
import pytest

from jobs.user_vectors import (build_user_vectors, combine_state, features, raw_behaviour, standardise,
                               user_state)

SCHEMA = "user_id string, embedding array<float>, ts timestamp, lang string"
EVENTS = "user_id string, event_type string, rating double, category string, ts timestamp"
TEXT_ONLY = {"text_dim": 2, "behaviour_weight": 0.0, "behaviour_features": []}


def _texts(spark, rows):
    return spark.createDataFrame([r + (None,) * (4 - len(r)) for r in rows], SCHEMA)


def _by_user(df):
    return {r.user_id: r for r in df.collect()}


def _vec(rows, user):
    return np.array(rows[user].features.toArray())


def test_mean_pooling_is_normalised_mean(spark):
    state = user_state(_texts(spark, [("a", [1.0, 0.0]), ("a", [0.0, 1.0]), ("b", [0.6, 0.8])]), None)
    st = _by_user(state)
    assert st["a"].n_texts == 2 and st["a"].text_weight == 2.0
    np.testing.assert_allclose(st["a"].text_mean, [0.5, 0.5], atol=1e-9)  # the plain mean is stored
    rows = _by_user(features(state, TEXT_ONLY))
    np.testing.assert_allclose(_vec(rows, "a"), [math.sqrt(0.5), math.sqrt(0.5)], atol=1e-6)
    np.testing.assert_allclose(_vec(rows, "b"), [0.6, 0.8], atol=1e-6)


def test_recency_pooling_weights_recent_texts(spark):
    old, new = datetime(2026, 1, 1), datetime(2026, 1, 31)  # 30 days apart
    state = user_state(_texts(spark, [("a", [1.0, 0.0], old), ("a", [0.0, 1.0], new)]), None,
                       pooling="recency", half_life_days=30)
    v = features(state, TEXT_ONLY).first().features.toArray()
    # Weights 0.5 (old) and 1 (new) -> direction (0.5, 1) normalised.
    np.testing.assert_allclose(v, np.array([0.5, 1.0]) / math.hypot(0.5, 1.0), atol=1e-6)
    assert state.first().text_weight == pytest.approx(1.5)


def test_main_language_is_the_most_frequent(spark):
    texts = _texts(spark, [("a", [1.0, 0.0], None, "zh"), ("a", [1.0, 0.0], None, "en"),
                           ("a", [1.0, 0.0], None, "zh"), ("b", [1.0, 0.0], None, "en"),
                           ("b", [1.0, 0.0], None, "zh"), ("c", [1.0, 0.0])])
    rows = _by_user(features(user_state(texts, None), TEXT_ONLY))
    assert (rows["a"].lang, rows["b"].lang, rows["c"].lang) == ("zh", "en", None)  # tie: alphabetical


def test_behaviour_features_and_standardise(spark):
    ev = spark.createDataFrame([
        ("a", "view", None, "fashion", None), ("a", "purchase", None, "fashion", None),
        ("a", "rating", 5.0, "books", None), ("b", "view", None, "books", None),
    ], EVENTS)
    raw, names = raw_behaviour(user_state(None, ev), ["fashion", "books"])
    a = _by_user(raw)["a"]
    assert a.n_events == 3 and a.b_view == pytest.approx(math.log1p(1)) and a.b_cart == 0.0
    assert a.b_cat_fashion == pytest.approx(2 / 3) and a.b_mean_rating == 5.0
    z, stats = standardise(raw, names)
    rows = _by_user(z)
    assert rows["a"].b_cat_fashion == pytest.approx(1.0) and rows["b"].b_cat_fashion == pytest.approx(-1.0)
    assert rows["b"].b_mean_rating == 0.0  # no ratings -> population mean
    assert stats["b_cat_fashion"] == pytest.approx((1 / 3, 1 / 3))


def test_fusion_rule_and_users_missing_a_side(spark):
    texts = _texts(spark, [("a", [1.0, 0.0]), ("b", [0.0, 1.0]), ("c", [0.0, 1.0])])
    ev = spark.createDataFrame([("a", "view", None, "x", None), ("a", "view", None, "x", None),
                                ("b", "purchase", None, "y", None), ("d", "purchase", None, "y", None)], EVENTS)
    users, params, state = build_user_vectors(texts, ev, behaviour_weight=0.36, n_categories=2, text_dim=2)
    rows = _by_user(users)
    assert sorted(rows) == ["a", "b", "c", "d"]  # text-only c and events-only d kept
    assert (rows["c"].n_events, rows["d"].n_texts) == (0, 0)
    n_b = len(params["behaviour_features"])
    a, c, d = _vec(rows, "a"), _vec(rows, "c"), _vec(rows, "d")
    assert a.shape == (2 + n_b,)
    np.testing.assert_allclose(a[:2], [0.8, 0.0], atol=1e-6)  # sqrt(1 - 0.36) * unit text vector
    np.testing.assert_allclose(c[2:], 0.0)  # no events -> average behaviour (z = 0)
    np.testing.assert_allclose(d[:2], 0.0)  # no texts -> zero text part
    # Behaviour part is sqrt(w) * z / sqrt(d_b), z standardised over the users with events.
    raw, names = raw_behaviour(state.where("n_events > 0"), params["categories"])
    zrow = _by_user(standardise(raw, names)[0])["a"]
    expected = [zrow[c] * 0.6 / math.sqrt(n_b) for c in params["behaviour_features"]]
    np.testing.assert_allclose(a[2:], expected, atol=1e-6)


def test_without_events_only_text(spark):
    users, _, _ = build_user_vectors(_texts(spark, [("a", [3.0, 4.0])]), None, behaviour_weight=0.5, text_dim=2)
    np.testing.assert_allclose(users.first().features.toArray(), [0.6 * math.sqrt(0.5), 0.8 * math.sqrt(0.5)])


@pytest.mark.parametrize("pooling", ["mean", "recency"])
def test_running_update_equals_pooling_everything(spark, pooling):
    """state(old) combined with state(new) == state(old + new): the assign job's running mean."""
    rng = np.random.default_rng(1)
    day = 86400

    def rows(user_days):
        return [(u, rng.normal(size=3).tolist(), datetime.fromtimestamp(1.7e9 + d * day), lang)
                for u, d, lang in user_days]

    old_rows = rows([("a", 0, "en"), ("a", 40, "en"), ("b", 5, "zh"), ("c", 1, "en")])
    new_rows = rows([("a", 20, "zh"), ("a", 90, "zh"), ("b", 2, "zh"), ("d", 3, "en")])  # late, newer, new user
    old_ev = [("a", "view", None, "x", None), ("c", "rating", 4.0, "y", None)]
    new_ev = [("a", "rating", 2.0, "x", None), ("e", "purchase", None, "y", None)]
    kw = dict(pooling=pooling, half_life_days=30.0)
    old = user_state(_texts(spark, old_rows), spark.createDataFrame(old_ev, EVENTS), updated_by="full", **kw)
    new = user_state(_texts(spark, new_rows), spark.createDataFrame(new_ev, EVENTS), updated_by="b1", **kw)
    combined = _by_user(combine_state(old, new, updated_by="b1", **kw))
    everything = _by_user(user_state(_texts(spark, old_rows + new_rows),
                                     spark.createDataFrame(old_ev + new_ev, EVENTS), **kw))
    assert sorted(combined) == ["a", "b", "d", "e"]  # c did not change
    for u, want in everything.items():
        if u == "c":
            continue
        got = combined[u]
        assert got.updated_by == "b1"
        for col in ("n_texts", "last_text_ts", "lang_counts", "n_events", "event_counts", "category_counts",
                    "rating_count", "last_event_ts"):
            assert got[col] == want[col], (u, col)
        assert got.rating_sum == pytest.approx(want.rating_sum)
        assert got.text_weight == pytest.approx(want.text_weight, rel=1e-12)
        if want.text_mean is None:
            assert got.text_mean is None
        else:
            np.testing.assert_allclose(got.text_mean, want.text_mean, rtol=1e-9, atol=1e-12)


def test_running_update_is_not_applied_twice(spark):
    old = user_state(_texts(spark, [("a", [1.0, 0.0])]), None, updated_by="full")
    batch = user_state(_texts(spark, [("a", [0.0, 1.0])]), None, updated_by="b1")
    once = combine_state(old, batch, updated_by="b1")
    again = _by_user(combine_state(once, batch, updated_by="b1"))  # a crashed batch, rerun
    assert again["a"].n_texts == 2
    np.testing.assert_allclose(again["a"].text_mean, [0.5, 0.5])


def test_language_centring_removes_each_languages_direction(spark):
    """Two languages far apart (English users near e1, Chinese near e2): centred, each
    language's text vectors have mean 0 and mean squared norm 1, so users of the smaller
    language are as far apart as the larger's; one language alone is left as it is (auto),
    and `language_centring: off` gives exactly the plain unit vectors."""
    from jobs.user_vectors import fusion_params, language_means

    rng = np.random.default_rng(0)
    rows = [(f"en{i}", [float(v) for v in np.r_[1.0, 0.0, rng.normal(0, 0.3, 2)]], None, "en") for i in range(12)]
    rows += [(f"zh{i}", [float(v) for v in np.r_[0.0, 1.0, rng.normal(0, 0.05, 2)]], None, "zh") for i in range(8)]
    state = user_state(_texts(spark, rows), None).cache()
    assert language_means(state, 5, "auto").keys() == {"en", "zh"}
    assert language_means(state, 10, "auto") == {}  # only English has 10 text users: not mixed
    assert language_means(state, 10, "on").keys() == {"en"}
    assert language_means(state, 5, "off") == {}

    plain = _by_user(features(state, {**TEXT_ONLY, "text_dim": 4}))
    params = fusion_params(state, None, behaviour_weight=0.0, text_dim=4, language_centring="auto",
                           language_min_users=5)
    centred = _by_user(features(state, params))
    for lang in ("en", "zh"):
        x = np.vstack([_vec(centred, u) for u in centred if u.startswith(lang)])
        np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-6)
        assert (x * x).sum(1).mean() == pytest.approx(1.0, rel=1e-6)
    # Plain, the Chinese users sit within 0.1 of each other; centred they spread like the English.
    zh_plain = np.vstack([_vec(plain, u) for u in plain if u.startswith("zh")])
    assert zh_plain.std(0).sum() < 0.1
    off = fusion_params(state, None, behaviour_weight=0.0, text_dim=4, language_centring="off")
    assert off["language_means"] == {}
    same = _by_user(features(state, off))
    assert all(np.array_equal(_vec(same, u), _vec(plain, u)) for u in plain)
