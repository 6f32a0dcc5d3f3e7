"""seglake-assign: incremental assignment with a saved model, MERGE, history, drift, resume, streaming."""
from __future__ import annotations

import os
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from deltalake import DeltaTable

from jobs import assign, cli, delta_io, drift, hooks
from jobs.history import read_history, segment_at
from jobs.segment_users import run as full_run
from jobs.user_vectors import user_state
from tests import fault_hooks as faults
from tests.conftest import built_once, local_conf, subprocess_profile

pytestmark = pytest.mark.e2e  # whole job runs (tests/conftest.py: tiers)

ROOT = Path(__file__).resolve().parents[1]
GROUPS = {
    "f": ["great dress fit soft fabric", "nice shirt size fit", "shoes size soft nice"],
    "t": ["phone battery screen camera", "laptop battery fast", "camera screen slow phone"],
    "v": ["hotel flight beach trip", "food pizza noodles taste", "beach trip hotel nice"],
}
CATS = {"f": "fashion", "t": "electronics", "v": "travel"}


def _table(path) -> pd.DataFrame:
    return DeltaTable(str(path)).to_pandas()


def _csv(path: Path, header: str, rows: list[str]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return str(path)


def _history_inputs(tmp: Path) -> tuple[str, str]:
    """30 users in 3 vocabulary groups, texts in January, events for two thirds of them."""
    texts, events = [], []
    for g, phrases in GROUPS.items():
        for i in range(10):
            for j, p in enumerate(phrases):
                texts.append(f"{g}{i},{p},2026-01-{10 + j:02d}T0{i % 10}:00:00Z,{g}i{i},en")
            if i % 3:
                events.append(f"{g}{i},{g}i{i},purchase,,{CATS[g]},2026-01-10T00:00:00Z")
                events.append(f"{g}{i},{g}i{i},rating,{1 + i % 5},{CATS[g]},2026-01-11T00:00:00Z")
    return (_csv(tmp / "hist" / "texts.csv", "user_id,text,ts,item_id,lang", texts),
            _csv(tmp / "hist" / "events.csv", "user_id,item_id,event_type,rating,category,ts", events))


# A fashion user turns to tech, heavily (the tech group's own phrases: all in the embedding cache).
F1_TEXTS = [f"f1,{p},2026-02-01T{h:02d}:00:00Z,x,en" for h, p in enumerate(GROUPS["t"] * 5)]
OTHER_TEXTS = [
    "t2,phone camera,2026-02-02T00:00:00Z,x,en",  # a tech user writes more of the same
    "n1,hotel beach trip flight,2026-02-03T00:00:00Z,x,en",  # two new users
    "n2,dress shirt fabric,2026-02-03T00:00:00Z,x,en",
]
LATE_AND_BAD = [
    "v3,old text already applied,2026-01-05T00:00:00Z,x,en",  # not after the watermark
    ",no user id,2026-02-03T00:00:00Z,x,en",
]
NEW_TEXTS = F1_TEXTS + OTHER_TEXTS + LATE_AND_BAD
NEW_EVENTS = ["t2,x,purchase,,electronics,2026-02-02T00:00:00Z", "n3,x,view,,travel,2026-02-03T00:00:00Z"]


def _conf(tmp: Path, tiny_model: str, **over) -> dict:
    texts, events = _history_inputs(tmp)
    base = {"output": {"root": str(tmp / "lake"), "report": False}, "embed": {"model_path": tiny_model},
            "input": {"texts": {"path": texts}, "events": {"path": events}},
            "cluster": {"k": 3, "stability_seeds": 0}, "drift": {"min_users": 1},
            # Segments by text only, so the test can say where a user who writes differently goes
            # (events still update the state: n_events, event_counts).
            "user_vectors": {"behaviour_weight": 0.0,
                             # Centred on the (one) language's mean, so that assign's parity with the
                             # full run covers the language means saved with the model run.
                             "language_centring": "on", "language_min_users": 5}}
    return local_conf(base, **over)


def history_lake(spark, tiny_model: str, tmp_path_factory) -> Path:
    """The full run on the history (Change Data Feed on user_segments), made once per test run
    for this module and tests/test_delta_spark.py, whichever worker gets there first. Tests
    read it, or copy its lake before changing it. (CDF changes no table's rows.)"""
    return built_once(tmp_path_factory, "history-lake", lambda tmp: full_run(
        spark, _conf(tmp, tiny_model, run_id="full1", output__change_data_feed=True)))


@pytest.fixture(scope="module")
def full_lake(spark, tiny_model, tmp_path_factory):
    """The full run on the history; tests copy its lake before changing it."""
    return history_lake(spark, tiny_model, tmp_path_factory)


def _copy(full_lake: Path, tmp: Path) -> Path:
    shutil.copytree(full_lake / "lake", tmp / "lake")
    return tmp / "lake"


def _segments(lake: Path, model_run: str = "full1") -> pd.Series:
    us = _table(lake / "user_segments")
    return us[us.run_id == model_run].set_index("user_id").sort_index()


def test_full_job_writes_state_and_history(full_lake):
    lake = full_lake / "lake"
    uv = _table(lake / "user_vectors")
    assert len(uv) == 30 and uv.user_id.is_unique and set(uv.n_texts) == {3}
    assert (uv.updated_by == "full1").all() and uv.model_id.nunique() == 1
    hist = _table(lake / "segment_history")
    assert len(hist) == 30 and hist.old_segment_id.isna().all() and (hist.model_run_id == "full1").all()
    runs = _table(lake / "runs")
    assert str(runs.texts_watermark[0]).startswith("2026-01-12")
    params = json.loads(runs.feature_params[0])
    assert set(params["language_means"]) == {"en"}
    # The lexical channel is on by default: the reassign parity below covers its saved lexicon.
    assert params["lexical_weight"] > 0 and len(_table(lake / "lexical_terms")) == params["lexical_terms"] > 0


def test_reassign_all_reproduces_the_full_job_exactly(spark, tiny_model, full_lake, tmp_path):
    lake = _copy(full_lake, tmp_path)
    before = _segments(lake)
    conf = _conf(tmp_path, tiny_model, run_id="re1")
    res = assign.run(spark, conf, reassign_all=True)
    after = _segments(lake)
    assert res.counts["users_touched"] == 30 and res.counts["users_changed"] == 0
    # Same state, same function, same model: the very same segment and distance for every user.
    assert (after.segment_id == before.segment_id).all()
    np.testing.assert_array_equal(after.distance.to_numpy(), before.distance.to_numpy())
    # ...and the same soft memberships and outlier flags (temperature and thresholds saved with the model run).
    assert [list(t) for t in after.top_segment_ids] == [list(t) for t in before.top_segment_ids]
    np.testing.assert_allclose(np.vstack(after.memberships.to_numpy()), np.vstack(before.memberships.to_numpy()),
                               rtol=1e-12)
    assert (after.outlier == before.outlier).all()
    assert (after.assigned_by == "re1").all() and len(_table(lake / "user_segments")) == 30
    d = _table(lake / "drift")
    assert d.far_share[0] == pytest.approx(0.0333, abs=0.04) and d.psi[0] == pytest.approx(0.0, abs=1e-9)
    assert d.mean_shift[0] == pytest.approx(0.0, abs=1e-9) and not d.refit_recommended[0]


@pytest.fixture(scope="module")
def incremental(spark, tiny_model, full_lake, tmp_path_factory) -> SimpleNamespace:
    """One incremental batch a1 (NEW_TEXTS, NEW_EVENTS) on a copy of the full lake, shared by the
    checks of that batch below (the last one, the rerun without the watermark, changes the lake)."""
    tmp = tmp_path_factory.mktemp("incremental")
    lake = _copy(full_lake, tmp)
    v0 = DeltaTable(str(lake / "user_segments")).version()
    texts = _csv(tmp / "new" / "texts.csv", "user_id,text,ts,item_id,lang", NEW_TEXTS)
    events = _csv(tmp / "new" / "events.csv", "user_id,item_id,event_type,rating,category,ts", NEW_EVENTS)
    conf = _conf(tmp, tiny_model, run_id="a1", assign__texts__path=texts, assign__events__path=events)
    before = _segments(lake)
    res = assign.run(spark, conf)
    return SimpleNamespace(lake=lake, v0=v0, texts=texts, conf=conf, before=before, res=res)


def test_incremental_batch(spark, incremental):
    lake, before, res = incremental.lake, incremental.before, incremental.res
    c = res.counts
    # Nothing lost: every row read is applied or quarantined, with its reason.
    assert (c["texts_read"], c["texts_kept"], c["events_read"], c["events_kept"]) == (20, 18, 2, 2)
    assert res.reasons == {"texts:before_watermark": 1, "texts:missing_user_id": 1}
    q = _table(lake / "quarantine")
    assert sorted(q[q.run_id == "a1"].reason) == ["before_watermark", "missing_user_id"]
    assert c["users_touched"] == 5 and c["users_new"] == 3  # f1, t2 + n1, n2, n3
    assert c["texts_embedded_new"] == 3  # only texts not in the cache: f1's are the tech group's

    # user_vectors: running means equal pooling the whole history + new texts at once.
    uv = _table(lake / "user_vectors").set_index("user_id")
    assert len(uv) == 33 and uv.loc["f1", "n_texts"] == 18 and uv.loc["t2", "n_events"] == 3
    assert uv.loc["f0", "updated_by"] == "full1" and uv.loc["f1", "updated_by"] == "a1"
    assert _table(lake / "text_embeddings").text_hash.is_unique

    # user_segments: MERGEd in place in the model run's partition; untouched users unchanged.
    after = _segments(lake)
    assert len(after) == 33 and after.index.is_unique
    untouched = before.index.difference(["f1", "t2"])
    assert (after.loc[untouched, "segment_id"] == before.loc[untouched, "segment_id"]).all()
    assert (after.loc[untouched, "assigned_by"] == "full1").all()
    assert after.loc["f1", "segment_id"] == after.loc["t0", "segment_id"]  # f1 now writes like the tech group
    assert after.loc["n1", "segment_id"] == after.loc["v0", "segment_id"]

    # History: f1 moved, the new users arrived; any past segment can be answered.
    hist = _table(lake / "segment_history")
    mine = hist[hist.run_id == "a1"].set_index("user_id")
    assert set(mine.index) == {"f1", "n1", "n2", "n3"}
    assert mine.loc["f1", "old_segment_id"] == before.loc["f1", "segment_id"]
    assert pd.isna(mine.loc["n1", "old_segment_id"])
    h = read_history(spark, str(lake), "delta-rs")
    t_full = hist[hist.run_id == "full1"].changed_at.max()
    assert segment_at(h, "f1", t_full)["new_segment_id"] == before.loc["f1", "segment_id"]
    assert segment_at(h, "f1", mine.loc["f1", "changed_at"])["new_segment_id"] == after.loc["f1", "segment_id"]
    assert segment_at(h, "n1", t_full) is None
    # ... and Delta time travel shows the table as it was.
    old = delta_io.read_table(spark, str(lake / "user_segments"), engine="delta-rs", version=incremental.v0).toPandas()
    assert len(old) == 30

    # Watermarks advanced; the run and its drift are recorded.
    ar = _table(lake / "assign_runs").set_index("run_id")
    assert ar.loc["a1", "status"] == "succeeded" and str(ar.loc["a1", "texts_watermark"]).startswith("2026-02-03")
    assert _table(lake / "drift").set_index("run_id").loc["a1", "users"] == 5


def test_running_state_matches_pooling_everything(spark, incremental):
    """After an incremental batch, a touched user's stored state equals the state of all their texts."""
    lake, conf = incremental.lake, incremental.conf
    uv = _table(lake / "user_vectors").set_index("user_id")
    # The reference: every text of f1 / t2, embedded through the cache, pooled at once.
    emb = delta_io.read_table(spark, str(lake / "text_embeddings"), engine="delta-rs")
    hist_texts = spark.read.option("header", True).csv(conf["input"]["texts"]["path"])
    new_texts = spark.read.option("header", True).csv(incremental.texts)
    from jobs.clean import clean_texts
    from pyspark.sql import functions as F

    rows = (hist_texts.unionByName(new_texts).where(F.col("user_id").isin("f1", "t2"))
            .withColumn("ts", F.to_timestamp("ts")).withColumn("reason", F.lit(None).cast("string"))
            .transform(clean_texts)
            .withColumn("text_hash", F.sha2("text_clean", 256))
            .join(emb.select("text_hash", "embedding").dropDuplicates(["text_hash"]), "text_hash"))
    want = {r.user_id: r for r in user_state(rows, None, lexical=True).collect()}
    for u in ("f1", "t2"):
        assert uv.loc[u, "n_texts"] == want[u].n_texts
        np.testing.assert_allclose(uv.loc[u, "text_mean"], want[u].text_mean, rtol=1e-9, atol=1e-12)
        assert dict(uv.loc[u, "term_counts"]) == want[u].term_counts  # word counts add up too


def test_incremental_batch_again_without_watermark_applies_once(spark, incremental):
    """The same run again, now without the watermark: what it applied is not applied twice; the
    late row it had quarantined is applied now, once. (Changes the shared lake: last of its users.)"""
    lake, conf = incremental.lake, incremental.conf
    again = assign.run(spark, {**conf, "assign": {**conf["assign"], "watermark": False}})
    assert again.counts["users_touched"] == 6
    uv2 = _table(lake / "user_vectors").set_index("user_id")
    assert uv2.loc["f1", "n_texts"] == 18 and uv2.loc["t2", "n_events"] == 3 and uv2.loc["v3", "n_texts"] == 4
    hist2 = _table(lake / "segment_history")
    assert set(hist2[hist2.run_id == "a1"].user_id) >= {"f1", "n1", "n2", "n3"}
    assert hist2[hist2.run_id == "a1"].user_id.is_unique


def test_crashed_batch_is_resumed_not_applied_twice(spark, tiny_model, full_lake, tmp_path, monkeypatch):
    lake = _copy(full_lake, tmp_path)
    texts = _csv(tmp_path / "new" / "texts.csv", "user_id,text,ts,item_id,lang", NEW_TEXTS)
    conf = _conf(tmp_path, tiny_model, assign__texts__path=texts)

    class Crash(RuntimeError):
        pass

    def crash(point, run_id):
        if point == "after_history":
            raise Crash(point)

    monkeypatch.setattr(hooks, "HOOKS", hooks.Hooks(crash_point=crash))
    with pytest.raises(Crash):
        assign.run(spark, conf)  # user_vectors and history committed, user_segments not
    crashed = _table(lake / "assign_runs")
    assert list(crashed.status) == ["failed"]
    monkeypatch.setattr(hooks, "HOOKS", hooks.Hooks())
    res = assign.run(spark, conf)  # picks the unfinished batch up again, under its run id
    assert res.run_id == crashed.run_id[0]
    uv = _table(lake / "user_vectors").set_index("user_id")
    assert uv.loc["f1", "n_texts"] == 18  # not 33
    hist = _table(lake / "segment_history")
    assert set(hist[hist.run_id == res.run_id].user_id) == {"f1", "n1", "n2"}
    assert list(_table(lake / "assign_runs").status) == ["succeeded"]


def test_drift_is_flagged_and_refit(spark, tiny_model, full_lake, tmp_path, capsys):
    """Users unlike anyone in training: far from every centroid, all in one segment. The drift
    row recommends a re-fit and --refit-if-drifted runs the full job on input.*."""
    import yaml

    lake = _copy(full_lake, tmp_path)
    zh = [f"z{i},这件连衣裙面料很舒服 手机电池续航强,2026-03-01T00:00:00Z,x,zh" for i in range(12)]
    texts = _csv(tmp_path / "new" / "texts.csv", "user_id,text,ts,item_id,lang", zh)
    conf = _conf(tmp_path, tiny_model)
    profile = tmp_path / "conf.yaml"
    # The re-fit with another seed: its segments keep the model run's ids (jobs/segment_ids.py).
    profile.write_text(yaml.safe_dump({k: conf[k] for k in ("input", "embed", "drift", "user_vectors", "tracking")}
                                      | {"cluster": {**conf["cluster"], "seed": 7}, "output": {"report": False}}),
                       encoding="utf-8")
    rc = cli.assign_main(["--conf", str(profile), "--output", str(lake), "--texts", texts, "--run-id", "d1",
                      "--refit-if-drifted"])
    out = capsys.readouterr().out
    assert rc == 0 and "re-fit recommended: far_share" in out and "SegLake run " in out
    d = _table(lake / "drift").set_index("run_id").loc["d1"]
    # PSI over the whole population: 12 of 42 users now in one of 3 equal segments -> about 0.15.
    assert d.refit_recommended and d.far_share > 0.5 and 0.1 < d.psi < 0.25
    runs = _table(lake / "runs")
    assert len(runs) == 2 and (runs.status == "succeeded").all()  # the original full run and the re-fit
    refit = runs[runs.run_id != "full1"].run_id.iloc[0]
    new, old = _segments(lake, refit), _segments(lake, "full1")
    assert len(new) == 30
    old = old.loc[new.index]  # (the model run's partition also holds the 12 users d1 placed)
    # The three planted groups again, found from another seed: every user keeps their id.
    assert pd.crosstab(new.segment_id, old.segment_id).gt(0).sum(axis=1).eq(1).all()
    assert (new.segment_id == old.segment_id).all()
    lineage = _table(lake / "segment_lineage").set_index("run_id")
    assert set(lineage.loc[refit].relation) == {"same"} and (lineage.loc[refit].previous_run_id == "full1").all()
    assert set(lineage.loc["full1"].relation) == {"new"} and lineage.loc["full1"].previous_run_id.isna().all()
    assert "segment ids matched to run full1: 3 same; 100.0% of the 30 returning users kept their id" in out


def test_psi_and_judge():
    assert drift.psi({"0": 0.5, "1": 0.5}, {"0": 0.5, "1": 0.5}) == 0.0
    assert drift.psi({"0": 0.5, "1": 0.5}, {"0": 0.9, "1": 0.1}) == pytest.approx(
        0.4 * np.log(0.9 / 0.5) - 0.4 * np.log(0.1 / 0.5))
    th = {"max_far_share": 0.15, "max_psi": 0.25, "max_mean_shift": 0.25, "min_users": 10}
    assert drift.judge({"users": 5, "far_share": 1.0, "psi": 9, "mean_shift": 9}, th) == []  # too few to judge
    assert drift.judge({"users": 50, "far_share": 0.2, "psi": 0.1, "mean_shift": 0.0}, th) == ["far_share 0.200 > 0.15"]


def test_cli(spark, tiny_model, full_lake, tmp_path, capsys):
    lake = _copy(full_lake, tmp_path)
    texts = _csv(tmp_path / "new" / "texts.csv", "user_id,text,ts,item_id,lang", OTHER_TEXTS[1:])
    rc = cli.assign_main(["--conf", str(ROOT / "conf" / "local.yaml"), "--output", str(lake), "--texts", texts,
                      "--model-path", tiny_model, "--run-id", "cli1"])
    out = capsys.readouterr().out
    assert rc == 0 and "SegLake assign run cli1 (model run full1)" in out and "users touched 2" in out
    assert cli.assign_main(["--output", str(tmp_path / "empty"), "--texts", texts, "--model-path", tiny_model]) == 3
    assert "run seglake-segment" in capsys.readouterr().err
    assert cli.assign_main(["--output", str(lake)]) == 2
    assert "--texts" in capsys.readouterr().err


def _assign_args(lake: Path, tiny_model: str, *args: str) -> list[str]:
    return ["--conf", subprocess_profile(), "--output", str(lake), "--model-path", tiny_model, *args]


def _assign_cli(lake: Path, tiny_model: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tests.fault_hooks", "assign", *_assign_args(lake, tiny_model, *args)]
    return subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_stream_killed_and_restarted_equals_one_batch(spark, tiny_model, full_lake, tmp_path):
    """availableNow over a folder of 2 text files (one per micro-batch) and an events folder;
    the driver (a subprocess) is SIGKILLed right after committing user_vectors in the second
    (last) micro-batch, then restarted (in this process's driver, from the killed one's checkpoint):
    the result equals one batch run over the same files (the same CLI, in this process too)."""
    stream_lake = _copy(full_lake, tmp_path / "s")
    batch_lake = _copy(full_lake, tmp_path / "b")
    header = "user_id,text,ts,item_id,lang"
    # (Two micro-batches: the first committed before the kill, the second killed half-way and replayed.)
    for i, chunk in enumerate((F1_TEXTS[:8], F1_TEXTS[8:] + OTHER_TEXTS)):
        _csv(tmp_path / "in" / "texts" / f"part-{i}.csv", header, chunk)
    _csv(tmp_path / "in" / "events" / "part-0.csv", "user_id,item_id,event_type,rating,category,ts", NEW_EVENTS)
    inputs = ["--texts", str(tmp_path / "in" / "texts"), "--events", str(tmp_path / "in" / "events")]
    stream = ["--stream", "--max-files-per-trigger", "1", "--checkpoint", str(tmp_path / "ckpt"), "--run-id", "s"]

    killed = _assign_cli(stream_lake, tiny_model, *inputs, *stream,
                         env={faults.ENV: "after_user_vectors:s-000001"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    # The restart and the one batch need no process of their own: the shared session's driver
    # is a different driver from the killed one, and the same seglake-assign CLI runs in it.
    restarted = cli.assign_main(_assign_args(stream_lake, tiny_model, *inputs, *stream))
    assert restarted == 0
    once = cli.assign_main(_assign_args(batch_lake, tiny_model, *inputs, "--run-id", "one"))
    assert once == 0

    runs = _table(stream_lake / "assign_runs")
    assert sorted(runs.run_id) == ["s-000000", "s-000001"] and (runs.status == "succeeded").all()
    s, b = _segments(stream_lake), _segments(batch_lake)
    assert list(s.index) == list(b.index) and len(s) == 33
    assert (s.segment_id == b.segment_id).all()
    sv = _table(stream_lake / "user_vectors").set_index("user_id").sort_index()
    bv = _table(batch_lake / "user_vectors").set_index("user_id").sort_index()
    assert (sv.n_texts == bv.n_texts).all() and (sv.n_events == bv.n_events).all()
    np.testing.assert_allclose(np.vstack(sv.text_mean.dropna()), np.vstack(bv.text_mean.dropna()), atol=1e-9)
    assert sv.loc["f1", "n_texts"] == 18  # the replayed micro-batch was not applied twice


def test_hdbscan_run_and_assign_send_far_users_to_noise(spark, tiny_model, tmp_path):
    """cluster.algorithm hdbscan through both jobs: the three groups found on the sample of
    users, and a new user unlike anyone goes to noise (segment -1), which explain reports."""
    from jobs.explain import explain, render

    conf = _conf(tmp_path, tiny_model, run_id="hd1", cluster__algorithm="hdbscan", cluster__hdbscan_min_cluster_size=5)
    res = full_run(spark, conf)
    segs = _segments(tmp_path / "lake", "hd1")
    assert res.k == 3 and segs.groupby(segs.index.str[0]).segment_id.nunique().eq(1).all()
    assert segs.segment_id.nunique() == 3 and (segs.segment_id >= 0).all()
    params = json.loads(_table(tmp_path / "lake" / "runs").feature_params[0])
    assert params["outlier_mode"] == "noise" and len(params["outlier_thresholds"]) == 3
    far = _csv(tmp_path / "new" / "texts.csv", "user_id,text,ts,item_id,lang",
               ["z1,这件连衣裙面料很舒服 手机电池续航强,2026-03-01T00:00:00Z,x,en"])
    assign.run(spark, _conf(tmp_path, tiny_model, run_id="hd-a1", assign__texts__path=far))
    z = _segments(tmp_path / "lake", "hd1").loc["z1"]
    assert z.segment_id == -1 and z.outlier and z.second_segment_id in set(segs.segment_id)
    assert "noise (far from every segment)" in render(explain(str(tmp_path / "lake"), "z1"))
