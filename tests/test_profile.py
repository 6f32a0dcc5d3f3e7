"""Segment profiles: sizes, c-TF-IDF terms, representative texts, behaviour."""
import numpy as np
import pytest

from jobs.segment_profile import (behaviour, explain_users, name_segments, profile_segments, representative_texts, sizes,
                          top_terms, user_terms)


@pytest.fixture(scope="module")
def data(spark):
    users = spark.createDataFrame(
        [("a1", 0, 0.1, 2, 2), ("a2", 0, 0.3, 2, 1), ("b1", 1, 0.2, 2, 1), ("c1", 2, 0.5, 1, 0)],
        "user_id string, segment_id int, distance double, n_texts long, n_events long")
    texts = spark.createDataFrame([
        ("a1", "red dress soft fabric", [1.0, 0.0]), ("a1", "red dress fits well", [0.8, 0.6]),
        ("a2", "red dress lovely colour", [0.6, 0.8]), ("a2", "fast delivery thanks", [0.0, 1.0]),
        ("b1", "phone battery lasts long", [0.0, 1.0]), ("b1", "phone battery fast delivery", [0.6, 0.8]),
        ("c1", "这件连衣裙面料很舒服 这件连衣裙面料很舒服", [1.0, 0.0]),
    ], "user_id string, text_clean string, embedding array<float>")
    events = spark.createDataFrame([
        ("a1", "purchase", None, "fashion"), ("a1", "rating", 5.0, "fashion"), ("a2", "view", None, "books"),
        ("b1", "view", None, "electronics"),
    ], "user_id string, event_type string, rating double, category string")
    return users, texts, events


def test_sizes(data):
    rows = {r.segment_id: r for r in sizes(data[0]).collect()}
    assert (rows[0].size, rows[0].share, rows[0].mean_distance) == (2, 0.5, pytest.approx(0.2))
    assert rows[0].typical_users == ["a1", "a2"] and rows[0].texts_per_user == 2.0


def test_ctfidf_terms_are_distinctive(data):
    users, texts, _ = data
    rows = {r.segment_id: r for r in top_terms(user_terms(texts), users, n=3).collect()}
    assert rows[0].top_terms[0] in ("red", "dress", "red dress")
    assert "red" in rows[0].top_terms and "phone" in rows[1].top_terms
    # "delivery" appears in both segments: it must rank below each segment's own words.
    assert "delivery" not in rows[0].top_terms[:2]
    # Chinese goes through jieba: whole words, not characters; all tie here, so any 3 of them.
    words = {"这件", "连衣裙", "面料", "舒服"}
    assert len(rows[2].top_terms) == 3 and all(set(t.split()) <= words for t in rows[2].top_terms)
    assert rows[0].term_scores == sorted(rows[0].term_scores, reverse=True)


def test_representative_texts_nearest_to_centroid(data):
    users, texts, _ = data
    centers = np.array([[1.0, 0.0, 9.0], [0.0, 1.0, 9.0], [1.0, 0.0, 9.0]])  # extra dim = behaviour part
    rows = {r.segment_id: r.representative_texts for r in representative_texts(texts, users, dict(enumerate(centers)), 2, 2).collect()}
    assert rows[0] == ["red dress soft fabric", "red dress fits well"]
    assert rows[1] == ["phone battery lasts long", "phone battery fast delivery"]
    assert len(rows[2]) == 1  # duplicates count once


def test_behaviour_profile(data):
    users, _, events = data
    rows = {r.segment_id: r for r in behaviour(events, users, 2).collect()}
    assert rows[0].n_events == 3 and rows[0].purchase_share == pytest.approx(1 / 3) and rows[0].mean_rating == 5.0
    assert rows[0].top_categories == ["fashion", "books"]
    assert rows[0].top_category_lifts[0] == pytest.approx((2 / 3) / (2 / 4))
    assert 2 not in rows  # no events in segment 2


def test_profile_segments_one_row_per_segment(data):
    users, texts, events = data
    centers = np.array([[1.0, 0.0, 0.1], [0.0, 1.0, 0.1], [1.0, 0.0, 0.1]])
    rows = profile_segments(users, texts, user_terms(texts), events, dict(enumerate(centers)), text_dim=2).collect()
    assert [r.segment_id for r in rows] == [0, 1, 2]
    seg2 = rows[2]
    assert seg2.n_events == 0 and seg2.events_per_user == 0 and seg2.top_categories == []
    assert rows[0].centroid == [1.0, 0.0, 0.1] and rows[0].events_per_user == 1.5


def test_explain_users_matched_terms(data):
    users, texts, events = data
    terms = user_terms(texts)
    segs = profile_segments(users, texts, terms, events, dict(enumerate(np.zeros((3, 2)))), text_dim=2)
    rows = {r.user_id: r for r in explain_users(users, terms, segs).collect()}
    assert "red" in rows["a1"].matched_terms and "phone" not in rows["a1"].matched_terms
    assert "phone" in rows["b1"].matched_terms
    assert rows["a1"].matched_terms == sorted(rows["a1"].matched_terms)


def test_segment_names_deterministic_and_unique():
    base = dict(texts_per_user=2.0, n_ratings=10, mean_rating=4.0)
    rows = [
        dict(segment_id=0, size=100, n_events=1000, purchase_share=0.30, events_per_user=10.0,
             top_categories=["electronics"], top_category_lifts=[3.0], top_terms=["battery life", "battery", "camera"],
             **{**base, "texts_per_user": 4.0}),
        dict(segment_id=1, size=100, n_events=200, purchase_share=0.05, events_per_user=2.0,
             top_categories=["books"], top_category_lifts=[1.05], top_terms=["delivery", "price"], **base),
        dict(segment_id=2, size=100, n_events=200, purchase_share=0.05, events_per_user=2.0,
             top_categories=["books"], top_category_lifts=[1.05], top_terms=["delivery", "price"], **base),
    ]
    names = name_segments(rows)
    assert names[0] == "electronics · battery, camera · high purchase · very active"
    assert names[1] == "delivery, price · browses more than buys · light activity #1"
    assert names[2].endswith("#2") and name_segments(rows) == names
