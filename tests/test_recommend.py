"""Per-segment recommendations (jobs/recommend.py): weights, decay, lift, fallback, per-user exactness."""
from __future__ import annotations

import math
import random
from datetime import datetime, timedelta, timezone

import pytest

from jobs import recommend

T0 = datetime(2026, 6, 1, tzinfo=timezone.utc)
WEIGHTS = {"view": 1.0, "click": 2.0, "cart": 4.0, "purchase": 8.0, "rating": 4.0}
EV_SCHEMA = "user_id string, item_id string, event_type string, rating double, ts timestamp"


def _events(spark, rows):
    return spark.createDataFrame(rows, EV_SCHEMA)


def _segs(spark, mapping: dict[str, int]):
    return spark.createDataFrame(sorted(mapping.items()), "user_id string, segment_id int")


def test_interaction_strength_weights_rating_decay(spark):
    rows = [
        ("u1", "a", "purchase", None, T0), ("u1", "a", "view", None, T0),  # log1p(8 + 1)
        ("u1", "b", "rating", 5.0, T0),  # full rating weight
        ("u1", "c", "rating", 1.0, T0),  # bottom of the range: no pull, no row
        ("u1", "d", "rating", None, T0),  # unrated rating: middle of the range
        ("u2", "a", "purchase", None, T0 - timedelta(days=90)),  # one half-life old
        ("u2", "b", "view", None, None),  # undated: not decayed
        ("u2", "e", "cart", None, T0),
    ]
    got = {(r.user_id, r.item_id): r.strength for r in recommend.interactions(
        _events(spark, rows), {**WEIGHTS, "cart": 0.0}, as_of=T0, half_life_days=90.0).collect()}
    assert got == pytest.approx({("u1", "a"): math.log1p(9), ("u1", "b"): math.log1p(4), ("u1", "d"): math.log1p(2),
                                 ("u2", "a"): math.log1p(4), ("u2", "b"): math.log1p(1)})


def _two_taste_data(spark):
    """Segment 0 buys 'shoe-*', segment 1 buys 'phone-*'; 'bag' is bought by everyone
    (most popular overall, distinctive for nobody); 'rare0' by one user of segment 0."""
    rows, segs = [], {}
    for s, prefix in ((0, "shoe"), (1, "phone")):
        for u in range(10):
            uid = f"{prefix}-fan{u}"
            segs[uid] = s
            rows.append((uid, "bag", "purchase", None, T0))
            rows.append((uid, "bag2", "purchase", None, T0))
            for i in range(3 if u < 6 else 1):  # item 0 popular in the segment, 1 and 2 less so
                rows.append((uid, f"{prefix}-{i}", "purchase", None, T0))
    rows.append(("shoe-fan0", "rare0", "purchase", None, T0))
    segs["cold"] = 2  # a segment without events
    return _events(spark, rows), _segs(spark, segs)


def _ranked(scores, segment: int) -> list[str]:
    return [r.item_id for r in scores.where(f"segment_id = {segment}").orderBy("rank").collect()]


def test_item_scores_lift_min_users_and_fallback(spark):
    ev, segs = _two_taste_data(spark)
    inter = recommend.interactions(ev, WEIGHTS)
    lifted = recommend.item_scores(inter, segs, lift_weight=1.0, lift_prior=1.0, min_users=2, fallback_n=2).cache()
    top0, top1 = _ranked(lifted, 0), _ranked(lifted, 1)
    # With lift, a segment's own items come first; each segment's list is its own.
    assert top0[:3] == ["shoe-0", "shoe-1", "shoe-2"] and top1[:3] == ["phone-0", "phone-1", "phone-2"]
    assert "rare0" not in top0  # one user: below min_users
    assert not any(i.startswith("phone") for i in top0)
    # The cold segment gets the overall fallback (the 2 most popular items), with no support.
    cold = lifted.where("segment_id = 2").orderBy("rank").collect()
    assert [r.item_id for r in cold] == ["bag", "bag2"] and all(r.n_users == 0 for r in cold)
    row = lifted.where("segment_id = 0 AND item_id = 'shoe-0'").first()
    assert row.n_users == 10 and row.lift > 1.5
    # Ranks are 1..n per segment.
    for s in (0, 1, 2):
        assert [r["rank"] for r in lifted.where(f"segment_id = {s}").orderBy("rank").collect()] == list(
            range(1, lifted.where(f"segment_id = {s}").count() + 1))
    # Without lift, plain popularity in the segment: the item everybody buys comes first.
    plain = recommend.item_scores(inter, segs, lift_weight=0.0, lift_prior=1.0, min_users=2, fallback_n=2)
    assert _ranked(plain, 0)[0] in ("bag", "bag2") and _ranked(plain, 0)[2] == "shoe-0"
    # A suppressed segment (privacy) shows only the overall fallback.
    hidden = recommend.item_scores(inter, segs, lift_weight=1.0, min_users=2, fallback_n=2, exclude_segments=[0])
    assert _ranked(hidden, 0) == ["bag", "bag2"]
    lifted.unpersist()


def test_recommend_for_users_is_exact(spark):
    """Against a brute force: each user's segment ranking minus everything they consumed, first n."""
    rnd = random.Random(7)
    items = [f"i{j}" for j in range(30)]
    segs = {f"u{u}": u % 3 for u in range(40)}
    rows = []
    for u in segs:
        for item in rnd.sample(items, rnd.randint(0, 20)):  # some users consumed most of the catalogue
            rows.append((u, item, rnd.choice(["view", "click", "purchase"]), None, T0))
    ev, us = _events(spark, rows), _segs(spark, segs)
    scores = recommend.item_scores(recommend.interactions(ev, WEIGHTS), us, min_users=1, fallback_n=30).cache()
    n = 8
    got: dict[str, list[str]] = {}
    for r in recommend.recommend_for_users(us, scores, ev, n).orderBy("user_id", "rank").collect():
        got.setdefault(r.user_id, []).append(r.item_id)
    ranking = {s: _ranked(scores, s) for s in range(3)}
    consumed: dict[str, set] = {}
    for u, item, *_ in rows:
        consumed.setdefault(u, set()).add(item)
    want = {u: [i for i in ranking[s] if i not in consumed.get(u, set())][:n] for u, s in segs.items()}
    assert got == {u: v for u, v in want.items() if v}
    assert any(len(v) == n for v in want.values()) and any(len(consumed.get(u, ())) > 15 for u in segs)
    scores.unpersist()


def test_reason_terms_and_table(spark):
    ev, segs = _two_taste_data(spark)
    scores = recommend.item_scores(recommend.interactions(ev, WEIGHTS), segs, fallback_n=2)
    terms = spark.createDataFrame([
        ("shoe-fan0", "shoe-0", "comfy"), ("shoe-fan1", "shoe-0", "comfy"), ("shoe-fan1", "shoe-0", "sole"),
        ("shoe-fan2", "shoe-0", "ugly"),  # not one of the segment's top terms
        ("phone-fan0", "shoe-0", "comfy"),  # another segment's user: not segment 0's reason
        ("shoe-fan3", None, "comfy"),  # no item
    ], "user_id string, item_id string, term string")
    segments = spark.createDataFrame([(0, ["comfy", "sole"]), (1, ["battery"]), (2, [])],
                                     "segment_id int, top_terms array<string>")
    reasons = recommend.reason_terms(terms, segs, segments, n=3)
    assert {(r.segment_id, r.item_id): r.reason_terms for r in reasons.collect()} == {(0, "shoe-0"): ["comfy", "sole"]}
    table = recommend.segment_recommendations(scores, reasons, top_n=3)
    assert tuple(table.columns) == recommend.REC_COLUMNS
    rows = table.orderBy("segment_id", "rank").collect()
    assert [(r.segment_id, r["rank"]) for r in rows] == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3), (2, 1), (2, 2)]
    by_item = {(r.segment_id, r.item_id): r.reason_terms for r in rows}
    assert by_item[(0, "shoe-0")] == ["comfy", "sole"] and by_item[(1, "phone-0")] == []


def test_blended_lists_mix_segments_by_membership(spark):
    """recommend.blend_memberships: a user 60/40 between two segments gets both segments'
    items, ranked by membership-weighted score, minus what they consumed."""
    scores = spark.createDataFrame(
        [(0, 1, "a", 1.0), (0, 2, "b", 0.5), (1, 1, "x", 1.0), (1, 2, "y", 0.9)],
        "segment_id int, rank int, item_id string, score double")
    users = spark.createDataFrame(
        [("u", 0, [0, 1], [0.6, 0.4]), ("v", 1, [1], [1.0])],
        "user_id string, segment_id int, top_segment_ids array<int>, memberships array<double>")
    consumed = spark.createDataFrame([("u", "b")], "user_id string, item_id string")
    got = recommend.recommend_blended(users, scores, consumed, 3).orderBy("user_id", "rank").collect()
    u = [(r.item_id, round(r.score, 3)) for r in got if r.user_id == "u"]
    assert u == [("a", 0.6), ("x", 0.4), ("y", 0.36)]  # b consumed; 0.4 x 1.0 and 0.4 x 0.9 from segment 1
    assert {r.segment_id for r in got if r.user_id == "u"} == {0}  # the own segment
    assert [r.item_id for r in got if r.user_id == "v"] == ["x", "y"]
