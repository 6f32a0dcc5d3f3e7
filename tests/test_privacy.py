"""Privacy: pseudonymous user ids (HMAC) and the minimum published segment size."""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable

from jobs import assign, cluster, ingest, privacy
from jobs.clean import prepare_events, prepare_texts
from jobs.cli import segment_main as main
from jobs.segment_users import run
from tests.conftest import local_conf
from tests.test_end_to_end import _string_cells

KEY = "test-key-0123456789-abcdef"  # >= 16 bytes
GROUPS = {  # two large groups and a small one, far apart in wording
    "fashion": (["great dress fit soft fabric", "nice shirt size fit"], 8),
    "tech": (["phone battery screen camera", "laptop battery fast"], 8),
    "food": (["food pizza noodles taste", "recipe taste pizza"], 2),
}


def _table(path) -> pd.DataFrame:
    return DeltaTable(str(path)).to_pandas()


def _inputs(tmp: Path) -> tuple[str, str]:
    texts, events = ["user_id,text,ts,item_id,lang"], ["user_id,item_id,event_type,rating,category,ts"]
    for group, (phrases, n) in GROUPS.items():
        for i in range(n):
            uid = f"{group}.person{i}@corp"  # raw ids that cannot appear inside a hex pseudonym
            # Users of a group share wording but not every text (distinct vectors within a group).
            texts += [f"{uid},{p},2026-01-0{j + 1}T00:00:00Z,i{j},en" for j, p in enumerate(phrases)
                      if j == 0 or i % 2 or n < 3]
            events.append(f"{uid},i{i},purchase,,{group},2026-01-02T00:00:00Z")
    texts.append('"  ",blank id text,2026-01-01,,en')
    (tmp / "texts.csv").write_text("\n".join(texts) + "\n", encoding="utf-8")
    (tmp / "events.csv").write_text("\n".join(events) + "\n", encoding="utf-8")
    return str(tmp / "texts.csv"), str(tmp / "events.csv")


def _conf(tmp: Path, tiny_model: str, **over) -> dict:
    texts, events = _inputs(tmp)
    base = {"output": {"root": str(tmp / "lake"), "report": False}, "embed": {"model_path": tiny_model},
            "input": {"texts": {"path": texts}, "events": {"path": events}},
            "cluster": {"k": 3, "stability_seeds": 0}}
    return local_conf(base, **over)


def test_pseudonyms_are_keyed_hmacs_and_consistent(spark, monkeypatch):
    expected = hmac.new(KEY.encode(), b"alice", hashlib.sha256).hexdigest()[:32]
    assert privacy.pseudonym(" alice ", KEY.encode()) == expected
    assert privacy.pseudonym("alice", b"another-key-0123456789") != expected
    texts = spark.createDataFrame([("alice", "hi there", None, None, None, None), ("  ", "x", None, None, None, None),
                                   (None, None, None, None, None, '{"user_id": "alice", "te')],
                                  "user_id string, text string, ts string, item_id string, lang string, "
                                  "_corrupt_record string")
    out = sorted(prepare_texts(texts, user_key=KEY.encode()).collect(), key=lambda r: r.reason or "")
    assert out[0].user_id == expected and out[0].reason is None
    assert [r.reason for r in out[1:]] == ["malformed_record", "missing_user_id"]  # a blank id is still rejected
    # The malformed raw line could hold the raw id: only its length and hash are kept.
    bad = ingest.to_quarantine(ingest.split_quarantine(prepare_texts(texts, user_key=KEY.encode()))[1], "texts",
                               "t.csv", "r").collect()
    assert {r.reason for r in bad} == {"missing_user_id", "malformed_record"}
    assert not [r for r in bad if "alice" in r.record]
    events = spark.createDataFrame([("alice", "i1", "view", None, None, None, None)],
                                   "user_id string, item_id string, event_type string, rating string, "
                                   "category string, ts string, _corrupt_record string")
    assert prepare_events(events, user_key=KEY.encode()).first().user_id == expected  # joins with texts
    # The key comes from the environment, never from the conf.
    monkeypatch.delenv("SEGLAKE_USER_ID_KEY", raising=False)
    with pytest.raises(privacy.PrivacyError, match="SEGLAKE_USER_ID_KEY"):
        privacy.user_id_key("env:SEGLAKE_USER_ID_KEY")
    monkeypatch.setenv("SEGLAKE_USER_ID_KEY", "short")
    with pytest.raises(privacy.PrivacyError, match="shorter than 16"):
        privacy.user_id_key("env:SEGLAKE_USER_ID_KEY")
    with pytest.raises(Exception, match="privacy.key_source"):
        local_conf({}, input__texts__path="t.csv", privacy__key_source=KEY)


def test_pseudonymous_run_stores_no_raw_id_and_never_the_key(spark, tmp_path, tiny_model, monkeypatch, caplog,
                                                            capsys):
    monkeypatch.setenv("SEGLAKE_USER_ID_KEY", KEY)
    conf = _conf(tmp_path, tiny_model, run_id="p1", privacy__pseudonymize_user_ids=True)
    with caplog.at_level(logging.DEBUG, logger="seglake"):
        run(spark, conf)
    lake = tmp_path / "lake"
    raw_ids = [f"{g}.person{i}@corp" for g, (_, n) in GROUPS.items() for i in range(n)]
    for table in sorted(p.parent.name for p in lake.glob("*/_delta_log")):
        blob = "\n".join(_string_cells(lake / table))
        assert not [u for u in raw_ids if u in blob], table
        assert ".person" not in blob and KEY not in blob, table
    us = _table(lake / "user_segments")
    assert sorted(us.user_id) == sorted(privacy.pseudonym(u, KEY.encode()) for u in raw_ids)
    assert (us.n_events == 1).all()  # texts and events of a user met under the same pseudonym
    logs = caplog.text + "".join(capsys.readouterr())
    assert KEY not in logs and ".person" not in logs
    # seglake-explain finds a user by the raw id when given where the key lives.
    from jobs.explain import main as explain_main

    assert explain_main(["--output", str(lake), "--user", "tech.person3@corp", "--key-source",
                         "env:SEGLAKE_USER_ID_KEY"]) == 0
    assert privacy.pseudonym("tech.person3@corp", KEY.encode()) in capsys.readouterr().out
    assert explain_main(["--output", str(lake), "--user", "tech.person3@corp"]) == 1  # raw ids are not stored
    # The conf snapshot in the runs table names where the key lives, not the key.
    assert "env:SEGLAKE_USER_ID_KEY" in _table(lake / "runs").conf[0]
    # Without the key the job stops before Spark work, naming the variable.
    monkeypatch.delenv("SEGLAKE_USER_ID_KEY")
    code = main(["--texts", conf["input"]["texts"]["path"], "--no-events", "--output", str(tmp_path / "x"),
                 "--model-path", tiny_model, "--conf", str(_write_yaml(tmp_path)), "--k", "2"])
    assert code == 2 and "SEGLAKE_USER_ID_KEY" in capsys.readouterr().err


def _write_yaml(tmp: Path) -> Path:
    p = tmp / "private.yaml"
    p.write_text("privacy:\n  pseudonymize_user_ids: true\n", encoding="utf-8")
    return p


def test_small_segments_are_merged_or_suppressed(spark, tmp_path, tiny_model):
    n_users = sum(n for _, n in GROUPS.values())
    lake = tmp_path / "lake"
    # suppress: the users keep their segments (the two food users form their own, as without a
    # minimum: suppressing changes what is published about a segment, not who is in it) ...
    res = run(spark, _conf(tmp_path, tiny_model, run_id="s1", privacy__min_segment_size=3,
                           privacy__small_segments="suppress"))
    us = _table(lake / "user_segments").query("run_id == 's1'")
    seg_of = dict(zip(us.user_id, us.segment_id))
    food = {seg_of[f"food.person{i}@corp"] for i in range(2)}
    assert len(food) == 1 and res.k == 3
    assert sum(seg_of[u] in food for u in seg_of) == 2

    # ... and 3 segments are published, the small one without terms, texts, users or centroid.
    seg = _table(lake / "segments").query("run_id == 's1'").set_index("segment_id")
    assert len(seg) == 3 and list(seg.index[seg.suppressed]) == sorted(food)
    small = seg.loc[next(iter(food))]
    assert small["size"] == 2 and len(small.top_terms) == 0 and len(small.representative_texts) == 0
    assert len(small.typical_users) == 0 and small.centroid is None and small["name"].startswith("suppressed")
    assert all(len(seg.loc[s].top_terms) > 0 for s in seg.index if s not in food)

    # merge: the food users join their nearest large segment; only large segments are published.
    run(spark, _conf(tmp_path, tiny_model, run_id="s2", privacy__min_segment_size=3))
    seg = _table(lake / "segments").query("run_id == 's2'")
    us = _table(lake / "user_segments").query("run_id == 's2'")
    assert len(seg) == 2 and (seg["size"] >= 3).all() and seg["size"].sum() == n_users
    assert set(us.segment_id) == set(seg.segment_id) and not set(us.second_segment_id.dropna()) & food
    runs = _table(lake / "runs").set_index("run_id")
    params = json.loads(runs.loc["s2", "feature_params"])
    assert params["merged_segments"] == sorted(food) and len(params["allowed_segments"]) == 2
    # seglake-assign uses the same rule: a new food user lands in an allowed segment.
    new = tmp_path / "new" / "texts.csv"
    new.parent.mkdir()
    new.write_text("user_id,text,ts,item_id,lang\nfood.new@corp,food pizza noodles taste,2026-02-01,x,en\n")
    a = assign.run(spark, _conf(tmp_path, tiny_model, run_id="a1", assign__texts__path=str(new),
                                assign__model_run="s2"))
    assert a.counts["users_touched"] == a.counts["users_new"] == 1
    got = _table(lake / "user_segments").query("user_id == 'food.new@corp'")
    assert len(got) == 1 and int(got.segment_id.iloc[0]) in params["allowed_segments"]


def test_assign_with_allowed_segments_never_picks_a_blocked_one(spark):
    from pyspark.ml.clustering import KMeans
    from pyspark.ml.linalg import Vectors

    rng = np.random.default_rng(0)
    pts = np.vstack([rng.normal(c, 0.1, size=(10, 2)) for c in ((0, 0), (5, 0), (0, 5))])
    users = spark.createDataFrame([(f"u{i}", Vectors.dense(p.tolist())) for i, p in enumerate(pts)],
                                  ["user_id", "features"])
    model = KMeans(k=3, seed=1).setPredictionCol("segment_id").fit(users)
    free = cluster.assign(users, model).select("user_id", "segment_id").collect()
    blocked = free[0].segment_id
    allowed = [s for s in range(3) if s != blocked]
    got = cluster.assign(users, model, allowed=allowed).orderBy("user_id").collect()
    assert {r.segment_id for r in got} == set(allowed)
    assert all(r.second_segment_id in allowed for r in got)
    moved = [r for r, f in zip(got, sorted(free, key=lambda r: r.user_id)) if f.segment_id == blocked]
    assert len(moved) == 10 and all(r.distance > 1 for r in moved)
