"""The evaluations' baseline segmentations (bench/segmentations.py) run on the job's current code."""
from __future__ import annotations

from datetime import datetime

from bench.segmentations import behaviour_segments, random_segments, tfidf_segments


def _groups(seg) -> dict[str, int]:
    return {r.user_id: r.segment_id for r in seg.collect()}


def test_baselines_separate_two_obvious_groups(spark):
    t = datetime(2026, 1, 1)
    ev = [(f"a{i}", f"shoe{j}", "purchase", None, "fashion", t) for i in range(8) for j in range(3)]
    ev += [(f"b{i}", f"phone{j}", "view", None, "electronics", t) for i in range(8) for j in range(5)]
    events = spark.createDataFrame(ev, "user_id string, item_id string, event_type string, rating double, "
                                       "category string, ts timestamp")
    seg, _, names = behaviour_segments(events, 2)
    g = _groups(seg)
    assert len({g[f"a{i}"] for i in range(8)}) == 1 and len({g[f"b{i}"] for i in range(8)}) == 1
    assert g["a0"] != g["b0"] and "b_cat_fashion" in names
    texts = spark.createDataFrame([(f"a{i}", "comfy shoes soft leather sole") for i in range(8)]
                                  + [(f"b{i}", "phone battery screen camera") for i in range(8)],
                                  "user_id string, text_clean string")
    g = _groups(tfidf_segments(texts, 2)[0])
    assert len({g[f"a{i}"] for i in range(8)}) == 1 and g["a0"] != g["b0"]
    r = _groups(random_segments(events, 3))
    assert len(r) == 16 and set(r.values()) <= {0, 1, 2}
