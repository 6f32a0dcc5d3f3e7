"""Stable segment ids: matching a run's segments to the previous run's (jobs/segment_ids.py).

The cases are built inline as overlap matrices: overlap[i, j] = users in this run's segment i
(a model index) and in the previous run's segment prev_ids[j]."""
from __future__ import annotations

import numpy as np
import pytest

from jobs import config
from jobs.segment_ids import fresh, match, space_change, space_signature, text_block

BASE = {"input": {"texts": {"path": "t.csv"}}}
PREV_IDS = [3, 5, 9]  # published ids of the previous run (not 0..k-1: ids outlive refits)


def _rows(m):
    return {r["segment_id"]: r for r in m.lineage}


def test_a_permuted_refit_keeps_every_id():
    # The same three groups, found in another order.
    overlap = np.array([[0, 100, 0], [0, 0, 80], [60, 0, 0]])
    m = match(overlap, overlap.sum(1), PREV_IDS, {3: 60, 5: 100, 9: 80}, None, next_id=10, previous_run_id="r1")
    assert m.ids == [5, 9, 3]
    assert {r["relation"] for r in m.lineage} == {"same"}
    assert m.kept_share == 1.0 and m.next_id == 10


def test_a_split_keeps_the_id_on_the_larger_part_and_gives_the_other_a_fresh_one():
    # Previous 5 (100 users) split into this run's 0 (70) and 2 (30).
    overlap = np.array([[0, 70, 0], [0, 0, 80], [0, 30, 0], [60, 0, 0]])
    m = match(overlap, overlap.sum(1), PREV_IDS, {3: 60, 5: 100, 9: 80}, None, next_id=10, previous_run_id="r1")
    assert m.ids[0] == 5 and m.ids[1] == 9 and m.ids[3] == 3
    assert m.ids[2] == 10  # fresh, above every id ever published
    rows = _rows(m)
    assert rows[10]["relation"] == "split" and rows[10]["previous_ids"] == [5]
    assert rows[10]["previous_shares"] == [pytest.approx(0.3)]
    assert rows[5]["relation"] == "same"
    assert m.kept_share == pytest.approx((70 + 80 + 60) / 240)


def test_a_merge_keeps_the_larger_parent_and_retires_the_other():
    # Previous 3 (60) and 5 (100) went together into this run's 0.
    overlap = np.array([[60, 100, 0], [0, 0, 80]])
    m = match(overlap, overlap.sum(1), PREV_IDS, {3: 60, 5: 100, 9: 80}, None, next_id=10, previous_run_id="r1")
    assert m.ids == [5, 9]
    rows = _rows(m)
    assert rows[5]["relation"] == "merged" and rows[5]["previous_ids"] == [5, 3]
    assert rows[3]["relation"] == "retired" and rows[3]["successor_ids"] == [5]
    assert rows[3]["successor_shares"] == [pytest.approx(1.0)]
    assert rows[9]["relation"] == "same"


def test_new_users_make_a_new_segment_and_a_vanished_one_is_retired():
    # This run's 1 holds only new users (no overlap); previous 9's users are gone.
    overlap = np.array([[60, 0, 0], [0, 0, 0], [0, 100, 0]])
    sizes = np.array([60, 40, 100])
    m = match(overlap, sizes, PREV_IDS, {3: 60, 5: 100, 9: 80}, None, next_id=12, previous_run_id="r1")
    assert m.ids == [3, 12, 5]
    rows = _rows(m)
    assert rows[12]["relation"] == "new" and rows[12]["previous_ids"] == [] and rows[12]["size"] == 40
    assert rows[9]["relation"] == "retired" and rows[9]["successor_ids"] == []


def test_few_common_users_match_by_centroid_similarity_only_when_close():
    # This run's 1 has 3 returning users (too few to judge by members): its centroid decides.
    overlap = np.array([[50, 0], [0, 1]])
    sizes = np.array([50, 40])
    close = np.array([[0.99, 0.1], [0.1, 0.95]])
    m = match(overlap, sizes, [0, 1], {0: 50, 1: 40}, close, next_id=2, min_overlap=0.5, min_common_users=5)
    assert m.ids == [0, 1]
    far = np.array([[0.99, 0.1], [0.1, 0.5]])
    overlap_far = np.array([[50, 0], [0, 0]])
    m = match(overlap_far, sizes, [0, 1], {0: 50, 1: 40}, far, next_id=2, min_overlap=0.5, min_common_users=5)
    assert m.ids == [0, 2]
    assert _rows(m)[1]["relation"] == "retired"


def test_similarity_breaks_a_tie_in_members():
    overlap = np.array([[50, 50], [50, 50]])
    sim = np.array([[0.2, 0.9], [0.9, 0.2]])
    m = match(overlap, overlap.sum(1), [7, 8], {7: 100, 8: 100}, sim, next_id=9, min_overlap=0.3)
    assert m.ids == [8, 7]


def test_ids_are_never_reused_after_a_retirement():
    # The previous run retired nothing but ids up to 14 were published before (next_id 15).
    overlap = np.array([[10, 0], [0, 0]])
    m = match(overlap, np.array([10, 10]), [0, 1], {0: 10, 1: 10}, None, next_id=15)
    assert m.ids == [0, 15] and m.next_id == 16


def test_fresh_ids_and_first_run():
    first = fresh(np.array([5, 6, 7]), 0)
    assert first.ids == [0, 1, 2] and first.next_id == 3 and "first run" in first.note
    changed = fresh(np.array([5, 6]), 12, "r1", "embed_model_id 'a' -> 'b'")
    assert changed.ids == [12, 13] and changed.next_id == 14
    assert "not matched to run r1" in changed.note and "embed_model_id" in changed.note
    assert [r["size"] for r in changed.lineage] == [5, 6] and {r["relation"] for r in changed.lineage} == {"new"}


def test_a_changed_model_space_is_named():
    params = {"text_dim": 4, "behaviour_weight": 0.3, "pooling": "mean"}
    a = space_signature("m1", params, "euclidean")
    assert space_change(a, space_signature("m1", dict(params), "euclidean")) is None
    assert "lexical_weight 0.0 -> 0.2" in space_change(a, space_signature("m1", {**params, "lexical_weight": 0.2},
                                                                          "euclidean"))
    assert "embed_model_id" in space_change(a, space_signature("m2", params, "euclidean"))


def test_text_block_undoes_the_fusion_weight():
    params = {"text_dim": 2, "behaviour_weight": 0.36, "lexical_weight": 0.0}
    fused = np.array([0.8 * 0.6, 0.8 * 0.8, 1.0, 2.0])  # sqrt(1 - 0.36) = 0.8
    assert text_block(fused, params) == pytest.approx([0.6, 0.8])


def test_conf_section_is_checked():
    with pytest.raises(config.ConfigError, match="segment_ids.min_overlap"):
        config.load(None, {**BASE, "segment_ids": {"min_overlap": 2}})
    with pytest.raises(config.ConfigError, match="segment_ids.nope"):
        config.load(None, {**BASE, "segment_ids": {"nope": 1}})
    assert config.load(None, BASE)["segment_ids"]["stable"] is True


def test_match_run_relabels_a_permuted_refit_on_spark(spark):
    """The Spark side: overlaps from the two runs' users, centroids' text blocks compared, and
    the model indexes of user_segments' two segment columns replaced by the published ids."""
    from jobs.config import SegmentIdsConf
    from jobs.segment_ids import Previous, match_run, relabel

    users = [(f"u{i}", i % 3) for i in range(30)]  # this run: model index = i % 3
    assigned = spark.createDataFrame([(u, s, (s + 1) % 3) for u, s in users],
                                     "user_id string, segment_id int, second_segment_id int")
    # The previous run had the same groups under ids 7, 4 and 11 (index 0 -> 7, 1 -> 4, 2 -> 11),
    # and one more user, gone now.
    old = {0: 7, 1: 4, 2: 11}
    prev_users = spark.createDataFrame([(u, old[s]) for u, s in users] + [("gone", 4)], "user_id string, segment_id int")
    params = {"text_dim": 2, "behaviour_weight": 0.0, "lexical_weight": 0.0}
    centers = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    prev = Previous("r1", prev_users, {7: 10, 4: 11, 11: 10}, {7: centers[0], 4: centers[1], 11: centers[2]},
                    next_id=12, space_change=None)
    m = match_run(assigned, centers, params, prev, SegmentIdsConf())
    assert m.ids == [7, 4, 11] and m.kept_share == 1.0 and m.next_id == 12
    out = relabel(assigned, m.ids, "segment_id", "second_segment_id").collect()
    assert {(r.user_id, r.segment_id, r.second_segment_id) for r in out} == {
        (u, old[s], old[(s + 1) % 3]) for u, s in users}
    # A changed space starts fresh ids above every id published so far, and says why.
    changed = match_run(assigned, centers, params, Previous(**{**prev.__dict__, "space_change": "distance"}),
                        SegmentIdsConf())
    assert changed.ids == [12, 13, 14] and "distance" in changed.note


def test_a_segment_merged_away_by_privacy_keeps_its_id_reserved_and_is_retired():
    # Model index 2 has no users (privacy merged its 2 users into index 0); its centroid is
    # the previous small segment's (id 5): that id stays with the index, the segment is retired.
    overlap = np.array([[30, 2], [0, 0], [0, 0]])
    sizes = np.array([32, 20, 0])
    sim = np.array([[0.99, 0.2], [0.1, 0.1], [0.2, 0.98]])
    m = match(overlap, sizes, [4, 5], {4: 30, 5: 2}, sim, next_id=6)
    assert m.ids == [4, 6, 5]
    rows = _rows(m)
    assert set(rows) == {4, 5, 6} and rows[5]["relation"] == "retired" and rows[5]["successor_ids"] == [4]
    assert rows[6]["relation"] == "new" and rows[4]["relation"] == "same"
    assert all(r["size"] > 0 for r in m.lineage if r["relation"] != "retired")
