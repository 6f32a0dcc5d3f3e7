"""Faults and reruns of the full job: a killed driver, task failures, two runs at once, locks."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from deltalake import DeltaTable

from jobs import assign, ingest
from tests import fault_hooks as faults
from jobs.explain import latest_succeeded_run
from jobs.lock import LOCK_NAME, LockError, output_lock
from jobs.segment_users import run
from tests.conftest import local_conf, subprocess_profile

pytestmark = pytest.mark.e2e  # whole job runs (tests/conftest.py: tiers)

ROOT = Path(__file__).resolve().parents[1]
PHRASES = {"a": ["great dress fit soft fabric", "nice shirt size fit"],
           "b": ["phone battery screen camera", "laptop battery fast"]}


def _table(path) -> pd.DataFrame:
    return DeltaTable(str(path)).to_pandas()


def _texts(path: Path, n_users: int = 6, extra: list[str] | None = None) -> str:
    rows = ["user_id,text,ts,item_id,lang"]
    for g, phrases in PHRASES.items():
        for i in range(n_users):
            rows += [f"{g}{i},{p},2026-01-0{j + 1}T00:00:00Z,i{j},en" for j, p in enumerate(phrases)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows + (extra or [])) + "\n", encoding="utf-8")
    return str(path)


def _conf(lake: Path, texts: str, tiny_model: str, **over) -> dict:
    base = {"output": {"root": str(lake), "report": False}, "embed": {"model_path": tiny_model},
            "input": {"texts": {"path": texts}, "events": {"path": None}},
            "cluster": {"k": 2, "stability_seeds": 0}}
    return local_conf(base, **over)


def _cli(lake: Path, texts: str, tiny_model: str, run_id: str, *, env: dict | None = None,
         conf_file: Path | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tests.fault_hooks", "segment", "--conf", str(conf_file or subprocess_profile()),
           "--texts", texts, "--no-events", "--output", str(lake), "--model-path", tiny_model, "--k", "2",
           "--run-id", run_id]
    return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _segments(lake: Path, run_id: str) -> dict[str, int]:
    us = _table(lake / "user_segments")
    us = us[us.run_id == run_id]
    assert len(us) == us.user_id.nunique()  # never a duplicate row
    return dict(zip(us.user_id, us.segment_id))


def _same_partition(a: dict[str, int], b: dict[str, int]) -> bool:
    """The same users grouped the same way (label ids may differ)."""
    if a.keys() != b.keys():
        return False
    return len({(a[u], b[u]) for u in a}) == len(set(a.values())) == len(set(b.values()))


@pytest.fixture(scope="module")
def r1(spark, tiny_model, tmp_path_factory) -> SimpleNamespace:
    """One clean in-process run r1 (the default texts, no injected faults), shared: the killed
    run below starts from a copy of its lake, and the concurrent drivers' winner is compared with it."""
    tmp = tmp_path_factory.mktemp("r1")
    texts = _texts(tmp / "in1" / "texts.csv")
    first = run(spark, _conf(tmp / "lake", texts, tiny_model, run_id="r1"))
    return SimpleNamespace(lake=tmp / "lake", texts=texts, first=first, segments=_segments(tmp / "lake", "r1"))


class KilledRun:
    """r2 on a copy of r1's lake, with two new texts; its driver is SIGKILLed right after its
    user_vectors commit (it has committed user_segments, segments, k_selection, segment_history
    and user_vectors then, never its runs row). What the tests check of it happens in one order:
    the state the killed driver left (recorded here, before anything touches the lake), seglake-assign
    refusing that state, then r2 rerun and assign working again (`finish()`)."""

    def __init__(self, spark, tiny_model, r1, tmp: Path):
        self.spark, self.tiny_model, self.tmp = spark, tiny_model, tmp
        self.lake = tmp / "lake"
        shutil.copytree(r1.lake, self.lake)
        self.texts2 = _texts(tmp / "in2" / "texts.csv", extra=["c0,shoes size soft nice,2026-01-05T00:00:00Z,x,en",
                                                               "c1,camera screen slow phone,2026-01-05T00:00:00Z,x,en"])
        killed = _cli(self.lake, self.texts2, tiny_model, "r2", env={faults.ENV: "after_user_vectors:r2"})
        _, self.killed_err = killed.communicate(timeout=600)
        self.killed_rc = killed.returncode
        # What readers see right after the kill.
        self.runs_after_kill = _table(self.lake / "runs").set_index("run_id")
        self.latest_after_kill = latest_succeeded_run(str(self.lake))
        self.r1_segments_after_kill = _segments(self.lake, "r1")
        self.lock_left_behind = (self.lake / LOCK_NAME).exists()
        new = tmp / "new.csv"
        new.write_text("user_id,text,ts,item_id,lang\nz1,phone battery,2026-02-01,x,en\n", encoding="utf-8")
        self.assign_conf = _conf(self.lake, self.texts2, tiny_model, assign__texts__path=str(new))
        self._refused: BaseException | None = None
        self._refusal_checked = False
        self._finished = None

    def refusal(self) -> BaseException | None:
        """seglake-assign on the half-written state (before r2 is finished): the error it raised."""
        if not self._refusal_checked:
            self._refusal_checked = True
            try:
                assign.run(self.spark, self.assign_conf)
            except Exception as exc:  # noqa: BLE001 - the test asserts what it was
                self._refused = exc
        return self._refused

    def finish(self) -> SimpleNamespace:
        """Rerun r2 (after the refusal was seen), then assign on the finished state."""
        if self._finished is None:
            self.refusal()
            again = run(self.spark, _conf(self.lake, self.texts2, self.tiny_model, run_id="r2"))
            r2_segments, lock_after = _segments(self.lake, "r2"), (self.lake / LOCK_NAME).exists()
            runs, q = _table(self.lake / "runs"), _table(self.lake / "quarantine")
            assigned = assign.run(self.spark, self.assign_conf)
            self._finished = SimpleNamespace(again=again, r2_segments=r2_segments, lock_after=lock_after, runs=runs,
                                             quarantine=q, assigned=assigned)
        return self._finished


@pytest.fixture(scope="module")
def killed_r2(spark, tiny_model, r1, tmp_path_factory) -> KilledRun:
    return KilledRun(spark, tiny_model, r1, tmp_path_factory.mktemp("killed"))


@pytest.mark.slow
def test_killed_run_leaves_previous_results_and_resumes_without_reembedding(r1, killed_r2):
    k = killed_r2
    assert r1.first.counts["texts_embedded_new"] == 4
    before = r1.segments
    # Run r2 has two new texts; its driver was SIGKILLed after its user_segments (and user_vectors) commit.
    assert k.killed_rc == -9, k.killed_err[-3000:]
    # The previous results are intact and what readers see: r2 is "running", never succeeded.
    runs = k.runs_after_kill
    assert runs.loc["r1", "status"] == "succeeded" and runs.loc["r2", "status"] == "running"
    assert k.latest_after_kill == "r1" and k.r1_segments_after_kill == before
    assert k.lock_left_behind  # left behind by the killed driver
    # Rerunning r2 takes over the dead run's lock, reuses the vectors r2 already cached, and
    # replaces (does not duplicate) r2's partial rows.
    done = k.finish()
    again = done.again
    assert again.counts["texts_embedded_new"] == 0 and again.counts["texts_embedding_cache_hits"] == 6
    assert len(done.r2_segments) == 14 and not done.lock_after
    runs = done.runs
    assert sorted(zip(runs.run_id, runs.status)) == [("r1", "succeeded"), ("r2", "succeeded")]
    q = done.quarantine
    assert q.empty or q.groupby("run_id").size().max() == len(q[q.run_id == "r1"])


@pytest.mark.slow
def test_assign_refuses_state_of_a_full_run_that_died(killed_r2):
    k = killed_r2
    assert k.killed_rc == -9, k.killed_err[-3000:]  # (killed after its user_vectors commit)
    refused = k.refusal()  # seglake-assign on the state the killed r2 left
    assert isinstance(refused, ingest.InputError), repr(refused)
    assert re.search("full run r2 did not finish .* --run-id r2", str(refused)), str(refused)
    assert k.finish().assigned.counts["users_new"] == 1  # finish r2, then assign works


def test_lock_blocks_a_second_writer_and_reports_the_holder(spark, tmp_path, tiny_model):
    lake = tmp_path / "lake"
    texts = _texts(tmp_path / "in" / "texts.csv")
    with output_lock(str(lake), "holder", "test"):
        t0 = time.monotonic()
        with pytest.raises(LockError, match=r"in use by run holder \(test, pid \d+ on host"):
            run(spark, _conf(lake, texts, tiny_model, run_id="loser"))
        assert time.monotonic() - t0 < 5  # fails at once, before any work
        with pytest.raises(LockError, match="in use by run holder"):
            run(spark, _conf(lake, texts, tiny_model, run_id="waiter", output__lock_wait_s=3))
    assert not (lake / "runs").exists()  # the losers wrote nothing, not even a failed row
    # A lock whose process is gone (same host) is taken over.
    (lake / LOCK_NAME).write_text(json.dumps({"run_id": "dead", "job": "x", "host": socket.gethostname(),
                                              "pid": 2 ** 22 + 12345, "token": "t"}))
    with output_lock(str(lake), "next", "test"):
        assert json.loads((lake / LOCK_NAME).read_text())["run_id"] == "next"
    assert not (lake / LOCK_NAME).exists()


@pytest.mark.slow
def test_two_runs_at_once_and_task_failures(spark, tmp_path, tiny_model, r1):
    """Two drivers started together on one output root: one wins, the other exits 4 naming the
    winner, and no table is corrupt. Both run with the first attempt of half the embedding
    tasks failing (spark.task.maxFailures 4 via local[2,4]): the winner's output equals a
    clean in-process run."""
    lake = tmp_path / "lake"
    texts = r1.texts
    conf_file = Path(subprocess_profile(master="local[2,4]"))
    assert "local[2,4]" in conf_file.read_text()
    env = {faults.FAIL_ENV: "embed"}
    procs = {rid: _cli(lake, texts, tiny_model, rid, env=env, conf_file=conf_file) for rid in ("p1", "p2")}
    out = {rid: p.communicate(timeout=600) for rid, p in procs.items()}
    codes = {rid: p.returncode for rid, p in procs.items()}
    assert sorted(codes.values()) == [0, 4], {r: out[r][1][-2000:] for r in out}
    winner = next(r for r, c in codes.items() if c == 0)
    loser = next(r for r, c in codes.items() if c == 4)
    assert f"in use by run {winner}" in out[loser][1]
    assert "injected task failure (embed" in out[winner][1]  # the failures happened and were retried
    runs = _table(lake / "runs")
    assert list(zip(runs.run_id, runs.status)) == [(winner, "succeeded")]
    for table in ("user_segments", "segments", "segment_history", "quarantine", "text_embeddings"):
        if (lake / table).exists():
            assert set(_table(lake / table).run_id) <= {winner}, table
    # Same result as a clean run (no injected failures, the shared in-process session): r1, on the same texts.
    clean = r1.lake
    assert _same_partition(_segments(lake, winner), _segments(clean, "r1"))
    a, b = _table(lake / "text_embeddings"), _table(clean / "text_embeddings")
    a, b = a.set_index("text_hash").embedding.sort_index(), b.set_index("text_hash").embedding.sort_index()
    assert list(a.index) == list(b.index)
    assert all(abs(x - y).max() < 1e-6 for x, y in zip(a, b))  # retried tasks gave the same vectors
