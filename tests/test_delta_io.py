"""Tests for jobs.delta_io: each API test runs on both engines (native: Spark + delta-spark, the
job's default; delta-rs: the fallback writer), each table cross-checked through the other
engine's reader; the native branch also runs against Sail, a third, independent engine."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    DoubleType,
    FloatType,
    LongType,
    StringType,
    StructField,
    StructType,
)

from jobs import delta_io, delta_rs
from jobs.delta_io import (
    DeltaSchemaMismatch,
    NativeDeltaRequired,
    merge,
    overwrite_table,
    read_table,
    resolve_engine,
    table_exists,
    table_version,
    write_run,
)

REPO = Path(__file__).resolve().parents[1]

BASIC = "run_id string, user_id long, name string, score double"


@pytest.fixture(params=["native", "delta-rs"])
def engine(request, monkeypatch) -> str:
    """Run the test with `auto` resolving to this engine (delta_io's functions read it at call time)."""
    real = delta_io.resolve_engine
    monkeypatch.setattr(delta_io, "resolve_engine",
                        lambda spark, engine="auto": request.param if engine == "auto" else real(spark, engine))
    return request.param


def _commits(engine: str, native: int, delta_rs: int) -> int:
    """Commits a step takes: native Delta evolves the schema inside the data commit (mergeSchema),
    the delta-rs writer commits the new columns first."""
    return native if engine == "native" else delta_rs


def _basic_df(spark: SparkSession, run_id: str, n: int, offset: int = 0):
    rows = [(run_id, offset + i, f"user{offset + i}", (offset + i) / 2) for i in range(n)]
    return spark.createDataFrame(rows, BASIC)


def _delta_rows(path: str) -> list[dict]:
    from deltalake import DeltaTable

    return DeltaTable(path).to_pyarrow_table().to_pylist()


def _version(path: str) -> int:
    from deltalake import DeltaTable

    return DeltaTable(path).version()


def _per_run(rows: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r["run_id"]] = out.get(r["run_id"], 0) + 1
    return out


def _log_adds(path: str) -> list[dict]:
    """Add actions of the table's current files, as written in the log."""
    from deltalake import DeltaTable

    current = {p for p in pa.table(DeltaTable(path).get_add_actions()).column("path").to_pylist()}
    adds = []
    for f in sorted(Path(path, "_delta_log").glob("*.json")):
        for line in f.read_text().splitlines():
            action = json.loads(line)
            if "add" in action and action["add"]["path"] in current:
                adds.append(action["add"])
    return adds


def test_create_and_read_back(spark, engine, tmp_path):
    path = str(tmp_path / "t")
    assert not table_exists(path)
    assert write_run(_basic_df(spark, "r1", 5).repartition(2), path, "r1") == 5
    assert table_exists(path)
    assert _version(path) == 0  # created with its data in one commit

    rows = sorted(_delta_rows(path), key=lambda r: r["user_id"])
    assert [r["user_id"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[3] == {"run_id": "r1", "user_id": 3, "name": "user3", "score": 1.5}

    df = read_table(spark, path)
    assert df.columns == ["run_id", "user_id", "name", "score"]
    got = sorted((r.run_id, r.user_id, r.name, r.score) for r in df.collect())
    assert got == [("r1", i, f"user{i}", i / 2) for i in range(5)]
    # Files sit in the run's partition folder and the log records the partition value.
    adds = _log_adds(path)
    assert adds and all(a["path"].startswith("run_id=r1/part-") for a in adds)
    assert all(a["partitionValues"] == {"run_id": "r1"} for a in adds)


def test_rerun_replaces_and_keeps_other_runs(spark, engine, tmp_path):
    path = str(tmp_path / "t")
    write_run(_basic_df(spark, "r1", 4), path, "r1")
    write_run(_basic_df(spark, "r2", 3, offset=100), path, "r2")
    assert write_run(_basic_df(spark, "r1", 2, offset=50), path, "r1") == 2
    assert _version(path) == 2  # one commit per write

    rows = _delta_rows(path)
    assert _per_run(rows) == {"r1": 2, "r2": 3}
    assert sorted(r["user_id"] for r in rows if r["run_id"] == "r1") == [50, 51]
    assert sorted(r["user_id"] for r in rows if r["run_id"] == "r2") == [100, 101, 102]
    assert read_table(spark, path).groupBy("run_id").count().orderBy("run_id").collect() == [
        ("r1", 2),
        ("r2", 3),
    ]
    # A run id that looks numeric stays a string partition value.
    write_run(_basic_df(spark, "007", 1), path, "007")
    back = read_table(spark, path)
    assert back.schema["run_id"].dataType == StringType()
    assert back.where(F.col("run_id") == "007").count() == 1


def test_zero_rows(spark, engine, tmp_path):
    path = str(tmp_path / "t")
    empty = spark.createDataFrame([], BASIC)
    assert write_run(empty, path, "r1") == 0
    assert table_exists(path)
    back = read_table(spark, path)
    assert back.count() == 0
    assert [(f.name, f.dataType) for f in back.schema] == [
        ("run_id", StringType()),
        ("user_id", LongType()),
        ("name", StringType()),
        ("score", DoubleType()),
    ]
    # On an existing run, zero rows empty that run's partition (still one commit).
    write_run(_basic_df(spark, "r1", 3), path, "r1")
    write_run(_basic_df(spark, "r2", 2), path, "r2")
    assert write_run(empty, path, "r1") == 0
    assert _per_run(_delta_rows(path)) == {"r2": 2}
    assert _version(path) == 3


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda df: df.withColumn("extra", F.lit(1)), ["extra column 'extra'"]),
        (lambda df: df.drop("score"), ["missing column 'score'"]),
        (lambda df: df.withColumn("user_id", F.col("user_id").cast("int")), ["'user_id' is int", "bigint"]),
    ],
    ids=["extra", "missing", "type"],
)
def test_schema_mismatch_commits_nothing(spark, engine, tmp_path, change, expected):
    path = str(tmp_path / "t")
    write_run(_basic_df(spark, "r1", 3), path, "r1")
    before = sorted(p.relative_to(path) for p in Path(path).rglob("*"))
    with pytest.raises(DeltaSchemaMismatch) as err:
        write_run(change(_basic_df(spark, "r2", 2)), path, "r2", add_new_columns=False)
    assert path in str(err.value)
    for part in expected:
        assert part in str(err.value)
    assert _version(path) == 0
    # Checked before the executors run: not even orphan files were written.
    assert sorted(p.relative_to(path) for p in Path(path).rglob("*")) == before
    # Column order alone is not a mismatch.
    reordered = _basic_df(spark, "r2", 2).select("score", "name", "user_id", "run_id")
    assert write_run(reordered, path, "r2") == 2


def test_new_columns_are_added_explicitly(spark, engine, tmp_path):
    """A newer writer adds a column: the table gains it (nullable), older rows read null."""
    path = str(tmp_path / "t")
    write_run(_basic_df(spark, "r1", 3), path, "r1")
    newer = _basic_df(spark, "r2", 2).withColumn("extra", F.lit(7).cast("long"))
    assert write_run(newer, path, "r2") == 2
    assert _version(path) == _commits(engine, native=1, delta_rs=2)  # (+ a schema commit with delta-rs)
    rows = {(r["run_id"], r["extra"]) for r in _delta_rows(path)}
    assert rows == {("r1", None), ("r2", 7)}
    back = read_table(spark, path).groupBy("run_id").agg(F.max("extra").alias("m")).orderBy("run_id").collect()
    assert [(r.run_id, r.m) for r in back] == [("r1", None), ("r2", 7)]
    # Missing or retyped columns stay refused even with evolution on.
    with pytest.raises(DeltaSchemaMismatch):
        write_run(_basic_df(spark, "r3", 1), path, "r3")  # lacks 'extra' now
    with pytest.raises(DeltaSchemaMismatch):
        write_run(newer.withColumn("extra", F.lit("x")), path, "r2")


def test_schema_is_nullable(spark, engine, tmp_path):
    from deltalake import DeltaTable

    schema = StructType(
        [
            StructField("run_id", StringType(), False),
            StructField("n", LongType(), False),
            StructField("vec", ArrayType(FloatType(), containsNull=False), False),
            StructField("info", StructType([StructField("a", StringType(), False)]), False),
        ]
    )
    df = spark.createDataFrame([("r1", 1, [1.0], {"a": "x"})], schema)
    write_run(df, str(tmp_path / "t"), "r1")
    fields = json.loads(DeltaTable(str(tmp_path / "t")).schema().to_json())["fields"]
    assert all(f["nullable"] for f in fields)
    by_name = {f["name"]: f["type"] for f in fields}
    assert by_name["vec"]["containsNull"] is True
    assert by_name["info"]["fields"][0]["nullable"] is True
    # A later write with NULLs in those columns is accepted and reads back.
    nulls = spark.createDataFrame(
        [("r2", None, None, None)], "run_id string, n long, vec array<float>, info struct<a:string>"
    )
    write_run(nulls, str(tmp_path / "t"), "r2")
    got = read_table(spark, str(tmp_path / "t")).where("run_id = 'r2'").collect()
    assert [tuple(r) for r in got] == [("r2", None, None, None)]


def test_nested_and_timestamp_round_trip(spark, engine, tmp_path):
    from deltalake import DeltaTable

    path = str(tmp_path / "t")
    ts = dt.datetime(2024, 3, 1, 12, 30, 15, 123456, tzinfo=dt.timezone.utc)
    schema = (
        "run_id string, vec array<float>, tags array<string>, probs array<double>, "
        "info struct<k:int, label:string, w:array<double>>, props map<string,double>, "
        "ts timestamp, ok boolean, f float, d double, n long, s string"
    )
    rows = [
        ("r1", [0.5, -1.25], ["a", "b"], [0.1, 0.9], (7, "seg", [1.5]), {"x": 2.5}, ts, True, 1.5, 2.25, 2**40, "héllo"),
        ("r1", [], [None], None, None, {}, None, None, None, None, None, None),
    ]
    old_tz = spark.conf.get("spark.sql.session.timeZone")
    # A non-UTC session zone: stored values must still be the same UTC instants.
    spark.conf.set("spark.sql.session.timeZone", "America/New_York")
    try:
        write_run(spark.createDataFrame(rows, schema), path, "r1")
        back = read_table(spark, path).orderBy(F.col("n").asc_nulls_last()).collect()
    finally:
        spark.conf.set("spark.sql.session.timeZone", old_tz)

    table = DeltaTable(path)
    types = {f["name"]: f["type"] for f in json.loads(table.schema().to_json())["fields"]}
    assert types["ts"] == "timestamp"  # tz-aware, not timestamp_ntz
    assert types["f"] == "float" and types["d"] == "double" and types["n"] == "long"
    assert table.protocol().min_reader_version == 1  # no table features needed

    first = sorted(_delta_rows(path), key=lambda r: r["n"] is None)[0]
    assert first["vec"] == [0.5, -1.25] and first["tags"] == ["a", "b"] and first["probs"] == [0.1, 0.9]
    assert first["info"] == {"k": 7, "label": "seg", "w": [1.5]}
    assert dict(first["props"]) == {"x": 2.5}
    assert first["ts"] == ts
    assert (first["ok"], first["f"], first["d"], first["n"], first["s"]) == (True, 1.5, 2.25, 2**40, "héllo")

    r0, r1 = back
    assert r0.vec == [0.5, -1.25] and r0.tags == ["a", "b"] and r0.probs == [0.1, 0.9]
    assert (r0.info.k, r0.info.label, r0.info.w) == (7, "seg", [1.5])
    assert r0.props == {"x": 2.5}
    assert r0.ts.replace(tzinfo=None) == ts.replace(tzinfo=None)  # collected as UTC-naive by default
    assert (r1.vec, r1.tags, r1.probs, r1.info, r1.props, r1.ts) == ([], [None], None, None, {}, None)


def test_stats(spark, tmp_path):
    path = str(tmp_path / "t")
    # s: short strings except one 40-char value, which must drop s's min/max (no truncated stats).
    rows = [("r1", i, "x" * 40 if i == 3 else f"u{i}", i / 3, None) for i in range(10)]
    rows.append(("r1", None, None, None, None))
    df = spark.createDataFrame(rows, "run_id string, n long, s string, d double, t timestamp")
    assert write_run(df.coalesce(1), path, "r1", engine="delta-rs") == 11
    (add,) = _log_adds(path)
    stats = json.loads(add["stats"])
    assert stats["numRecords"] == 11
    assert stats["nullCount"] == {"n": 1, "s": 1, "d": 1, "t": 11}
    assert stats["minValues"] == {"n": 0} and stats["maxValues"] == {"n": 9}  # never d (float) or t

    short = spark.createDataFrame(
        [("r2", 5, "bb", {"a": 1}), ("r2", 2, "ab", None), ("r2", 9, "c", {"a": 3})],
        "run_id string, n long, s string, st struct<a:int>",
    )
    write_run(short.coalesce(1), str(tmp_path / "t2"), "r2", engine="delta-rs")
    (add,) = _log_adds(str(tmp_path / "t2"))
    stats = json.loads(add["stats"])
    assert stats["minValues"] == {"n": 2, "s": "ab"} and stats["maxValues"] == {"n": 9, "s": "c"}
    assert stats["nullCount"] == {"n": 0, "s": 0}  # struct columns: absent rather than malformed

    # Several files: numRecords adds up to the rows written.
    write_run(short.repartition(3), str(tmp_path / "t3"), "r2", engine="delta-rs")
    adds = _log_adds(str(tmp_path / "t3"))
    assert sum(json.loads(a["stats"])["numRecords"] for a in adds) == 3


def test_writer_rolls_files_and_skips_empty_tasks(tmp_path):
    """The executor-side writer, called directly (no Spark): rolls files at the row cap."""
    import pyarrow.parquet as pq

    data_schema = pa.schema([pa.field("n", pa.int64())])
    fn = delta_rs._make_partition_writer(str(tmp_path), "r1", "run_id", data_schema, max_rows_per_file=3)
    batches = [pa.record_batch({"run_id": ["r1"] * 4, "n": [1, 2, 3, 4]}), pa.record_batch({"run_id": ["r1"] * 3, "n": [5, 6, 7]})]
    files = pa.Table.from_batches(list(fn(iter(batches)))).to_pylist()
    assert [f["num_records"] for f in files] == [3, 3, 1]
    assert sum(json.loads(f["stats"])["numRecords"] for f in files) == 7
    for f in files:
        assert f["path"].startswith("run_id=r1/part-00000-0-") and f["path"].endswith(".snappy.parquet")
        assert json.loads(f["partition_values"]) == {"run_id": "r1"}
        on_disk = tmp_path / f["path"]
        assert f["size"] == on_disk.stat().st_size
        assert pq.read_schema(on_disk).names == ["n"]  # partition column lives in the folder only
    assert list(fn(iter([]))) == []  # a task without rows writes no file
    assert len(list((tmp_path / "run_id=r1").iterdir())) == 3


def test_read_table_uses_the_log(spark, engine, tmp_path):
    path = str(tmp_path / "t")
    write_run(_basic_df(spark, "r1", 3), path, "r1")
    old_files = list(Path(path, "run_id=r1").glob("*.parquet"))
    write_run(_basic_df(spark, "r1", 2, offset=10), path, "r1")
    assert old_files and all(f.exists() for f in old_files)  # removed from the log, still on disk
    got = sorted(r.user_id for r in read_table(spark, path).collect())
    assert got == [10, 11]


def test_read_table_non_hive_layout(spark, tmp_path):
    """A file whose folder does not name its partition: the log's value must be used."""
    import pyarrow.parquet as pq
    from deltalake import Schema
    from deltalake.transaction import AddAction, create_table_with_add_actions

    path = tmp_path / "t"
    path.mkdir()
    pq.write_table(pa.table({"n": pa.array([1, 2], pa.int64())}), path / "flat.parquet")
    schema = Schema.from_arrow(pa.schema([("run_id", pa.string()), ("n", pa.int64())]))
    add = AddAction("flat.parquet", (path / "flat.parquet").stat().st_size, {"run_id": "r9"}, 0, True, '{"numRecords":2}')
    create_table_with_add_actions(str(path), schema, [add], partition_by=["run_id"])
    got = sorted(tuple(r) for r in read_table(spark, str(path), engine="delta-rs").collect())
    assert got == [("r9", 1), ("r9", 2)]


def test_features_needing_native_delta(spark, tmp_path):
    from deltalake import DeltaTable

    schema = pa.schema([("run_id", pa.string()), ("n", pa.int64())])
    for name, conf in [("cm", {"delta.columnMapping.mode": "name"}), ("dv", {"delta.enableDeletionVectors": "true"})]:
        path = str(tmp_path / name)
        DeltaTable.create(path, schema, partition_by=["run_id"], configuration=conf)
        with pytest.raises(NativeDeltaRequired, match="native Delta is needed"):
            read_table(spark, path, engine="delta-rs")
        df = spark.createDataFrame([("r1", 1)], "run_id string, n long")
        with pytest.raises(NativeDeltaRequired):
            write_run(df, path, "r1", engine="delta-rs")


class _FakeConf:
    def __init__(self, values: dict[str, str]) -> None:
        self.values = values

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.values.get(key, default)


class _FakeSpark:
    def __init__(self, values: dict[str, str]) -> None:
        self.conf = _FakeConf(values)


def test_resolve_engine(spark, monkeypatch):
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    assert resolve_engine(spark) == "native"  # the tests' session carries the Delta jars and settings
    assert resolve_engine(spark, "native") == "native"
    assert resolve_engine(spark, "delta-rs") == "delta-rs"
    ext = {"spark.sql.extensions": "foo.Bar,io.delta.sql.DeltaSparkSessionExtension"}
    assert resolve_engine(_FakeSpark(ext)) == "native"
    cat = {"spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog"}
    assert resolve_engine(_FakeSpark(cat)) == "native"
    assert resolve_engine(_FakeSpark({"spark.sql.extensions": "foo.Bar"})) == "delta-rs"
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "15.4")
    assert resolve_engine(_FakeSpark({})) == "native"
    assert resolve_engine(_FakeSpark({}), "delta-rs") == "delta-rs"
    with pytest.raises(ValueError, match="unknown Delta engine"):
        resolve_engine(spark, "parquet")


@pytest.mark.parametrize("run_id", ["", "../etc", "a b", "-r1", "r1/x", "r'1", "x" * 129, "r1\n"])
def test_bad_run_id_rejected(spark, tmp_path, run_id):
    with pytest.raises(ValueError, match="invalid run_id"):
        write_run(_basic_df(spark, "r1", 1), str(tmp_path / "t"), run_id)
    assert not (tmp_path / "t").exists()


def test_rows_must_carry_the_run_id(spark, engine, tmp_path):
    path = str(tmp_path / "t")
    write_run(_basic_df(spark, "r1", 2), path, "r1")
    mixed = _basic_df(spark, "r2", 2).union(_basic_df(spark, "r1", 1, offset=9))
    with pytest.raises(ValueError, match="every row must carry run_id='r2'"):
        write_run(mixed, path, "r2")
    with pytest.raises(ValueError, match="no partition column"):
        write_run(_basic_df(spark, "r2", 1).drop("run_id"), path, "r2")
    assert _version(path) == 0 and _per_run(_delta_rows(path)) == {"r1": 2}


def test_writer_partitions_by_value_or_not_at_all(tmp_path):
    """The executor-side writer without a fixed run: one folder per value, or the table root."""
    data_schema = pa.schema([pa.field("n", pa.int64())])
    fn = delta_rs._make_partition_writer(str(tmp_path / "p"), None, "run_id", data_schema)
    batch = pa.record_batch({"run_id": ["a", "a", "b"], "n": [1, 2, 3]})
    files = pa.Table.from_batches(list(fn(iter([batch])))).to_pylist()
    assert sorted((json.loads(f["partition_values"])["run_id"], f["num_records"]) for f in files) == [("a", 2), ("b", 1)]
    assert all(f["path"].startswith(f"run_id={json.loads(f['partition_values'])['run_id']}/part-") for f in files)
    with pytest.raises(ValueError, match="must be non-null"):
        list(fn(iter([pa.record_batch({"run_id": ["a", None], "n": [1, 2]})])))

    flat = delta_rs._make_partition_writer(str(tmp_path / "u"), None, None, data_schema)
    (f,) = pa.Table.from_batches(list(flat(iter([pa.record_batch({"n": [1, 2]})])))).to_pylist()
    assert "/" not in f["path"] and json.loads(f["partition_values"]) == {}
    assert (tmp_path / "u" / f["path"]).is_file()


def test_overwrite_table_and_time_travel(spark, engine, tmp_path):
    path = str(tmp_path / "t")
    write_run(_basic_df(spark, "r1", 3), path, "r1")
    write_run(_basic_df(spark, "r2", 2, offset=100), path, "r2")
    after_v1 = dt.datetime.now(dt.timezone.utc)
    replacement = _basic_df(spark, "r3", 2, offset=200).union(_basic_df(spark, "r4", 1, offset=300))
    assert overwrite_table(replacement.repartition(2), path, partition_by="run_id") == 3
    assert table_version(spark, path) == 2  # one commit
    assert _per_run(_delta_rows(path)) == {"r3": 2, "r4": 1}
    assert sorted(r.user_id for r in read_table(spark, path).collect()) == [200, 201, 300]
    assert all(a["path"].startswith(f"run_id={a['partitionValues']['run_id']}/") for a in _log_adds(path))

    # Older versions stay readable, by number or by time (datetime, naive = UTC, ISO string).
    assert read_table(spark, path, version=0).count() == 3
    assert _per_run([r.asDict() for r in read_table(spark, path, version=1).collect()]) == {"r1": 3, "r2": 2}
    for ts in (after_v1, after_v1.astimezone(dt.timezone.utc).replace(tzinfo=None), after_v1.isoformat()):
        assert read_table(spark, path, timestamp=ts).count() == 5
    with pytest.raises(ValueError, match="not both"):
        read_table(spark, path, version=0, timestamp=after_v1)
    with pytest.raises(ValueError, match="invalid table version"):
        read_table(spark, path, version=-1)

    # Same schema rules as write_run, checked before anything is committed.
    with pytest.raises(DeltaSchemaMismatch, match="missing column 'score'"):
        overwrite_table(replacement.drop("score"), path, partition_by="run_id")
    with pytest.raises(ValueError, match="partitioned by"):
        overwrite_table(replacement, path)  # unpartitioned data into a partitioned table
    with pytest.raises(ValueError, match="invalid run_id values"):
        overwrite_table(_basic_df(spark, "a/b", 1), path, partition_by="run_id")
    assert table_version(spark, path) == 2


VECTORS = "user_id string, vec array<double>, weights map<string,double>, n_events long, updated_at timestamp"


def test_overwrite_table_unpartitioned(spark, engine, tmp_path):
    from deltalake import DeltaTable

    path = str(tmp_path / "user_vectors")
    ts = dt.datetime(2024, 5, 1, 8, 0, tzinfo=dt.timezone.utc)
    first = spark.createDataFrame(
        [("u1", [0.5, 1.5], {"a": 1.0}, 3, ts), ("u2", None, None, None, None)], VECTORS
    )
    assert overwrite_table(first, path) == 2
    table = DeltaTable(path)
    assert list(table.metadata().partition_columns) == []
    assert all("/" not in a["path"] for a in _log_adds(path))  # files at the table root

    # A newer writer adds a column: added to the table first, then the whole table replaced.
    second = spark.createDataFrame([("u3", [2.0], {"b": 0.25}, 7, ts, "m1")], VECTORS + ", model_id string")
    assert overwrite_table(second, path) == 1
    assert table_version(spark, path) == _commits(engine, native=1, delta_rs=2)  # (+ a schema commit with delta-rs)
    (row,) = read_table(spark, path).collect()
    assert (row.user_id, row.vec, row.weights, row.n_events, row.model_id) == ("u3", [2.0], {"b": 0.25}, 7, "m1")
    assert row.updated_at.replace(tzinfo=None) == ts.replace(tzinfo=None)
    assert sorted(r.user_id for r in read_table(spark, path, version=0).collect()) == ["u1", "u2"]
    with pytest.raises(DeltaSchemaMismatch):
        overwrite_table(first, path)  # lacks model_id now


MERGE_SCHEMA = "run_id string, user_id long, name string, last_batch string"


def _merge_df(spark, rows):
    return spark.createDataFrame(rows, MERGE_SCHEMA)


def _table_rows(path: str) -> list[tuple]:
    return sorted((r["run_id"], r["user_id"], r["name"], r["last_batch"]) for r in _delta_rows(path))


def test_merge_creates_missing_table(spark, engine, tmp_path):
    from deltalake import DeltaTable

    path = str(tmp_path / "t")
    out = merge(_merge_df(spark, [("r1", 1, "a", "b1"), ("r1", 2, "b", "b1")]), path, ["user_id"], partition_by="run_id")
    assert out == {"inserted": 2, "updated": 0, "source_rows": 2}
    assert table_version(spark, path) == 0
    assert list(DeltaTable(path).metadata().partition_columns) == ["run_id"]
    assert _table_rows(path) == [("r1", 1, "a", "b1"), ("r1", 2, "b", "b1")]


def test_merge_upserts(spark, engine, tmp_path):
    path = str(tmp_path / "t")
    overwrite_table(_merge_df(spark, [("r1", 1, "a", "b1"), ("r1", 2, "b", "b1"), ("r1", 3, "c", "b1")]), path)
    source = _merge_df(spark, [("r1", 2, "B", "b2"), ("r1", 4, "d", "b2")])
    out = merge(source, path, ["user_id"])
    assert out == {"inserted": 1, "updated": 1, "source_rows": 2}
    assert table_version(spark, path) == 1  # one commit
    assert _table_rows(path) == [("r1", 1, "a", "b1"), ("r1", 2, "B", "b2"), ("r1", 3, "c", "b1"), ("r1", 4, "d", "b2")]


def test_merge_update_condition_is_idempotent(spark, engine, tmp_path):
    path = str(tmp_path / "t")
    overwrite_table(_merge_df(spark, [("r1", 1, "a", "b1"), ("r1", 2, "b", None), ("r1", 3, "c", "b2")]), path)
    cond = "t.last_batch <> s.last_batch OR t.last_batch IS NULL"
    source = _merge_df(spark, [("r1", 1, "A", "b1"), ("r1", 2, "B", "b2"), ("r1", 3, "C", "b3"), ("r1", 4, "D", "b3")])
    assert merge(source, path, ["user_id"], update_condition=cond) == {"inserted": 1, "updated": 2, "source_rows": 4}
    expected = [("r1", 1, "a", "b1"), ("r1", 2, "B", "b2"), ("r1", 3, "C", "b3"), ("r1", 4, "D", "b3")]
    assert _table_rows(path) == expected  # user 1: same batch, not updated
    version = table_version(spark, path)
    # The same batch again changes nothing.
    assert merge(source, path, ["user_id"], update_condition=cond) == {"inserted": 0, "updated": 0, "source_rows": 4}
    assert _table_rows(path) == expected
    # delta-rs commits nothing for a no-op MERGE; delta-spark commits a version that changes nothing.
    assert table_version(spark, path) == _commits(engine, native=version + 1, delta_rs=version)
    assert read_table(spark, path, version=version).count() == 4


def test_merge_partition_values(spark, engine, tmp_path):
    path = str(tmp_path / "t")
    rows = [("r1", 1, "a", "b1"), ("r2", 1, "x", "b1"), ("r2", 5, "y", "b1")]
    merge(_merge_df(spark, rows), path, ["run_id", "user_id"], partition_by="run_id")
    source = _merge_df(spark, [("r1", 1, "A", "b2"), ("r1", 5, "E", "b2")])
    out = merge(source, path, ["user_id"], partition_values={"run_id": "r1"})
    assert out == {"inserted": 1, "updated": 1, "source_rows": 2}
    # user 1 and user 5 of run r2 match on user_id but lie outside the partition: untouched.
    assert _table_rows(path) == [("r1", 1, "A", "b2"), ("r1", 5, "E", "b2"), ("r2", 1, "x", "b1"), ("r2", 5, "y", "b1")]
    with pytest.raises(ValueError, match="outside partition"):
        merge(_merge_df(spark, [("r2", 9, "z", "b2")]), path, ["user_id"], partition_values={"run_id": "r1"})


@pytest.mark.parametrize(
    "partition_values, keys, match",
    [
        ({"run_id": "r1' OR '1'='1"}, ["user_id"], "invalid partition value"),
        ({"run_id": ""}, ["user_id"], "invalid partition value"),
        ({"run_id": 1}, ["user_id"], "invalid partition value"),
        ({"run_id = 'r1' OR run_id": "r1"}, ["user_id"], "invalid column"),
        (None, ["user_id` = 1 OR `user_id"], "invalid column"),
        (None, [], "non-empty list"),
    ],
    ids=["injection", "empty", "not-a-string", "bad-name", "bad-key", "no-keys"],
)
def test_merge_bad_arguments_rejected(spark, engine, tmp_path, partition_values, keys, match):
    path = str(tmp_path / "t")
    with pytest.raises(ValueError, match=match):
        merge(_merge_df(spark, [("r1", 1, "a", "b1")]), path, keys, partition_values=partition_values)
    assert not table_exists(path)


def test_merge_duplicate_keys_rejected(spark, engine, tmp_path):
    path = str(tmp_path / "t")
    overwrite_table(_merge_df(spark, [("r1", 1, "a", "b1")]), path)
    source = _merge_df(spark, [("r1", 1, "A", "b2"), ("r1", 7, "x", "b2"), ("r1", 7, "y", "b2")])
    with pytest.raises(ValueError, match=r"duplicate keys, e.g. \{'user_id': 7\}"):
        merge(source, path, ["user_id"])
    with pytest.raises(ValueError, match="NULL key"):
        merge(_merge_df(spark, [("r1", None, "n", "b2")]), path, ["user_id"])
    assert table_version(spark, path) == 0


def test_merge_adds_new_columns(spark, engine, tmp_path):
    path = str(tmp_path / "t")
    overwrite_table(_merge_df(spark, [("r1", 1, "a", "b1"), ("r1", 2, "b", "b1")]), path)
    newer = _merge_df(spark, [("r1", 2, "B", "b2"), ("r1", 3, "c", "b2")]).withColumn("score", F.lit(0.5))
    assert merge(newer, path, ["user_id"]) == {"inserted": 1, "updated": 1, "source_rows": 2}
    assert table_version(spark, path) == 2  # schema commit + merge commit
    got = sorted((r["user_id"], r["name"], r["score"]) for r in _delta_rows(path))
    assert got == [(1, "a", None), (2, "B", 0.5), (3, "c", 0.5)]
    # Missing or retyped source columns: refused before anything is committed.
    with pytest.raises(DeltaSchemaMismatch, match="missing column 'score'"):
        merge(_merge_df(spark, [("r1", 4, "d", "b3")]), path, ["user_id"])
    with pytest.raises(DeltaSchemaMismatch, match="'score' is string"):
        merge(newer.withColumn("score", F.lit("x")), path, ["user_id"])
    assert table_version(spark, path) == 2


_SAIL_SCRIPT = """
import json, sys
sys.path.insert(0, {repo!r})
from pysail.spark import SparkConnectServer
from pyspark.sql import SparkSession
from jobs.delta_io import (DeltaSchemaMismatch, merge, overwrite_table, read_table, register_tables, table_version,
                           write_run)

path, uv_path = sys.argv[1], sys.argv[2]
server = SparkConnectServer(ip="127.0.0.1", port=0)
server.start(background=True)
spark = SparkSession.builder.remote(f"sc://127.0.0.1:{{server.listening_address[1]}}").getOrCreate()
schema = "run_id string, n long, s string"
out = {{}}
try:
    r1 = spark.createDataFrame([("r1", 1, "a"), ("r1", 2, "b"), ("r1", 3, "c")], schema)
    out["first"] = write_run(r1, path, "r1", engine="native")
    out["rerun"] = write_run(r1.where("n >= 2"), path, "r1", engine="native")
    out["r2"] = write_run(spark.createDataFrame([("r2", 9, "z")], schema), path, "r2", engine="native")
    try:
        bad = spark.createDataFrame([("r3", 1, 1.0)], "run_id string, n long, x double")
        write_run(bad, path, "r3", engine="native")
        out["mismatch"] = None
    except DeltaSchemaMismatch as e:
        out["mismatch"] = str(e)
    out["read"] = sorted(tuple(r) for r in read_table(spark, path, engine="native").select("run_id", "n", "s").collect())
    # Named in the catalog (output.catalog_schema): readers query seg.t; again is a no-op; a
    # table not written yet is skipped; a name bound elsewhere is refused.
    out["names"] = register_tables(spark, {{"t": path, "later": path + "-not-yet"}}, "seg")
    out["again"] = register_tables(spark, {{"t": path}}, "seg")
    out["by_name"] = sorted(tuple(r) for r in spark.table("seg.t").select("run_id", "n").collect())

    # Whole-table overwrite, MERGE and time travel on an unpartitioned table.
    uv = "user_id string, n long, last_batch string"
    rows = lambda *r: spark.createDataFrame(list(r), uv)
    cond = "t.last_batch <> s.last_batch OR t.last_batch IS NULL"
    native = dict(engine="native")
    out["ow"] = [overwrite_table(rows(("u1", 1, "b1"), ("u2", 2, "b1")), uv_path, **native),
                 overwrite_table(rows(("u1", 1, "b1"), ("u2", 2, None), ("u3", 3, "b1")), uv_path, **native)]
    source = rows(("u1", 10, "b1"), ("u2", 20, "b2"), ("u4", 40, "b2"))
    out["merge"] = [merge(source, uv_path, ["user_id"], update_condition=cond, **native),
                    merge(source, uv_path, ["user_id"], update_condition=cond, **native)]
    try:
        merge(rows(("u5", 5, "b3"), ("u5", 6, "b3")), uv_path, ["user_id"], **native)
    except ValueError as e:
        out["dup"] = str(e)
    # New source column: added with an empty mergeSchema append (Sail lacks ALTER TABLE ADD COLUMNS).
    out["evolve"] = merge(rows(("u6", 6, "b3")).selectExpr("*", "CAST(1.5 AS double) AS score"), uv_path, ["user_id"], **native)
    # Sail lacks DESCRIBE HISTORY: table_version falls back to reading the log with delta-rs.
    out["version"] = table_version(spark, uv_path, **native)
    out["v0"] = sorted(tuple(r) for r in read_table(spark, uv_path, version=0, **native).select("user_id", "n").collect())
    out["v1"] = sorted(tuple(r) for r in read_table(spark, uv_path, version=1, **native).select("user_id", "n").collect())
    out["uv"] = sorted(tuple(r) for r in read_table(spark, uv_path, **native).select("user_id", "n", "last_batch", "score").collect())
    try:
        register_tables(spark, {{"t": uv_path}}, "seg")  # seg.t is the first table
    except ValueError as e:
        out["bound"] = str(e)
finally:
    spark.stop()
    server.stop()
print("RESULT " + json.dumps(out))
"""


def test_native_engine_against_sail(spark, tmp_path):
    pytest.importorskip("pysail")
    script = tmp_path / "sail_native.py"
    script.write_text(textwrap.dedent(_SAIL_SCRIPT.format(repo=str(REPO))))
    path, uv_path = str(tmp_path / "t"), str(tmp_path / "uv")
    proc = subprocess.run(
        [sys.executable, str(script), path, uv_path], capture_output=True, text=True, timeout=180, cwd=str(REPO)
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT ") :])
    assert (out["first"], out["rerun"], out["r2"]) == (3, 2, 1)
    assert out["mismatch"] and path in out["mismatch"] and "'x'" in out["mismatch"]
    assert out["read"] == [["r1", 2, "b"], ["r1", 3, "c"], ["r2", 9, "z"]]
    assert out["names"] == out["again"] == {"t": "seg.t"}
    assert out["by_name"] == [["r1", 2], ["r1", 3], ["r2", 9]]
    assert "seg.t already points at" in out["bound"] and path in out["bound"]

    # Checked independently of Sail, through delta-rs.
    rows = _delta_rows(path)
    assert _per_run(rows) == {"r1": 2, "r2": 1}
    assert sorted((r["run_id"], r["n"], r["s"]) for r in rows) == [("r1", 2, "b"), ("r1", 3, "c"), ("r2", 9, "z")]
    # And the delta-rs engine reads the table Sail wrote.
    assert delta_io.table_exists(path)
    back = read_table(spark, path, engine="delta-rs")
    assert sorted(tuple(r) for r in back.select("run_id", "n", "s").collect()) == [("r1", 2, "b"), ("r1", 3, "c"), ("r2", 9, "z")]

    # Overwrite, MERGE and time travel through Sail's native Delta.
    assert out["ow"] == [2, 3]
    # Sail's MERGE reports one total count, not inserted/updated: those stay None.
    assert out["merge"][0] == {"inserted": None, "updated": None, "source_rows": 3}
    assert "duplicate keys" in out["dup"] and "u5" in out["dup"]
    assert out["evolve"]["source_rows"] == 1
    assert out["v0"] == [["u1", 1], ["u2", 2]]
    assert out["v1"] == [["u1", 1], ["u2", 2], ["u3", 3]]
    expected = [["u1", 1, "b1", None], ["u2", 20, "b2", None], ["u3", 3, "b1", None], ["u4", 40, "b2", None], ["u6", 6, "b3", 1.5]]
    assert out["uv"] == expected  # u1: same batch, not updated; the rerun changed nothing
    # Versions: 2 overwrites, 1 merge (the no-op rerun commits nothing), schema append, merge.
    assert out["version"] == table_version(spark, uv_path, engine="delta-rs") == 4
    back = read_table(spark, uv_path, engine="delta-rs").select("user_id", "n", "last_batch", "score")
    assert sorted(list(r) for r in back.collect()) == expected
