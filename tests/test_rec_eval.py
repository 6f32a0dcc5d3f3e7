"""jobs.rec_eval: temporal split, relevance protocol and ranking metrics (checked by hand and
against MLlib's RankingEvaluator)."""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from math import log2

import pytest
from pyspark.sql import functions as F

from jobs.rec_eval import event_cutoff, per_user_split, ranking_metrics, relevant_items, temporal_split

RECS = "user_id string, rank int, item_id string"
PAIRS = "user_id string, item_id string"
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def test_hand_computed_metrics(spark):
    relevant = spark.createDataFrame([("u1", "a"), ("u1", "b"), ("u1", "c"), ("u2", "d"), ("u3", "e"),
                                      ("u3", None)], PAIRS)  # null items are not relevance
    recs = spark.createDataFrame([
        ("u1", 1, "a"), ("u1", 2, "x"), ("u1", 3, "b"), ("u1", 4, "c"),  # rank 4 > max(ks): ignored
        ("u2", 1, "y"), ("u2", 2, "d"), ("u2", 3, "z"),
        ("u4", 1, "a"), ("u4", 2, "q"), ("u4", 3, "c"),  # u4 has no relevant items: ignored
    ], RECS)  # u3 has no recs: scores 0 and still counts
    m = ranking_metrics(recs, relevant, ks=(2, 3), catalogue_size=10)

    # u1: hits a@1 (k=2), a@1 + b@3 (k=3), |rel| = 3; u2: hit d@2, |rel| = 1; u3: nothing.
    expected = {
        "users": 3,
        "precision@2": (1 / 2 + 1 / 2 + 0) / 3,
        "recall@2": (1 / 3 + 1 / 1 + 0) / 3,
        "ndcg@2": ((1 / log2(2)) / (1 / log2(2) + 1 / log2(3)) + (1 / log2(3)) / (1 / log2(2)) + 0) / 3,
        "hit_rate@2": (1 + 1 + 0) / 3,
        "coverage@2": 4 / 10,  # a, x, y, d (u4's q is not an evaluated user's)
        "precision@3": (2 / 3 + 1 / 3 + 0) / 3,
        "recall@3": (2 / 3 + 1 / 1 + 0) / 3,
        "ndcg@3": ((1 / log2(2) + 1 / log2(4)) / (1 / log2(2) + 1 / log2(3) + 1 / log2(4))
                   + (1 / log2(3)) / (1 / log2(2)) + 0) / 3,
        "hit_rate@3": (1 + 1 + 0) / 3,
        "coverage@3": 6 / 10,  # + b, z
    }
    assert {k for k in m if not k.endswith("_se")} == expected.keys()
    assert m["users"] == 3
    # Standard error of the mean: hit_rate@2 per user is 1, 1, 0 -> sample std sqrt(1/3), / sqrt(3).
    assert m["hit_rate@2_se"] == pytest.approx(1 / 3, abs=1e-12)
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-12), key
    assert ranking_metrics(recs, relevant, ks=(2,))["coverage@2"] is None


def test_agrees_with_mllib_ranking_evaluator(spark):
    from pyspark.ml.evaluation import RankingEvaluator

    rng = random.Random(7)
    items = [f"i{j}" for j in range(40)]
    recs_rows, rel_rows, eval_rows = [], [], []
    for u in range(50):
        ranked = rng.sample(items, 10)
        rel = rng.sample(items, rng.randint(1, 12))
        recs_rows += [(f"u{u}", r + 1, item) for r, item in enumerate(ranked)]
        rel_rows += [(f"u{u}", item) for item in rel]
        eval_rows.append(([float(i[1:]) for i in ranked], [float(i[1:]) for i in rel]))
    ks = (1, 3, 5, 10, 20)  # 20 > list length: precision still divides by k in both
    ours = ranking_metrics(spark.createDataFrame(recs_rows, RECS), spark.createDataFrame(rel_rows, PAIRS), ks=ks)
    assert ours["users"] == 50

    frame = spark.createDataFrame(eval_rows, "prediction array<double>, label array<double>").cache()
    for k in ks:
        for ours_name, mllib_name in (("precision", "precisionAtK"), ("recall", "recallAtK"), ("ndcg", "ndcgAtK")):
            theirs = RankingEvaluator(metricName=mllib_name, k=k).evaluate(frame)
            assert ours[f"{ours_name}@{k}"] == pytest.approx(theirs, abs=1e-9), (ours_name, k)
    frame.unpersist()


def test_duplicate_or_bad_rank_raises(spark):
    relevant = spark.createDataFrame([("u1", "a")], PAIRS)
    dup = spark.createDataFrame([("u1", 1, "a"), ("u1", 1, "b")], RECS)
    with pytest.raises(ValueError, match="rank"):
        ranking_metrics(dup, relevant, ks=(2,))
    with pytest.raises(ValueError, match="rank"):
        ranking_metrics(spark.createDataFrame([("u1", 0, "a")], RECS), relevant, ks=(2,))
    # Duplicates beyond max(ks) are never looked at.
    late = spark.createDataFrame([("u1", 1, "a"), ("u1", 5, "b"), ("u1", 5, "c")], RECS)
    assert ranking_metrics(late, relevant, ks=(2,))["hit_rate@2"] == 1.0


def test_event_cutoff_and_temporal_split(spark):
    rows = [(f"u{i % 3}", f"i{i}", T0 + timedelta(hours=i, microseconds=7)) for i in range(10)]
    rows += [("u0", "undated", None), ("u1", "undated2", None)]  # null ts: no weight in the quantile
    events = spark.createDataFrame(rows, "user_id string, item_id string, ts timestamp")

    cutoff = event_cutoff(events, 0.8)
    assert cutoff.tzinfo is not None
    assert cutoff == T0 + timedelta(hours=7, microseconds=7)  # the 8th of 10 dated events, to the microsecond

    train, test = temporal_split(events, cutoff)
    assert sorted(r["item_id"] for r in test.collect()) == ["i7", "i8", "i9"]  # ts == cutoff goes to test
    assert {r["item_id"] for r in train.collect()} == {f"i{i}" for i in range(7)} | {"undated", "undated2"}
    assert train.count() + test.count() == events.count()

    with pytest.raises(ValueError):
        event_cutoff(events.where(F.col("ts").isNull()))


def test_relevant_items_protocol(spark):
    schema = "user_id string, item_id string, ts timestamp"
    train = spark.createDataFrame([("u1", "a", T0), ("u1", "b", T0), ("u2", None, T0)], schema)
    test = spark.createDataFrame([
        ("u1", "a", T0), ("u1", "c", T0), ("u1", "c", T0),  # a re-consumed: not new; c twice: once
        ("u2", "a", T0), ("u2", None, T0),  # u2 had a (dateless-item) train event: counts as known user
        ("u3", "d", T0),  # no train events: cold user, not evaluated
    ], schema)
    got = sorted(tuple(r) for r in relevant_items(train, test).collect())
    assert got == [("u1", "c"), ("u2", "a")]
    assert relevant_items(train, test).columns == ["user_id", "item_id"]


def test_per_user_split_holds_out_each_users_latest(spark):
    from datetime import datetime, timedelta

    t0 = datetime(2026, 1, 1)
    rows = [("u1", f"i{i}", t0 + timedelta(days=i)) for i in range(10)] + [("u2", "only", t0)]
    train, test = per_user_split(spark.createDataFrame(rows, "user_id string, item_id string, ts timestamp"), 0.2)
    assert sorted(r.item_id for r in test.collect()) == ["i8", "i9"]
    assert train.count() == 9 and "only" in {r.item_id for r in train.collect()}  # one row: train
