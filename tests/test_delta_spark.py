"""Delta Lake the way Spark users run it: delta-spark as the engine (its jars from the cache that
`make venv` fills), tested for what users rely on: jars resolved once, the delta-rs fallback,
commit conflicts between writers, Change Data Feed, streaming from Delta tables, a metastore,
maintenance, and tables that delta-rs and Sail read the same."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import subprocess_profile
from pyspark.sql import functions as F

from jobs import assign, delta_io, delta_jars, delta_native, maintain
from jobs.delta_io import DeltaConflict, merge, read_table, write_run
from tests.test_assign import F1_TEXTS, NEW_TEXTS, OTHER_TEXTS, _conf, _csv, _segments, _table, history_lake

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "run_id string, user_id long, name string"

pytestmark = pytest.mark.integration


def _rows(spark, run_id: str, n: int, offset: int = 0):
    return spark.createDataFrame([(run_id, offset + i, f"{run_id}-{offset + i}") for i in range(n)], SCHEMA)


def _protocol(path) -> tuple[int, int, set, set]:
    from deltalake import DeltaTable

    p = DeltaTable(str(path)).protocol()
    return p.min_reader_version, p.min_writer_version, set(p.reader_features or []), set(p.writer_features or [])


def _python(script: str, *args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


# ------------------------------------------------------------------------------------------
# Jars: resolved once, cached, handed to sessions; auto falls back when they cannot be had
# ------------------------------------------------------------------------------------------


def test_session_loads_the_cached_jars_and_resolves_nothing(spark):
    jars = delta_jars.cached_jars()
    assert jars and any(Path(j).name.startswith("io.delta_delta-spark_4.2_2.13-") for j in jars)
    loaded = spark.sparkContext.getConf().get("spark.jars", "")
    assert all(j in loaded for j in jars)
    assert not spark.sparkContext.getConf().get("spark.jars.packages", "")  # no Ivy at session start
    assert delta_jars.coordinate("4.2.0") == f"io.delta:delta-spark_4.2_2.13:{delta_jars.DELTA_VERSION}"
    import delta

    assert delta.__version__ == delta_jars.DELTA_VERSION  # the Python API matches the jars


def test_manifest_needs_every_jar(tmp_path):
    coord = "io.delta:delta-spark_9.9_2.13:0.0.1"
    jar = tmp_path / "a.jar"
    jar.write_bytes(b"x")
    (tmp_path / (coord.replace(":", "_") + ".json")).write_text(json.dumps({"jars": [str(jar)]}))
    assert delta_jars.cached_jars(tmp_path, coord) == [str(jar)]
    jar.unlink()
    assert delta_jars.cached_jars(tmp_path, coord) is None  # a half-deleted cache is no cache


def test_auto_falls_back_to_delta_rs_and_native_refuses(tmp_path, tiny_model):
    """No cached jars and no way to fetch them: auto says why in one line and writes with
    delta-rs; --engine native stops before Spark starts (exit 2, one line)."""
    env = {"SEGLAKE_DELTA_JARS_DIR": str(tmp_path / "empty"), "SEGLAKE_DELTA_JARS_OFFLINE": "1"}
    script = textwrap.dedent("""
        from jobs.session import build_session, setup_logging
        from jobs import delta_io
        setup_logging("INFO")
        spark = build_session({"master": "local[1]", "conf": {"spark.ui.enabled": "false"}}, "auto")
        print("ENGINE", delta_io.resolve_engine(spark, "auto"))
    """)
    out = _python(script, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ENGINE delta-rs" in out.stdout
    lines = [ln for ln in out.stderr.splitlines() if "native Delta is unavailable" in ln]
    assert len(lines) == 1 and "not cached" in lines[0]

    texts = _csv(tmp_path / "t.csv", "user_id,text", ["u1,hello there"])
    cli = subprocess.run([sys.executable, "-m", "tests.fault_hooks", "segment", "--conf", subprocess_profile(),
                          "--texts", texts, "--no-events", "--output", str(tmp_path / "lake"), "--engine", "native",
                          "--model-path", tiny_model], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, **env})
    assert cli.returncode == 2, cli.stderr[-2000:]
    assert "Traceback" not in cli.stderr and "engine is native but the Delta jars cannot be had" in cli.stderr
    assert not (tmp_path / "lake").exists()


# ------------------------------------------------------------------------------------------
# Two writers at once: nothing lost, nothing duplicated
# ------------------------------------------------------------------------------------------


class _Conflict(Exception):
    pass


def test_commit_conflicts_are_retried_for_writes_and_reported_for_merges(monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda s: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise _Conflict("io.delta.exceptions.ConcurrentAppendException: Files were added to partition ...")
        return 42

    assert delta_io.committing("/t", "write", flaky, retry=True) == 42 and len(calls) == 3
    calls.clear()
    with pytest.raises(DeltaConflict, match="another writer committed to the Delta table /t at the same time"):
        delta_io.committing("/t", "MERGE", flaky, retry=False)
    assert len(calls) == 1  # not retried
    with pytest.raises(DeltaConflict, match="after 5 attempts"):
        delta_io.committing("/t", "write", lambda: (_ for _ in ()).throw(_Conflict("DELTA_CONCURRENT_APPEND")),
                             retry=True)
    with pytest.raises(ValueError):  # anything else is not a conflict
        delta_io.committing("/t", "write", lambda: (_ for _ in ()).throw(ValueError("bad")), retry=True)
    assert delta_io.is_conflict(_Conflict("[DELTA_CONCURRENT_APPEND.WITH_PARTITION_HINT] ..."))
    assert not delta_io.is_conflict(RuntimeError("disk full"))


def _race(*jobs):
    """Run the callables at the same moment in threads; returns their results or exceptions."""
    barrier, out = threading.Barrier(len(jobs)), [None] * len(jobs)

    def go(i, job):
        barrier.wait()
        try:
            out[i] = job()
        except Exception as exc:  # noqa: BLE001 - returned to the test
            out[i] = exc

    threads = [threading.Thread(target=go, args=(i, j)) for i, j in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    return out


def test_two_writers_at_once_lose_no_commit_and_duplicate_no_row(spark, tmp_path):
    path = str(tmp_path / "t")
    # Both create the table at once, then each writes its own runs.
    a = lambda: [write_run(_rows(spark, f"a{i}", 3 + i), path, f"a{i}") for i in range(3)]  # noqa: E731
    b = lambda: [write_run(_rows(spark, f"b{i}", 5), path, f"b{i}") for i in range(3)]  # noqa: E731
    assert _race(a, b) == [[3, 4, 5], [5, 5, 5]]
    counts = {r.run_id: r["count"] for r in read_table(spark, path).groupBy("run_id").count().collect()}
    assert counts == {"a0": 3, "a1": 4, "a2": 5, "b0": 5, "b1": 5, "b2": 5}
    # Both rewrite the same run at once: one writer's rows, never both.
    one, two = _rows(spark, "a1", 2, offset=100), _rows(spark, "a1", 3, offset=200)
    assert sorted(_race(lambda: write_run(one, path, "a1"), lambda: write_run(two, path, "a1"))) == [2, 3]
    ids = sorted(r.user_id for r in read_table(spark, path).where("run_id = 'a1'").collect())
    assert ids in ([100, 101], [200, 201, 202])
    assert read_table(spark, path).count() == 3 + len(ids) + 5 + 15


def test_a_merge_that_loses_a_race_commits_nothing(spark, tmp_path, monkeypatch):
    """A MERGE whose source is still being computed while another writer commits: delta-spark
    refuses its commit, SegLake reports DeltaConflict (exit 4 in the jobs), nothing of it landed,
    and running it again applies it once. (delta_io.merge computes its source before the MERGE
    starts, which narrows that window to the MERGE's own scans; the source is left lazy here
    so that a commit can land inside it on cue.)"""
    monkeypatch.setattr(delta_io, "_materialized", lambda df: df)
    path = str(tmp_path / "t")
    merge(spark.createDataFrame([("r", i, "old") for i in range(4)], SCHEMA), path, ["user_id"])

    @F.udf("string")
    def slow(name):
        time.sleep(4)  # the source is computed after the MERGE took its snapshot
        return name

    source = spark.createDataFrame([("r", 1, "new"), ("r", 9, "new")], SCHEMA).repartition(1) \
        .withColumn("name", slow("name"))

    def other_writer():
        time.sleep(1.5)
        return merge(spark.createDataFrame([("r", 5, "other")], SCHEMA), path, ["user_id"])

    first, second = _race(lambda: merge(source, path, ["user_id"]), other_writer)
    assert second["inserted"] == 1
    assert isinstance(first, DeltaConflict) and "rerun it" in str(first)
    names = {r.user_id: r.name for r in read_table(spark, path).collect()}
    assert names == {0: "old", 1: "old", 2: "old", 3: "old", 5: "other"}  # nothing of the loser
    assert merge(source, path, ["user_id"])["inserted"] == 1
    names = {r.user_id: r.name for r in read_table(spark, path).collect()}
    assert names == {0: "old", 1: "new", 2: "old", 3: "old", 5: "other", 9: "new"}


# ------------------------------------------------------------------------------------------
# The jobs on native Delta: CDF, racing assign batches, streaming from Delta tables
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cdf_lake(spark, tiny_model, tmp_path_factory):
    """The full run on the history, with Change Data Feed on user_segments: the one
    tests/test_assign.py makes (tests copy the lake before changing it)."""
    return history_lake(spark, tiny_model, tmp_path_factory)


def _copy_lake(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src / "lake", dst / "lake")
    return dst / "lake"


@pytest.fixture(scope="module")
def cdf_one_batch(spark, tiny_model, cdf_lake, tmp_path_factory) -> Path:
    """The reference the concurrent and streamed batches below must equal: F1_TEXTS and
    OTHER_TEXTS applied to a copy of cdf_lake in one plain batch (read only). The two sets touch
    disjoint users, so one batch equals them applied one after the other, in either order."""
    tmp = tmp_path_factory.mktemp("cdf-one")
    lake = _copy_lake(cdf_lake, tmp)
    texts = _csv(tmp / "in" / "texts.csv", "user_id,text,ts,item_id,lang", F1_TEXTS + OTHER_TEXTS)
    assign.run(spark, _conf(tmp, tiny_model, run_id="one", assign__texts__path=texts))  # (output: tmp/lake)
    return lake


def test_change_data_feed_shows_who_changed_segment(spark, tiny_model, cdf_lake, tmp_path):
    lake = _copy_lake(cdf_lake, tmp_path)
    us = str(lake / "user_segments")
    props = spark.sql(f"DESCRIBE DETAIL delta.`{us}`").first()["properties"]
    assert props["delta.enableChangeDataFeed"] == "true"
    after_full = delta_io.table_version(spark, us)
    texts = _csv(tmp_path / "new" / "texts.csv", "user_id,text,ts,item_id,lang", NEW_TEXTS)
    conf = _conf(tmp_path, tiny_model, run_id="a1", assign__texts__path=texts, output__change_data_feed=True)
    before = _segments(lake)
    assign.run(spark, conf)
    after = _segments(lake)

    # What a downstream recommender reads: the rows that changed since the version it last saw.
    changes = (spark.read.format("delta").option("readChangeFeed", "true")
               .option("startingVersion", after_full + 1).load(us)
               .where(F.col("_change_type").isin("insert", "update_postimage")).toPandas())
    assert set(changes.user_id) == {"f1", "t2", "n1", "n2"}  # the batch's users, nobody else
    moved = {u for u in before.index.intersection(after.index) if before.segment_id[u] != after.segment_id[u]}
    assert moved and moved <= set(changes.user_id)
    pre = (spark.read.format("delta").option("readChangeFeed", "true").option("startingVersion", after_full + 1)
           .load(us).where("_change_type = 'update_preimage'").toPandas().set_index("user_id"))
    assert all(pre.segment_id[u] == before.segment_id[u] for u in moved)  # the old segment, for the diff
    # delta-rs reads the same table (CDF is a writer feature: no reader needs more).
    assert _protocol(us)[0] == 1 and len(_table(us)) == len(after)


def test_two_assign_batches_racing_apply_once(spark, tiny_model, cdf_lake, cdf_one_batch, tmp_path):
    """Two batches on one root at once with the lock off (as on S3, where it is best effort):
    Delta's optimistic concurrency refuses a MERGE over a commit it did not see; the loser
    reports it (DeltaConflict: exit 4), a rerun completes it, and the state equals the batches
    applied without a race (`cdf_one_batch`)."""
    lake = _copy_lake(cdf_lake, tmp_path / "race")
    ref = cdf_one_batch
    t1 = _csv(tmp_path / "b1" / "texts.csv", "user_id,text,ts,item_id,lang", F1_TEXTS)
    t2 = _csv(tmp_path / "b2" / "texts.csv", "user_id,text,ts,item_id,lang", OTHER_TEXTS)

    def conf(root, texts, run_id):
        c = _conf(tmp_path / run_id, tiny_model, run_id=run_id, assign__texts__path=texts, output__lock=False,
                  assign__watermark=False)
        return {**c, "output": {**c["output"], "root": str(root)}}

    results = _race(lambda: assign.run(spark, conf(lake, t1, "b1")), lambda: assign.run(spark, conf(lake, t2, "b2")))
    for res, (texts, rid) in zip(results, ((t1, "b1"), (t2, "b2"))):
        if isinstance(res, Exception):
            assert isinstance(res, DeltaConflict), repr(res)
            assign.run(spark, conf(lake, texts, rid))  # the rerun the message asks for

    for name in ("user_vectors",):
        got = _table(lake / name).set_index("user_id").sort_index()
        want = _table(ref / name).set_index("user_id").sort_index()
        assert list(got.index) == list(want.index) and got.index.is_unique
        assert (got.n_texts == want.n_texts).all()
    assert got.loc["f1", "n_texts"] == 18  # applied once
    s, q = _segments(lake), _segments(ref)
    assert list(s.index) == list(q.index) and (s.segment_id == q.segment_id).all()
    runs = _table(lake / "assign_runs").set_index("run_id")
    assert set(runs.index) == {"b1", "b2"} and (runs.status == "succeeded").all()


def test_stream_from_delta_tables_resumes_from_its_checkpoint(spark, tiny_model, cdf_lake, cdf_one_batch, tmp_path):
    """seglake-assign --stream over Delta input tables (readStream.format("delta"), availableNow):
    a restart processes only the rows appended since, and the result equals one batch."""
    lake = _copy_lake(cdf_lake, tmp_path / "s")
    once = cdf_one_batch
    cols = "user_id string, text string, ts string, item_id string, lang string"

    def rows(lines):
        return spark.createDataFrame([tuple(ln.split(",")) for ln in lines], cols)

    src = str(tmp_path / "in" / "texts_delta")
    rows(F1_TEXTS).write.format("delta").save(src)
    conf = _conf(tmp_path, tiny_model, run_id="s", assign__texts__path=src, assign__texts__format="delta",
                 assign__trigger="available-now", assign__checkpoint=str(tmp_path / "ckpt"))
    conf = {**conf, "output": {**conf["output"], "root": str(lake)}}
    first = assign.run_stream(spark, conf)
    assert sum(r.counts["texts_read"] for r in first) == len(F1_TEXTS)
    rows(OTHER_TEXTS).write.format("delta").mode("append").save(src)
    second = assign.run_stream(spark, conf)  # the restart: only the appended rows
    assert sum(r.counts["texts_read"] for r in second) == len(OTHER_TEXTS)

    s, b = _segments(lake), _segments(once)
    assert list(s.index) == list(b.index) and (s.segment_id == b.segment_id).all()
    sv = _table(lake / "user_vectors").set_index("user_id").sort_index()
    bv = _table(once / "user_vectors").set_index("user_id").sort_index()
    assert (sv.n_texts == bv.n_texts).all() and sv.loc["f1", "n_texts"] == 18


# ------------------------------------------------------------------------------------------
# Cross-engine: what delta-spark writes, delta-rs and Sail read the same, and the reverse
# ------------------------------------------------------------------------------------------

# Reader features each engine honours here (delta-rs 1.6.6 refuses deletion vectors; Sail 0.7.2
# reads plain tables): SegLake's tables need none. Writer features SegLake's tables may carry,
# which every engine that writes them supports: changeDataFeed (CDF) and what it implies.
READER_FEATURES_OK: set = set()
WRITER_FEATURES_OK = {"appendOnly", "invariants", "changeDataFeed"}

_SAIL_READ = """
import json, sys
from pysail.spark import SparkConnectServer
from pyspark.sql import SparkSession
server = SparkConnectServer(ip="127.0.0.1", port=0)
server.start(background=True)
spark = SparkSession.builder.remote(f"sc://127.0.0.1:{server.listening_address[1]}").getOrCreate()
out = {}
for path in sys.argv[1:]:
    df = spark.read.format("delta").load(path)
    key = "user_id" if "user_id" in df.columns else df.columns[0]
    out[path] = [df.count(), sorted(str(r[0]) for r in df.select(key).distinct().collect())[:50]]
print("SAIL " + json.dumps(out))
"""


def _sail_read(paths: list[str]) -> dict:
    pytest.importorskip("pysail")
    out = _python(_SAIL_READ, *paths)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("SAIL "))[5:])


def _spark_read(spark, path: str, engine: str) -> list:
    df = read_table(spark, path, engine=engine)
    key = "user_id" if "user_id" in df.columns else df.columns[0]
    return [df.count(), sorted(str(r[0]) for r in df.select(key).distinct().collect())[:50]]


def test_job_tables_read_the_same_in_delta_rs_and_sail(spark, cdf_lake):
    """Every table a native run wrote: protocol inside what all three engines read, written by the
    Spark Delta engine, and the same rows through delta-rs and Sail."""
    from deltalake import DeltaTable

    lake = cdf_lake / "lake"
    paths = sorted(str(p) for p in lake.iterdir() if (p / "_delta_log").is_dir())
    assert {Path(p).name for p in paths} >= {"user_segments", "segments", "user_vectors", "text_embeddings", "runs"}
    for p in paths:
        reader, writer, rf, wf = _protocol(p)
        assert reader == 1 and rf <= READER_FEATURES_OK, (p, reader, rf)
        assert wf <= WRITER_FEATURES_OK, (p, wf)  # a new table feature here would break a reader
        assert DeltaTable(p).history(1)[0]["engineInfo"].startswith("Apache-Spark/")  # delta-spark wrote it
    sail = _sail_read(paths)
    for p in paths:
        native = _spark_read(spark, p, "native")
        assert _spark_read(spark, p, "delta-rs") == native, p
        assert sail[p] == native, p


def test_delta_rs_tables_read_the_same_in_delta_spark_and_sail(spark, tmp_path):
    path = str(tmp_path / "t")
    write_run(_rows(spark, "r1", 7), path, "r1", engine="delta-rs")
    write_run(_rows(spark, "r2", 3, offset=50), path, "r2", engine="delta-rs",
              properties=delta_io.CDF_PROPERTIES)  # (CDF switched on later: one property commit)
    assert _spark_read(spark, path, "native") == _spark_read(spark, path, "delta-rs") == _sail_read([path])[path]
    assert spark.sql(f"DESCRIBE DETAIL delta.`{path}`").first()["properties"]["delta.enableChangeDataFeed"] == "true"
    # delta-spark appends to it, and delta-rs still reads it.
    write_run(_rows(spark, "r3", 2), path, "r3", engine="native")
    assert _spark_read(spark, path, "delta-rs")[0] == 12


def test_rows_written_come_from_the_commit_and_without_its_metrics_from_a_count(spark, tmp_path):
    """write_run's row count: the tagged commit's numOutputRows, where Delta records metrics; a
    count of the committed partition where it does not. The session's own userMetadata stays."""
    path = str(tmp_path / "t")

    def rows(run_id: str, n: int):
        return spark.range(n).select(F.lit(run_id).alias("run_id"), F.col("id"))

    key, meta = "spark.databricks.delta.history.metricsEnabled", "spark.databricks.delta.commitInfo.userMetadata"
    spark.conf.set(meta, "nightly load")
    try:
        assert write_run(rows("r1", 7), path, "r1", engine="native") == 7
        assert write_run(rows("r1", 3), path, "r1", engine="native") == 3  # replaced, not added
        spark.conf.set(key, "false")
        assert write_run(rows("r2", 5), path, "r2", engine="native") == 5
    finally:
        spark.conf.unset(key)
        spark.conf.unset(meta)
    history = spark.sql(f"DESCRIBE HISTORY delta.`{path}`").orderBy("version").collect()
    assert [(h.operationMetrics or {}).get("numOutputRows") for h in history] == ["7", "3", None]
    assert all(h.userMetadata.startswith("nightly load (seglake-write-") for h in history)
    # The count fallback runs only where the tagged commit has no metrics.
    tags = [h.userMetadata for h in history]
    assert delta_native._rows_committed(spark, path, tags[1], lambda: -1) == 3
    assert delta_native._rows_committed(spark, path, tags[2], lambda: -1) == -1


def test_tables_never_get_deletion_vectors(spark, tmp_path):
    """A session (Databricks' defaults, say) that turns deletion vectors on for new tables: SegLake's
    tables still come without them, so delta-rs (seglake-explain) reads them. The same table
    feature on a table made elsewhere is refused by the delta-rs reader with a clear error."""
    key = "spark.databricks.delta.properties.defaults.enableDeletionVectors"
    spark.conf.set(key, "true")
    try:
        write_run(_rows(spark, "r1", 4), str(tmp_path / "ours"), "r1")
        spark.createDataFrame([(1,)], "n long").write.format("delta").save(str(tmp_path / "theirs"))
    finally:
        spark.conf.set(key, "false")
    assert "deletionVectors" not in _protocol(tmp_path / "ours")[2] | _protocol(tmp_path / "ours")[3]
    assert _spark_read(spark, str(tmp_path / "ours"), "delta-rs")[0] == 4
    assert "deletionVectors" in _protocol(tmp_path / "theirs")[2]
    with pytest.raises(delta_io.NativeDeltaRequired):
        read_table(spark, str(tmp_path / "theirs"), engine="delta-rs")


# ------------------------------------------------------------------------------------------
# Catalog registration in a local (Derby) metastore
# ------------------------------------------------------------------------------------------

_METASTORE = """
import json, sys
sys.path.insert(0, {repo!r})
from pyspark.sql import SparkSession
from jobs import delta_jars
from jobs.session import with_delta
from jobs.delta_io import register_tables, write_run
warehouse, step = sys.argv[1], sys.argv[2]
b = SparkSession.builder.master("local[1]").enableHiveSupport()
for k, v in with_delta({{"spark.sql.warehouse.dir": warehouse + "/wh", "spark.ui.enabled": "false",
                         "spark.databricks.delta.snapshotPartitions": "1",
                         "spark.hadoop.javax.jdo.option.ConnectionURL": f"jdbc:derby:;databaseName={{warehouse}}/metastore_db;create=true"}},
                       delta_jars.cached_jars()).items():
    b = b.config(k, v)
spark = b.getOrCreate()
assert spark.conf.get("spark.sql.catalogImplementation") == "hive"
out = {{}}
if step == "register":
    df = spark.createDataFrame([("r1", 1), ("r1", 2)], "run_id string, n long")
    write_run(df, warehouse + "/lake/segments", "r1")
    out["first"] = register_tables(spark, {{"segments": warehouse + "/lake/segments",
                                           "runs": warehouse + "/lake/runs"}}, "seglake")
    out["again"] = register_tables(spark, {{"segments": warehouse + "/lake/segments"}}, "seglake")
    write_run(spark.createDataFrame([("r1", 9)], "run_id string, n long"), warehouse + "/elsewhere", "r1")
    try:
        register_tables(spark, {{"segments": warehouse + "/elsewhere"}}, "seglake")
    except ValueError as e:
        out["refused"] = str(e)
else:
    out["count"] = spark.table("seglake.segments").count()
    out["provider"] = spark.sql("DESCRIBE TABLE EXTENDED seglake.segments").where("col_name = 'Provider'").first()[1]
print("OUT " + json.dumps(out))
"""


def test_catalog_registration_in_a_local_metastore(tmp_path):
    script = _METASTORE.format(repo=str(ROOT))

    def step(name):
        out = _python(script, str(tmp_path), name)
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("OUT "))[4:])

    first = step("register")
    assert first["first"] == {"segments": "seglake.segments"}  # runs: not written, skipped
    assert first["again"] == first["first"]  # idempotent
    assert "already points at" in first["refused"]
    later = step("read")  # a new driver: the name lives in the metastore
    assert later == {"count": 2, "provider": "delta"}


# ------------------------------------------------------------------------------------------
# Maintenance: OPTIMIZE and VACUUM
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["native", "delta-rs"])
def test_maintain_compacts_small_files_and_vacuums_safely(spark, tmp_path, engine):
    root = tmp_path / "lake"
    path = str(root / "drift")
    for i in range(4):  # many small commits into one partition, as assign runs and streams leave them
        df = _rows(spark, "r1", 40, offset=40 * i).repartition(3)
        if engine == "native":
            df.write.format("delta").mode("append").partitionBy("run_id").save(path)
        else:
            from deltalake import write_deltalake

            write_deltalake(path, df.toArrow(), mode="append", partition_by=["run_id"])
    before = sorted(r.user_id for r in read_table(spark, path, engine=engine).collect())
    (res,) = maintain.maintain(spark if engine == "native" else None, str(root), optimize=True, engine=engine)
    assert res.files_before > res.files_after == 1 and res.files_compacted == res.files_before
    assert sorted(r.user_id for r in read_table(spark, path, engine=engine).collect()) == before == list(range(160))
    with pytest.raises(maintain.MaintainError, match="below Delta's default retention of 168 hours"):
        maintain.maintain(spark, str(root), vacuum=True, optimize=False, retain_hours=0, engine=engine)
    (kept,) = maintain.maintain(spark if engine == "native" else None, str(root), optimize=False, vacuum=True,
                                engine=engine)
    assert kept.files_vacuumed == 0  # the default retention keeps every file of the last 7 days
    (gone,) = maintain.maintain(spark if engine == "native" else None, str(root), optimize=False, vacuum=True,
                                retain_hours=0, allow_short_retention=True, engine=engine)
    assert gone.files_vacuumed >= res.files_compacted  # now every file no current version needs
    assert sorted(r.user_id for r in read_table(spark, path, engine=engine).collect()) == before


def test_maintain_cli_refuses_short_retention_and_unknown_tables(tmp_path, capsys):
    assert maintain.main(["--output", str(tmp_path), "--vacuum", "--retain-hours", "1", "--engine", "delta-rs"]) == 2
    assert "--allow-short-retention" in capsys.readouterr().err
    assert maintain.main(["--output", str(tmp_path), "--engine", "delta-rs"]) == 2
    with pytest.raises(maintain.MaintainError, match="unknown tables"):
        maintain.maintain(None, str(tmp_path), tables=["nope"])
