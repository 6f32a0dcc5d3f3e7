"""Shared fixtures: one local[2] SparkSession for the whole run, and a tiny random BERT."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from jobs.session import BASE_CONF, local_env  # noqa: E402 - needs the repo on sys.path

local_env()

TINY_WORDS = (
    "the a is and of to in it this was very good great bad fit dress shirt shoes size fabric phone laptop battery "
    "screen camera movie film actor plot scene hotel flight beach trip food pizza noodles taste recipe baby kids "
    "stroller diaper toy delivery price ok thanks love hate nice soft fast slow cheap expensive"
).split()
TINY_CJK = "这件连衣裙面料很舒服尺码合适手机电池续航强拍照清晰电影剧情演员酒店航班海滩美食味道宝宝玩具好的是了"


TIERS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(config, items):
    """Every test gets one tier (pytest.ini): e2e where its module or itself says so (whole job
    runs), integration where it is marked so or needs the Spark session or the model, else
    unit. `make test-fast` runs the unit tier; `make test` runs all three."""
    for item in items:
        if item.get_closest_marker("e2e"):
            continue
        if item.get_closest_marker("integration") or {"spark", "tiny_model"} & set(item.fixturenames):
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)


def local_conf(base: dict, **over) -> dict:
    """conf/local.yaml + `base` + keyword overrides spelled with "__" for nesting
    (embed__model_path=p -> {"embed": {"model_path": p}}), validated like the jobs do.

    MLflow tracking is off unless `base` or an override sets tracking.mlflow: tests/test_tracking.py
    and the sample run (tests/test_end_to_end.py) track; elsewhere no test checks it, and every
    tracked run into a fresh lake creates its SQLite store (MLflow's schema migrations) and logs
    the model: seconds per job run."""
    from jobs import config

    base.setdefault("tracking", {}).setdefault("mlflow", False)
    for key, value in over.items():
        *parents, last = key.split("__")
        node = base
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value  # None too: input__events__path=None switches the profile's events off
    return config.load(str(ROOT / "conf" / "local.yaml"), base)


# The test session's settings for tiny inputs (see `spark` below), also handed to the jobs the
# tests start as subprocesses, through `subprocess_profile()`.
TEST_SPARK_CONF = {
    "spark.sql.shuffle.partitions": "2",
    # The tests' inputs are tens of rows: compiling whole-stage Java code and re-planning every
    # stage adaptively cost far more CPU than they save. Measured on one job run (30 users, tiny
    # model, warm JVM, 2 cores): 45 s with both, 28 s without.
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.adaptive.enabled": "false",
    # Expressions interpreted rather than compiled to Java (Janino) and then JIT-compiled: for
    # tens of rows the compiling is most of the CPU. Measured on the same warm job run (18 users,
    # tiny model): 47 s compiled, 36 s interpreted. (Production keeps Spark's default.)
    "spark.sql.codegen.factoryMode": "NO_CODEGEN",
    # Delta reconstructs a table's state in this many tasks (50 by default): the tests' tables are tiny.
    "spark.databricks.delta.snapshotPartitions": "1",
}
_PROFILE: list[str] = []


def subprocess_profile(master: str | None = None) -> str:
    """conf/local.yaml with TEST_SPARK_CONF (and `master`), MLflow tracking off, written once per
    test process: the profile for the jobs that tests run as subprocesses (`--conf`)."""
    import tempfile

    import yaml

    if master is None and _PROFILE:
        return _PROFILE[0]
    prof = yaml.safe_load((ROOT / "conf" / "local.yaml").read_text())
    prof["spark"]["conf"].update(TEST_SPARK_CONF)
    prof["tracking"] = {"mlflow": False}  # (as in local_conf: no test of a subprocess job checks MLflow)
    prof["spark"]["conf"]["spark.driver.memory"] = "2g"  # (beside two test sessions: see `spark` below)
    if master:
        prof["spark"]["master"] = master
    fd, path = tempfile.mkstemp(prefix="seglake-test-", suffix=".yaml")
    with os.fdopen(fd, "w") as out:
        yaml.safe_dump(prof, out)
    if master is None:
        _PROFILE.append(path)
    return path


# Tests run where the job runs: on Spark with delta-spark (the Delta jars from the cache that
# `make venv` fills; resolved from Maven on first use otherwise).
def delta_settings() -> dict[str, str]:
    """What a test session needs for native Delta: jars, extension, catalog, SegLake's defaults."""
    from jobs import delta_jars
    from jobs.session import with_delta

    jars, why = delta_jars.ensure()
    if not jars:
        pytest.exit(f"the tests need the Delta jars: {why}", returncode=3)
    return with_delta({}, jars)  # (TEST_SPARK_CONF holds the Delta settings for tiny tables)


# The session's runtime SQL settings (TEST_SPARK_CONF's and the fixture's own), put back after
# every test: a job's main() run in this process (seglake-assign --conf conf/local.yaml, say)
# applies its profile's spark.sql.* settings to the shared session (jobs/session.py), and
# conf/local.yaml's 8 shuffle partitions would otherwise stay for every later test.
SESSION_SQL_CONF = {
    **{k: v for k, v in TEST_SPARK_CONF.items() if k.startswith("spark.sql.")},
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.execution.arrow.maxRecordsPerBatch": "512",
}


@pytest.fixture(autouse=True)
def _session_sql_conf_restored(request):
    yield
    if "spark" not in request.fixturenames:  # (only tests on the shared session run jobs in it)
        return
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    if session is not None:
        for key, value in SESSION_SQL_CONF.items():
            if session.conf.get(key) != value:
                session.conf.set(key, value)


@pytest.fixture(scope="session")
def spark():
    from pyspark.sql import SparkSession

    builder = SparkSession.builder
    for key, value in TEST_SPARK_CONF.items():
        builder = builder.config(key, value)
    # SEGLAKE_TEST_SESSION=plain: a session without Delta, to compare the engines' costs.
    if os.environ.get("SEGLAKE_TEST_SESSION") != "plain":
        for key, value in delta_settings().items():
            builder = builder.config(key, value)
    session = (
        builder.master("local[2]")
        .appName("seglake-tests")
        .config("spark.default.parallelism", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", SESSION_SQL_CONF["spark.sql.session.timeZone"])
        # Two test sessions run at once (make test: two xdist workers) beside the jobs tests
        # start as subprocesses (two drivers at once in test_faults): at 6g each one session
        # was OOM-killed, at 3g one ran out of heap late in its hundreds of jobs.
        .config("spark.driver.memory", "4g")
        # One driver serves hundreds of jobs here: keep the UI listeners' history short (their
        # plans and metrics otherwise pile up in the heap over a whole test run).
        .config("spark.sql.ui.retainedExecutions", "50")
        # The jobs' caps on plan text (jobs/session.py: rendering it cost about a fifth of a tiny full run).
        .config("spark.sql.maxPlanStringLength", BASE_CONF["spark.sql.maxPlanStringLength"])
        .config("spark.sql.ui.explainMode", BASE_CONF["spark.sql.ui.explainMode"])
        .config("spark.ui.retainedJobs", "100")
        .config("spark.ui.retainedStages", "100")
        .config("spark.python.worker.reuse", "true")
        # Workers forked from a daemon that has torch and transformers loaded (tests/spark_daemon.py);
        # the repo root on their path finds it wherever pytest was started.
        .config("spark.python.daemon.module", "tests.spark_daemon")
        .config("spark.executorEnv.PYTHONPATH", os.pathsep.join(
            [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", SESSION_SQL_CONF["spark.sql.execution.arrow.maxRecordsPerBatch"])
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def make_tiny_bert(path: Path) -> str:
    """A random 2-layer BERT with a small English + CJK vocab, saved like a real model dir
    (also used by bench/incremental.py for runs at scale without the real model's cost)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + TINY_WORDS + list(dict.fromkeys(TINY_CJK))
    vocab += [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz"] + list("abcdefghijklmnopqrstuvwxyz0123456789.,!?[]")
    vocab = list(dict.fromkeys(vocab))
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # The vocabulary as a mapping: transformers 5 ignores a `vocab_file` argument here and
    # builds a tokenizer of the 5 special tokens, which maps every word to [UNK].
    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    assert tok.tokenize("phone battery")[0] == "phone", "the tiny tokenizer lost its vocabulary"
    tok.save_pretrained(path)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).eval().save_pretrained(path)
    return str(path)


def built_once(tmp_path_factory, name: str, build: Callable[[Path], object]) -> Path:
    """A folder `build(folder)` fills once per test run, shared by every xdist worker: the first
    worker to ask builds it under a file lock, the others wait and get the same folder. Users
    read it or copy it, never change it. (xdist's workers share their base temp's parent.)"""
    from udfs.onnx_export import file_lock  # (the lock the ONNX exports take: one process at a time per node)

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "built-once"
    root.mkdir(exist_ok=True)
    target, done = root / name, root / f"{name}.done"
    with file_lock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(target, ignore_errors=True)  # what a worker that failed half-way left
            target.mkdir()
            build(target)
            done.touch()
    return target


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return str(built_once(tmp_path_factory, "tiny-bert", make_tiny_bert))
