"""The job outside local mode: a Spark standalone master and worker on loopback, the job
submitted through spark-submit.sh, executors in their own JVMs with their own Python workers."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from deltalake import DeltaTable

from tests.conftest import subprocess_profile

pytestmark = pytest.mark.e2e  # whole job runs (tests/conftest.py: tiers)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "spark-submit.sh")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    raise AssertionError(f"{text!r} not in {path} (process exit {proc.poll()}):\n"
                         + (path.read_text(errors="replace")[-3000:] if path.exists() else "no log"))


@pytest.fixture
def standalone(tmp_path):
    """spark://127.0.0.1:PORT with one 2-core worker; both stopped afterwards."""
    from pyspark.find_spark_home import _find_spark_home

    spark_class = os.path.join(_find_spark_home(), "bin", "spark-class")
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(tmp_path)}
    port = _free_port()
    master_log, worker_log = tmp_path / "master.log", tmp_path / "worker.log"
    procs = []
    try:
        with open(master_log, "w") as out:
            procs.append(subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                 "--webui-port", str(_free_port())], stdout=out, stderr=subprocess.STDOUT, env=env))
        _wait_for(master_log, "I have been elected leader", procs[0])
        url = f"spark://127.0.0.1:{port}"
        with open(worker_log, "w") as out:
            procs.append(subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1", "--cores", "2",
                 "--memory", "3g", "--webui-port", str(_free_port()), "--work-dir", str(tmp_path / "work")],
                stdout=out, stderr=subprocess.STDOUT, env=env))
        _wait_for(worker_log, "Successfully registered with master", procs[1])
        yield url, tmp_path / "work"
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.mark.slow
def test_job_runs_on_a_standalone_cluster(standalone, tmp_path, tiny_model):
    url, work = standalone
    texts = tmp_path / "texts.csv"
    rows = ["user_id,text"] + [f"a{i},great dress fit soft fabric {i}" for i in range(6)]
    rows += [f"b{i},phone battery screen camera {i}" for i in range(6)] + [",orphan"]
    texts.write_text("\n".join(rows) + "\n", encoding="utf-8")
    events = tmp_path / "events.csv"
    ev = ["user_id,item_id,event_type,rating,category,ts"]
    ev += [f"a{i},d{j},purchase,,fashion,2026-01-0{j + 1}T00:00:00Z" for i in range(6) for j in range(3)]
    ev += [f"b{i},p{j},view,,electronics,2026-01-0{j + 1}T00:00:00Z" for i in range(6) for j in range(3)]
    events.write_text("\n".join(ev) + "\n", encoding="utf-8")
    out = tmp_path / "lake"
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    proc = subprocess.run(
        [SCRIPT, "--master", url, "--python", sys.executable,
         # The cluster-image route: every node has this interpreter (here: the same machine).
         "--conf", f"spark.pyspark.python={sys.executable}", "--conf", "spark.executor.memory=1g",
         "--conf", "spark.ui.enabled=false", "--conf", "spark.sql.shuffle.partitions=4",
         "--conf", subprocess_profile(), "--texts", str(texts), "--events", str(events),
         "--output", str(out), "--k", "2", "--model-path", tiny_model, "--run-id", "standalone1"],
        capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "SegLake run standalone1" in proc.stdout
    us = DeltaTable(str(out / "user_segments")).to_pandas()
    seg = dict(zip(us.user_id, us.segment_id))
    assert len(us) == 12 and len({seg[f"a{i}"] for i in range(6)}) == 1 and seg["a0"] != seg["b0"]
    assert list(DeltaTable(str(out / "quarantine")).to_pandas().reason) == ["missing_user_id"]
    recs = DeltaTable(str(out / "segment_recommendations")).to_pandas()
    assert set(recs[recs.segment_id == seg["a0"]].sort_values("rank").item_id.head(3)) == {"d0", "d1", "d2"}
    # The work ran in executors the worker launched (separate JVMs with their own logs), not in
    # the driver: the worker's work dir holds the application's executor directory.
    executor_logs = list(work.glob("app-*/*/stderr"))
    assert executor_logs and any("Running task" in p.read_text(errors="replace") for p in executor_logs)
    # Written with delta-spark: spark-submit.sh shipped the cached Delta jars to the executors.
    for table in ("user_segments", "segments", "runs"):
        assert DeltaTable(str(out / table)).history(1)[0]["engineInfo"].startswith("Apache-Spark/"), table
    # (spark-submit's PythonRunner merges the Python driver's stderr into its stdout.)
    log = proc.stdout + proc.stderr
    assert "writing to" in log and "with the native Delta writer" in log
    assert any(p.name.startswith("io.delta_delta-spark") for p in work.glob("app-*/*/*.jar"))
