"""Privacy: pseudonymous user ids (HMAC) and the minimum published segment size."""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

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


def _pseudonym(raw: str) -> str:
    return privacy.pseudonym(raw, KEY.encode())


class _Records(logging.Handler):
    """Every record's message, from DEBUG up."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def private_run(spark, tiny_model, tmp_path_factory) -> SimpleNamespace:
    """One pseudonymous run (s1) with a minimum published segment size of 3 in suppress mode,
    read by the pseudonym checks and the small-segment checks below (which copy its lake to go
    on). Its log records (every logger's, the seglake logger's from DEBUG up, as caplog would
    take them) and prints are kept for the key checks."""
    tmp = tmp_path_factory.mktemp("private")
    env = pytest.MonkeyPatch()
    env.setenv("SEGLAKE_USER_ID_KEY", KEY)
    logger, handler = logging.getLogger("seglake"), _Records()
    level, out = logger.level, io.StringIO()
    logging.getLogger().addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        conf = _conf(tmp, tiny_model, run_id="s1", privacy__pseudonymize_user_ids=True,
                     privacy__min_segment_size=3, privacy__small_segments="suppress")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            res = run(spark, conf)
    finally:
        logging.getLogger().removeHandler(handler)
        logger.setLevel(level)
        env.undo()
    return SimpleNamespace(tmp=tmp, lake=tmp / "lake", conf=conf, res=res, logs="\n".join(handler.lines) + out.getvalue())


def test_pseudonymous_run_stores_no_raw_id_and_never_the_key(private_run, tiny_model, monkeypatch, capsys):
    lake, conf = private_run.lake, private_run.conf
    raw_ids = [f"{g}.person{i}@corp" for g, (_, n) in GROUPS.items() for i in range(n)]
    for table in sorted(p.parent.name for p in lake.glob("*/_delta_log")):
        blob = "\n".join(_string_cells(lake / table))
        assert not [u for u in raw_ids if u in blob], table
        assert ".person" not in blob and KEY not in blob, table
    us = _table(lake / "user_segments")
    assert sorted(us.user_id) == sorted(_pseudonym(u) for u in raw_ids)
    assert (us.n_events == 1).all()  # texts and events of a user met under the same pseudonym
    assert private_run.logs.count("stage write: done") == 1  # (the run's log lines were kept)
    assert KEY not in private_run.logs and ".person" not in private_run.logs
    # seglake-explain finds a user by the raw id when given where the key lives.
    from jobs.explain import main as explain_main

    monkeypatch.setenv("SEGLAKE_USER_ID_KEY", KEY)
    assert explain_main(["--output", str(lake), "--user", "tech.person3@corp", "--key-source",
                         "env:SEGLAKE_USER_ID_KEY"]) == 0
    assert _pseudonym("tech.person3@corp") in capsys.readouterr().out
    assert explain_main(["--output", str(lake), "--user", "tech.person3@corp"]) == 1  # raw ids are not stored
    # The conf snapshot in the runs table names where the key lives, not the key.
    assert "env:SEGLAKE_USER_ID_KEY" in _table(lake / "runs").conf[0]
    # Without the key the job stops before Spark work, naming the variable.
    monkeypatch.delenv("SEGLAKE_USER_ID_KEY")
    code = main(["--texts", conf["input"]["texts"]["path"], "--no-events", "--output", str(private_run.tmp / "x"),
                 "--model-path", tiny_model, "--conf", str(_write_yaml(private_run.tmp)), "--k", "2"])
    assert code == 2 and "SEGLAKE_USER_ID_KEY" in capsys.readouterr().err


def _write_yaml(tmp: Path) -> Path:
    p = tmp / "private.yaml"
    p.write_text("privacy:\n  pseudonymize_user_ids: true\n", encoding="utf-8")
    return p


def test_small_segments_are_merged_or_suppressed(spark, private_run, tmp_path, tiny_model, monkeypatch):
    n_users = sum(n for _, n in GROUPS.values())
    # suppress (the shared run s1): the users keep their segments (the two food users form their
    # own, as without a minimum: suppressing changes what is published about a segment, not who is in it) ...
    res, lake = private_run.res, tmp_path / "lake"
    shutil.copytree(private_run.lake, lake)  # (s2 and the assign batch below go on in a copy)
    us = _table(lake / "user_segments").query("run_id == 's1'")
    seg_of = dict(zip(us.user_id, us.segment_id))
    food = {seg_of[_pseudonym(f"food.person{i}@corp")] for i in range(2)}
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
    monkeypatch.setenv("SEGLAKE_USER_ID_KEY", KEY)
    private = {"privacy__pseudonymize_user_ids": True, "privacy__min_segment_size": 3}
    run(spark, _conf(tmp_path, tiny_model, run_id="s2", **private))
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
                                assign__model_run="s2", **private))
    assert a.counts["users_touched"] == a.counts["users_new"] == 1
    got = _table(lake / "user_segments").query(f"user_id == '{_pseudonym('food.new@corp')}'")
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
