"""spark-submit.sh: the command it builds, and one real local run through spark-submit."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from deltalake import DeltaTable

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
    job = cmd[cmd.index(str(ROOT / "jobs" / "segment_users.py")) + 1:]
    assert job == ["--conf", "conf/local.yaml", "--texts", "t.csv", "--k", "5"]


def test_dry_run_assign_job():
    cmd = _dry("--job", "assign", "--conf", "conf/local.yaml", "--texts", "new/", "--stream")
    job = cmd[cmd.index(str(ROOT / "jobs" / "assign.py")) + 1:]
    assert job == ["--conf", "conf/local.yaml", "--texts", "new/", "--stream"]
    bad = subprocess.run([SCRIPT, "--dry-run", "--job", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--job must be segment or assign" in bad.stderr


def test_dry_run_cluster_passes_spark_options_through():
    cmd = _dry("--master", "yarn", "--deploy-mode", "cluster", "--conf", "spark.executor.memory=8g",
               "--num-executors", "4", "--conf", "conf/cluster.yaml", "--texts", "s3a://b/t", "--run-id", "r1")
    entry = cmd.index(str(ROOT / "jobs" / "segment_users.py"))
    spark, job = cmd[:entry], cmd[entry + 1:]
    assert spark[spark.index("--master") + 1] == "yarn"
    assert spark[spark.index("--deploy-mode") + 1] == "cluster"
    assert "spark.executor.memory=8g" in spark and spark[spark.index("--num-executors") + 1] == "4"
    # In cluster mode the driver reads the shipped conf by its file name.
    assert job == ["--conf", "cluster.yaml", "--texts", "s3a://b/t", "--run-id", "r1"]


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
         "--conf", "spark.sql.shuffle.partitions=2", "--conf", str(ROOT / "conf" / "local.yaml"),
         "--texts", str(texts), "--texts-format", "json", "--no-events", "--output", str(out),
         "--k", "2", "--model-path", tiny_model, "--run-id", "submit1"],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SegLake run submit1" in proc.stdout
    us = DeltaTable(str(out / "user_segments")).to_pandas()
    assert len(us) == 10 and us.segment_id.nunique() == 2
    q = DeltaTable(str(out / "quarantine")).to_pandas()
    assert list(q.reason) == ["missing_user_id"]
