"""Optional MLflow tracking of a segmentation run.

`tracking.mlflow` in the conf: `auto` (default) tracks when MLflow is installed and a store
can be found, `true` requires both (checked before Spark starts), `false` never imports it.
Without MLflow the job runs exactly as before: nothing here imports it at module level.

Where runs go (the first that applies): `tracking.uri`; `$MLFLOW_TRACKING_URI`; the
workspace on Databricks; otherwise a local store beside the tables, `<output>/_mlflow`
(an SQLite file plus an artifact folder: MLflow 3 keeps its plain file store in
maintenance mode and refuses to start it by default).

One MLflow run per job run, named by the job's run id: params (the resolved conf, flattened),
metrics (counts, quality, per-stage seconds, the k-selection curve by step k), artifacts (the
HTML report, the k table, the segments, the conf) and the fitted MLlib model in MLflow's
`spark` flavour. A failed job run ends its MLflow run as FAILED. Logging goes through
`MlflowClient` with an explicit run id, so no global MLflow state (active run, tracking URI)
of the caller's process (a notebook) is touched.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from jobs import config, ingest

log = logging.getLogger("seglake.tracking")
LOCAL_DIR = "_mlflow"  # under a local output root
SEGMENT_FIELDS = ("segment_id", "name", "size", "share", "mean_distance", "texts_per_user", "events_per_user",
                  "purchase_share", "mean_rating", "top_terms", "top_categories", "top_items")
INSTALL_HINT = "pip install 'seglake[mlflow]' (mlflow-skinny, sqlalchemy, alembic)"


@dataclass
class Store:
    """Where runs go: a tracking URI and, for the local default, the artifact location."""

    uri: str
    artifact_location: str | None = None


def installed() -> bool:
    return importlib.util.find_spec("mlflow") is not None


def resolve_store(conf: dict) -> tuple[Store | None, str]:
    """(the store, '') or (None, why there is none)."""
    tc = conf["tracking"]
    if tc["uri"]:
        return Store(tc["uri"]), ""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return Store(os.environ["MLFLOW_TRACKING_URI"]), ""
    if "DATABRICKS_RUNTIME_VERSION" in os.environ:
        return Store("databricks"), ""
    root = conf["output"]["root"]
    if not ingest.is_local_path(root):
        return None, (f"the output root {root} is not a local path: set tracking.uri (or MLFLOW_TRACKING_URI) "
                      "to a tracking server")
    if not all(importlib.util.find_spec(m) for m in ("sqlalchemy", "alembic")):
        return None, f"the local store needs sqlalchemy and alembic: {INSTALL_HINT}"
    base = os.path.abspath(os.path.join(root, LOCAL_DIR))
    return Store(f"sqlite:///{base}/mlflow.db", "file://" + os.path.join(base, "artifacts")), ""


def check(conf: dict) -> None:
    """Before Spark starts: with `tracking.mlflow: true`, MLflow and a store must be there."""
    if conf["tracking"]["mlflow"] is not True:
        return
    if not installed():
        raise config.ConfigError(f"tracking.mlflow: true, but MLflow is not installed: {INSTALL_HINT}")
    store, why = resolve_store(conf)
    if store is None:
        raise config.ConfigError(f"tracking.mlflow: true, but {why}")


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """{"a": {"b": 1}} -> {"a.b": "1"}: MLflow params are flat strings (lists as JSON)."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = (value if isinstance(value, str) else json.dumps(value, default=str))[:6000]
    return out


def segment_metrics(result: Any) -> list[tuple[str, float, int]]:
    """(key, value, step) for a finished segmentation run: counts, quality, rates, per-stage
    seconds, and the k-selection curve (one point per candidate k, step = k)."""
    out: list[tuple[str, float, int]] = []

    def add(key: str, value: Any, step: int = 0) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out.append((key, float(value), step))

    for key, n in result.counts.items():
        add(f"count.{key}", n)
    for reason, n in result.reasons.items():
        add(f"quarantine.{reason.replace(':', '.')}", n)  # texts:missing_user_id -> texts.missing_user_id
    add("k", result.k)
    add("silhouette", result.silhouette)
    add("cost", result.cost)
    for key, value in result.quality.items():
        add(key, value)
    add("embed_texts_per_s", result.embed_texts_per_s)
    for name, seconds in result.stage_seconds.items():
        add(f"stage_seconds.{name}", seconds)
    add("stage_seconds.total", sum(result.stage_seconds.values()))
    for row in result.k_selection:
        for key in ("silhouette", "cost", "davies_bouldin", "calinski_harabasz", "min_share", "size_entropy"):
            group = f".{row['lang']}" if row.get("lang") else ""  # cluster.per_language: a curve per language
            add(f"k_selection{group}.{key}", row.get(key), int(row["k"]))
    for seg in result.segments:
        add("segment_share", seg.get("share"), int(seg["segment_id"]))
    return out


class Tracker:
    """The MLflow run of one job run; every method is a no-op when there is none, so the job
    does not branch on tracking."""

    def __init__(self, client: Any = None, run_id: str | None = None, store: Store | None = None,
                 experiment: str | None = None, log_model: bool = True) -> None:
        self.client, self.run_id, self.store, self.experiment, self.log_model = (
            client, run_id, store, experiment, log_model)

    @property
    def active(self) -> bool:
        return self.run_id is not None

    def describe(self) -> dict[str, str] | None:
        """For the summary and tests: the MLflow run's id, experiment and tracking URI."""
        if not self.active:
            return None
        return {"run_id": self.run_id, "experiment": self.experiment, "uri": self.store.uri}

    def log_segment_run(self, conf: dict, result: Any) -> None:
        """Params, metrics, artifacts and the model of a finished segmentation run. The tables
        are already committed: a tracking failure is logged, it does not fail the job."""
        if not self.active:
            return
        try:
            self._log_segment_run(conf, result)
        except Exception:  # noqa: BLE001 - the run itself succeeded
            log.exception("MLflow: could not log run %s (the job's tables are written)", result.run_id)
            try:
                self.client.set_tag(self.run_id, "seglake.tracking_error", "logging failed, see the job log")
            except Exception:  # noqa: BLE001 - (the store itself may be what failed)
                pass
        result.tracking = self.describe()

    def _log_segment_run(self, conf: dict, result: Any) -> None:
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        resolved = json.loads(config.snapshot(conf))
        params = flatten({k: v for k, v in resolved.items() if k != "run_id"})
        self.client.log_batch(
            self.run_id,
            metrics=[Metric(key, value, now, step) for key, value, step in segment_metrics(result)],
            params=[Param(k, v) for k, v in sorted(params.items())],
            tags=[RunTag("seglake.output", result.output), RunTag("seglake.k", str(result.k))])
        self.client.log_dict(self.run_id, result.k_selection, "k_selection.json")
        # Per-segment numbers and terms, compact enough to compare runs by (the report, logged
        # below, has the full profiles: representative texts and typical users too).
        self.client.log_dict(self.run_id, [{k: s.get(k) for k in SEGMENT_FIELDS} for s in result.segments],
                             "segments.json")
        self.client.log_dict(self.run_id, resolved, "conf.json")
        if result.report_path:
            with _local_copy(result.report_path) as path:
                self.client.log_artifact(self.run_id, path, "report")
        if self.log_model and result.model is not None:
            self._log_model(result)
        log.info("MLflow: logged run %s as %s in experiment %s (%s)", result.run_id, self.run_id, self.experiment,
                 self.store.uri)

    def _log_model(self, result: Any) -> None:
        """The fitted MLlib model in MLflow's spark flavour (loadable with
        mlflow.spark.load_model('runs:/<id>/model')); where that flavour cannot save it,
        the job's own saved copy is logged as plain files instead."""
        try:
            import mlflow.spark
            import pyspark

            with tempfile.TemporaryDirectory() as tmp:
                # Requirements given, not inferred: inference loads the model in a subprocess
                # (a second Spark) only to list what is already known.
                mlflow.spark.save_model(result.model, os.path.join(tmp, "model"),
                                        pip_requirements=[f"pyspark=={pyspark.__version__}"])
                self.client.log_artifacts(self.run_id, os.path.join(tmp, "model"), "model")
            self.client.set_tag(self.run_id, "seglake.model_flavor", "spark")
        except Exception as exc:  # noqa: BLE001 - the flavour is optional, the model is not lost
            log.warning("MLflow: the spark flavour could not save the model (%s); logging the saved MLlib "
                        "model at %s as files", exc, result.model_path)
            if result.model_path and ingest.is_local_path(result.model_path):
                self.client.log_artifacts(self.run_id, result.model_path, "mllib_model")
            self.client.set_tag(self.run_id, "seglake.model_flavor", "mllib-files")


@contextmanager
def tracked(conf: dict, job: str, run_id: str) -> Iterator[Tracker]:
    """An MLflow run around one job run (or a no-op Tracker). It ends FINISHED when the body
    returns, FAILED (with the error as a tag) when it raises."""
    mode = conf["tracking"]["mlflow"]
    if mode is False or (mode == "auto" and not installed()):
        yield Tracker()
        return
    try:
        tracker = _start(conf, job, run_id)
    except Exception as exc:  # noqa: BLE001 - auto: tracking must not stop the job
        if mode is True:
            raise
        log.warning("MLflow: tracking is off for this run: %s", exc)
        tracker = Tracker()
    if not tracker.active:
        yield tracker
        return
    try:
        yield tracker
    except BaseException as exc:
        _end(tracker, "FAILED", error=repr(exc)[:5000])
        raise
    _end(tracker, "FINISHED")


def _start(conf: dict, job: str, run_id: str) -> Tracker:
    tc = conf["tracking"]
    store, why = resolve_store(conf)
    if store is None:
        raise RuntimeError(why)
    # MLflow's own log handler would print in a second format (setup_logging keeps its INFO
    # lines, schema migrations and the like, out of the job log).
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store.uri)
    # Databricks names experiments by workspace path.
    name = (tc["experiment"] or os.environ.get("MLFLOW_EXPERIMENT_NAME")
            or ("/Shared/seglake" if store.uri.startswith("databricks") else "seglake"))
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        experiment_id = client.create_experiment(name, artifact_location=store.artifact_location)
    else:
        experiment_id = experiment.experiment_id
    run = client.create_run(experiment_id, run_name=run_id, tags={
        "seglake.run_id": run_id, "seglake.job": job, "seglake.version": _version()})
    log.info("MLflow: tracking run %s as %s in experiment %s (%s)", run_id, run.info.run_id, name, store.uri)
    return Tracker(client, run.info.run_id, store, name, tc["log_model"])


def _end(tracker: Tracker, status: str, error: str | None = None) -> None:
    try:
        if error:
            tracker.client.set_tag(tracker.run_id, "seglake.error", error)
        tracker.client.set_terminated(tracker.run_id, status)
    except Exception:  # noqa: BLE001 - never hide the job's own outcome
        log.exception("MLflow: could not end run %s as %s", tracker.run_id, status)


@contextmanager
def _local_copy(path: str) -> Iterator[str]:
    """`path` itself when local, else a temporary local copy (reports on object stores)."""
    if ingest.is_local_path(path):
        yield path
        return
    from pyarrow import fs as pafs

    filesystem, inner = pafs.FileSystem.from_uri(path)
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, os.path.basename(inner))
        with filesystem.open_input_stream(inner) as src, open(local, "wb") as dst:
            dst.write(src.read())
        yield local


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("seglake")
    except PackageNotFoundError:  # (run from a checkout or a --py-files zip)
        return "unknown"
