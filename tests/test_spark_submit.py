"""spark-submit.sh: the command it builds, and one real local run through spark-submit."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from deltalake import DeltaTable

from tests.conftest import subprocess_profile

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "spark-submit.sh")


def _dry(*args: str) -> list[str]:
    out = subprocess.run([SCRIPT, "--dry-run", *args], capture_output=True, text=True, check=True).stdout
    return shlex.split(out)


def test_dry_run_local_default():
    cmd = _dry("--conf", "conf/local.yaml", "--texts", "t.csv", "--k", "5")
    assert cmd[cmd.index("--master") + 1] == "local[2]"
    assert cmd[cmd.index("--py-files") + 1].endswith("seglake-pyfiles.zip")
    assert cmd[cmd.index("--files") + 1] == "conf/local.yaml"
    job = cmd[cmd.index(str(ROOT / "jobs" / "cli.py")) + 1 + 1:]
    assert job == ["--conf", "conf/local.yaml", "--texts", "t.csv", "--k", "5"]


def test_dry_run_assign_job():
    cmd = _dry("--job", "assign", "--conf", "conf/local.yaml", "--texts", "new/", "--stream")
    job = cmd[cmd.index(str(ROOT / "jobs" / "cli.py")) + 1 + 1:]
    assert job == ["--conf", "conf/local.yaml", "--texts", "new/", "--stream"]
    bad = subprocess.run([SCRIPT, "--dry-run", "--job", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--job must be segment, assign or finetune" in bad.stderr
    cmd = _dry("--job", "finetune", "--conf", "conf/local.yaml", "--texts", "t.csv", "--out", "models/v1")
    entry = cmd.index(str(ROOT / "jobs" / "cli.py"))
    assert cmd[entry + 1:] == ["finetune", "--conf", "conf/local.yaml", "--texts", "t.csv", "--out", "models/v1"]


def test_dry_run_cluster_passes_spark_options_through():
    cmd = _dry("--master", "yarn", "--deploy-mode", "cluster", "--conf", "spark.executor.memory=8g",
               "--num-executors", "4", "--conf", "conf/cluster.yaml", "--texts", "s3a://b/t", "--run-id", "r1")
    entry = cmd.index(str(ROOT / "jobs" / "cli.py")) + 1
    spark, job = cmd[:entry], cmd[entry + 1:]
    assert spark[spark.index("--master") + 1] == "yarn"
    assert spark[spark.index("--deploy-mode") + 1] == "cluster"
    assert "spark.executor.memory=8g" in spark and spark[spark.index("--num-executors") + 1] == "4"
    # In cluster mode the driver reads the shipped conf by its file name.
    assert job == ["--conf", "cluster.yaml", "--texts", "s3a://b/t", "--run-id", "r1"]


def _split(cmd: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(spark-submit options, their --conf values, job arguments)."""
    entry = cmd.index(str(ROOT / "jobs" / "cli.py")) + 1
    spark = cmd[:entry]
    return spark, [spark[i + 1] for i, a in enumerate(spark) if a == "--conf"], cmd[entry + 1:]


@pytest.mark.parametrize("master", ["local[4]", "spark://10.0.0.1:7077", "yarn", "k8s://https://k8s.example:6443"])
def test_dry_run_each_master_type(master):
    image = ["--conf", "spark.kubernetes.container.image=registry.example/seglake:1"] if master.startswith("k8s") else []
    cmd = _dry("--master", master, *image, "--conf", "conf/cluster-gpu.yaml", "--conf", "spark.task.cpus=4",
               "--texts", "t.parquet")
    spark, confs, job = _split(cmd)
    assert spark[spark.index("--master") + 1] == master
    # The profile's embed-stage settings go in at submit time (static ones only work there) ...
    for setting in ("spark.task.resource.gpu.amount=0.25", "spark.executor.resource.gpu.amount=1",
                    "spark.sql.execution.arrow.maxRecordsPerBatch=8192", "spark.python.worker.reuse=true"):
        assert setting in confs, setting
    # ... and a flag given on the command line comes later, so it wins (spark-submit: last one).
    assert confs.index("spark.task.cpus=4") > confs.index("spark.task.cpus=2")
    assert spark[spark.index("--files") + 1] == "conf/cluster-gpu.yaml" and "--py-files" in spark
    assert job == ["--conf", "conf/cluster-gpu.yaml", "--texts", "t.parquet"]


def test_dry_run_ships_a_packed_python_environment():
    cmd = _dry("--master", "yarn", "--deploy-mode", "cluster", "--python-env", "build/env.tar.gz",
               "--conf", "conf/cluster.yaml", "--texts", "t")
    spark, confs, _ = _split(cmd)
    assert spark[spark.index("--archives") + 1] == "build/env.tar.gz#environment"
    for setting in ("spark.pyspark.python=./environment/bin/python", "spark.pyspark.driver.python=./environment/bin/python",
                    "spark.yarn.appMasterEnv.PYSPARK_PYTHON=./environment/bin/python"):
        assert setting in confs, setting


def test_submit_errors_are_clear():
    def run(*args):
        return subprocess.run([SCRIPT, "--dry-run", *args], capture_output=True, text=True)

    k8s = run("--master", "k8s://https://k8s.example:6443", "--texts", "t")
    assert k8s.returncode == 2 and "spark.kubernetes.container.image" in k8s.stderr
    missing = run("--conf", "conf/nope.yaml", "--texts", "t")
    assert missing.returncode == 2 and "conf profile not found: conf/nope.yaml" in missing.stderr


def test_real_local_run_through_spark_submit(tmp_path, tiny_model):
    texts = tmp_path / "texts.json"
    lines = [f'{{"user_id": "a{i}", "text": "great dress fit soft fabric {i}"}}' for i in range(5)]
    lines += [f'{{"user_id": "b{i}", "text": "phone battery screen camera {i}"}}' for i in range(5)]
    lines += ['{"user_id": "", "text": "orphan"}']
    texts.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "lake"
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    proc = subprocess.run(
        [SCRIPT, "--python", sys.executable, "--conf", "spark.ui.enabled=false",
         "--conf", "spark.sql.shuffle.partitions=2", "--conf", subprocess_profile(),
         "--texts", str(texts), "--texts-format", "json", "--no-events", "--output", str(out),
         "--k", "2", "--model-path", tiny_model, "--run-id", "submit1"],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SegLake run submit1" in proc.stdout
    us = DeltaTable(str(out / "user_segments")).to_pandas()
    assert len(us) == 10 and us.segment_id.nunique() == 2
    q = DeltaTable(str(out / "quarantine")).to_pandas()
    assert list(q.reason) == ["missing_user_id"]


DELTA_CONFS = ("spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension",
               "spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog")


def test_dry_run_adds_delta_for_native_and_auto():
    from jobs import delta_jars

    jars = delta_jars.cached_jars()
    assert jars, "make venv fills the Delta jar cache"
    # Local (auto): the cached jars, nothing to resolve at submit time, and Delta's two settings.
    spark, confs, _ = _split(_dry("--conf", "conf/local.yaml", "--texts", "t.csv"))
    assert spark[spark.index("--jars") + 1].split(",") == jars and "--packages" not in spark
    assert all(c in confs for c in DELTA_CONFS)
    # A cluster profile asks for native Delta: same; without a cache it would pass --packages.
    spark, confs, _ = _split(_dry("--master", "yarn", "--conf", "conf/cluster.yaml", "--texts", "t"))
    assert "--jars" in spark and all(c in confs for c in DELTA_CONFS)
    env = {**os.environ, "SEGLAKE_DELTA_JARS_DIR": "/nonexistent/seglake-jars"}
    out = subprocess.run([SCRIPT, "--dry-run", "--master", "yarn", "--conf", "conf/cluster.yaml", "--texts", "t"],
                         capture_output=True, text=True, check=True, env=env).stdout
    spark, confs, _ = _split(shlex.split(out))
    assert spark[spark.index("--packages") + 1] == delta_jars.coordinate() and "--jars" not in spark
    # delta-rs (flag or profile), or a cluster that brings its own Delta: nothing added.
    for extra in (["--engine", "delta-rs"], ["--no-delta"]):
        spark, confs, job = _split(_dry("--master", "yarn", "--conf", "conf/cluster.yaml", *extra, "--texts", "t"))
        assert "--jars" not in spark and "--packages" not in spark and not any(c in confs for c in DELTA_CONFS)
    assert job[-2:] == ["--texts", "t"] and "--no-delta" not in job
