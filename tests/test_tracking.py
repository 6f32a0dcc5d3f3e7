"""MLflow tracking (jobs/tracking.py): a real local store, a real logged model, and runs
without MLflow that behave as before."""
from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest

from jobs import config, tracking
from jobs.segment_users import run
from tests.conftest import local_conf
from tests.test_end_to_end import _write_small_inputs

mlflow = pytest.importorskip("mlflow")


def _conf(tmp_path, tiny_model, **over) -> dict:
    texts, events = _write_small_inputs(tmp_path)
    over = {"cluster__k": 2, "cluster__stability_seeds": 0, "tracking__mlflow": "auto", **over}  # (the default)
    return local_conf({"output": {"root": str(tmp_path / "lake")}}, embed__model_path=tiny_model,
                      input__texts__path=texts, input__events__path=events, **over)


def _client(tmp_path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{tmp_path / 'lake' / '_mlflow' / 'mlflow.db'}")


def test_flatten_and_metrics_are_plain_and_finite():
    assert tracking.flatten({"a": {"b": 1, "c": [1, 2], "d": None, "e": {}}, "f": "x"}) == {
        "a.b": "1", "a.c": "[1, 2]", "a.d": "null", "a.e": "{}", "f": "x"}
    res = SimpleNamespace(counts={"users": 3}, reasons={"texts:missing_user_id": 1}, k=2, silhouette=0.5,
                          cost=float("nan"), quality={"stable": None, "wssse": 1.0},
                          embed_texts_per_s=10.0, stage_seconds={"ingest": 1.0, "embed": 2.0},
                          k_selection=[{"k": 2, "silhouette": 0.5}, {"k": 3, "silhouette": 0.4}],
                          segments=[{"segment_id": 0, "share": 0.25}, {"segment_id": 1, "share": 0.75}])
    got = {(k, s): v for k, v, s in tracking.segment_metrics(res)}
    # NaN and None are left out (MLflow stores no NaN metric portably), the curve is by step k.
    assert ("cost", 0) not in got and ("stable", 0) not in got
    assert got[("k_selection.silhouette", 3)] == 0.4 and got[("stage_seconds.total", 0)] == 3.0
    assert got[("count.users", 0)] == 3 and got[("quarantine.texts.missing_user_id", 0)] == 1 and got[("segment_share", 1)] == 0.75


@pytest.mark.e2e
def test_run_is_tracked_in_the_local_store(spark, tmp_path, tiny_model, monkeypatch):
    conf = _conf(tmp_path, tiny_model, run_id="t1", cluster__k="auto", cluster__k_min=2, cluster__k_max=4)
    res = run(spark, conf)
    client = _client(tmp_path)
    [mr] = client.search_runs([client.get_experiment_by_name("seglake").experiment_id])
    assert res.tracking == {"run_id": mr.info.run_id, "experiment": "seglake",
                            "uri": f"sqlite:///{tmp_path / 'lake' / '_mlflow' / 'mlflow.db'}"}
    assert mr.info.status == "FINISHED" and mr.info.run_name == "t1"
    assert mr.data.tags["seglake.run_id"] == "t1" and mr.data.tags["seglake.model_flavor"] == "spark"
    # Params: the resolved conf; metrics: quality, counts, stage seconds and the k curve.
    assert mr.data.params["cluster.k_max"] == "4" and mr.data.params["embed.model_path"] == tiny_model
    m = mr.data.metrics
    assert m["k"] == res.k and m["silhouette"] == pytest.approx(res.silhouette)
    assert m["count.users"] == res.counts["users"] == 13 and m["quarantine.texts.missing_user_id"] == 1
    assert set(res.stage_seconds) <= {k.split(".", 1)[1] for k in m if k.startswith("stage_seconds.")}
    curve = client.get_metric_history(mr.info.run_id, "k_selection.silhouette")
    assert sorted(p.step for p in curve) == [2, 3, 4]
    assert {p.step: p.value for p in curve} == pytest.approx({s["k"]: s["silhouette"] for s in res.k_selection})
    # Artifacts: the report, the tables' summaries, and a model MLflow can load and use.
    art = mr.info.artifact_uri
    assert art.startswith(f"file://{tmp_path / 'lake' / '_mlflow' / 'artifacts'}")
    names = {f.path for f in client.list_artifacts(mr.info.run_id)}
    assert {"report", "k_selection.json", "segments.json", "conf.json", "model"} <= names
    assert [f.path for f in client.list_artifacts(mr.info.run_id, "report")] == ["report/t1.html"]
    segs = mlflow.artifacts.load_dict(f"{art}/segments.json")
    assert sorted(s["size"] for s in segs) == sorted(s["size"] for s in res.segments)
    assert set(segs[0]) == set(tracking.SEGMENT_FIELDS)  # the compact summary (the report has the rest)
    # (loading consults a tracking store: this one, not MLflow's default ./mlflow.db)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", res.tracking["uri"])
    loaded = mlflow.spark.load_model(f"{art}/model")
    np.testing.assert_allclose(np.vstack(loaded.stages[-1].clusterCenters()), np.vstack(res.model.clusterCenters()))


@pytest.mark.e2e
def test_failed_run_ends_failed_with_the_error(spark, tmp_path, tiny_model):
    conf = _conf(tmp_path, tiny_model, run_id="t2", output__report=False)
    conf["input"]["texts"]["path"] = str(tmp_path / "missing.csv")
    with pytest.raises(Exception):
        run(spark, conf)
    client = _client(tmp_path)
    [mr] = client.search_runs([client.get_experiment_by_name("seglake").experiment_id])
    assert mr.info.status == "FAILED" and "missing.csv" in mr.data.tags["seglake.error"]


@pytest.mark.e2e
def test_tracking_uri_and_experiment_from_the_conf(spark, tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///nowhere/ignored.db")  # the conf's uri wins
    monkeypatch.chdir(tmp_path)  # a bare SQLite URI puts artifacts in ./mlruns: MLflow's default, not ours
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    conf = _conf(tmp_path, tiny_model, run_id="t3", tracking__uri=uri, tracking__experiment="segments-dev",
                 tracking__log_model=False, output__report=False)
    res = run(spark, conf)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    [mr] = client.search_runs([client.get_experiment_by_name("segments-dev").experiment_id])
    assert res.tracking["run_id"] == mr.info.run_id and mr.info.status == "FINISHED"
    assert "model" not in {f.path for f in client.list_artifacts(mr.info.run_id)}
    assert not (tmp_path / "lake" / "_mlflow").exists()


def _block_mlflow_imports(monkeypatch) -> None:
    """Any import of MLflow raises from here on, so a passing run proves none happens."""
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.e2e
def test_without_mlflow_the_job_runs_as_before(spark, tmp_path, tiny_model, monkeypatch):
    monkeypatch.setattr(tracking, "installed", lambda: False)
    _block_mlflow_imports(monkeypatch)
    conf = _conf(tmp_path, tiny_model, run_id="t4", output__report=False)  # tracking.mlflow: auto
    res = run(spark, conf)
    assert res.tracking is None and res.counts["users"] == 13
    assert not (tmp_path / "lake" / "_mlflow").exists()


def test_tracking_off_never_imports_mlflow(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "installed", lambda: True)  # installed, but switched off
    _block_mlflow_imports(monkeypatch)
    conf = local_conf({"output": {"root": str(tmp_path / "lake")}}, tracking__mlflow=False)
    with tracking.tracked(conf, "seglake-segment", "t5") as tracker:
        assert not tracker.active
    assert not (tmp_path / "lake").exists()


def test_required_tracking_fails_before_spark(tmp_path, monkeypatch):
    conf = local_conf({"output": {"root": str(tmp_path / "lake")}}, tracking__mlflow=True)
    monkeypatch.setattr(tracking, "installed", lambda: False)
    with pytest.raises(config.ConfigError, match="MLflow is not installed"):
        tracking.check(conf)
    monkeypatch.setattr(tracking, "installed", lambda: True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    remote = local_conf({"output": {"root": "s3://bucket/lake"}}, tracking__mlflow=True)
    with pytest.raises(config.ConfigError, match="set tracking.uri"):
        tracking.check(remote)
    tracking.check(conf)  # local root: the SQLite store beside the tables
    with pytest.raises(config.ConfigError, match="tracking.mlflow"):
        local_conf({}, tracking__mlflow="yes")
