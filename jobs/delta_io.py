"""Write and read SegLake's Delta tables: one run partition at a time (write_run), the whole
table (overwrite_table), or by key (merge); read any version (read_table, time travel).

Two engines:

* ``native``   - Spark's own Delta data source (Databricks, or clusters whose image carries the
  Delta jars): ``format("delta")`` with ``replaceWhere`` on the run partition, ``MERGE INTO``.
* ``delta-rs`` - for everywhere else (local runs, tests, CI): Spark executors write plain Parquet
  files with pyarrow (``mapInArrow``), the driver commits them with one ``deltalake`` transaction
  (merge: ``deltalake`` merges on the driver). Reading goes through the Delta log (``deltalake``)
  and hands the active files to Spark's Parquet reader.

``deltalake`` is imported only inside driver-side functions: it is not fork-safe, and Spark's
Python daemon forks the workers that import this module to run the Parquet writer.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Callable, Iterator
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import fs as pafs
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, DataType, MapType, StringType, StructField, StructType

log = logging.getLogger(__name__)

ENGINES = ("auto", "native", "delta-rs")

# Run ids become folder names (run_id=<id>) and go into SQL predicates: keep them boring.
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# Partition, key and filter columns go into SQL predicates too: plain names only.
_COLUMN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Parquet file layout written by the executors.
TARGET_FILE_BYTES = 128 * 1024 * 1024  # roll to a new file past this size
MAX_ROWS_PER_FILE = 5_000_000  # ... or past this many rows
ROW_GROUP_ROWS = 128 * 1024  # buffer Arrow batches into row groups of about this many rows
ROW_GROUP_BYTES = 64 * 1024 * 1024  # ... or this many bytes of Arrow memory
STRING_STATS_MAX_CHARS = 32  # min/max only when every string in the file is this short

# One row per Parquet file, sent from the executors to the driver.
_FILE_ROWS_DDL = (
    "path string, size long, partition_values string, modification_time long, "
    "stats string, num_records long"
)
_FILE_ROWS_ARROW = pa.schema(
    [
        ("path", pa.string()),
        ("size", pa.int64()),
        ("partition_values", pa.string()),
        ("modification_time", pa.int64()),
        ("stats", pa.string()),
        ("num_records", pa.int64()),
    ]
)

# Marker put into the executor-side error so the driver can turn Spark's wrapped exception back
# into a plain ValueError.
_BAD_ROW_MARK = "SEGLAKE_DELTA_IO_BAD_RUN_ID_ROW"

# Reader features that Spark's plain Parquet reader honours when given the log's file list.
_PARQUET_SAFE_READER_FEATURES = frozenset({"timestampNtz", "v2Checkpoint", "vacuumProtocolCheck"})

# Set on every table SegLake creates, whatever the session's defaults (Databricks can turn deletion
# vectors on for new tables): delta-rs, which seglake-explain and the fallback writer use, cannot
# read a table with the deletionVectors feature (tests/test_delta_spark.py checks each reader).
CREATE_PROPERTIES = {"delta.enableDeletionVectors": "false"}
# Change Data Feed, for tables whose readers want only what changed since a version.
CDF_PROPERTIES = {"delta.enableChangeDataFeed": "true"}



def user_segments_properties(conf: dict) -> dict[str, str]:
    """Table properties of user_segments under the conf (CDF when output.change_data_feed)."""
    return dict(CDF_PROPERTIES) if conf["output"]["change_data_feed"] else {}


_DELTA_CATALOG_SUFFIX = "delta.catalog.DeltaCatalog"
_DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"


class DeltaSchemaMismatch(ValueError):
    """The DataFrame's schema differs from the existing Delta table's schema."""

    def __init__(self, path: str, differences: list[str]) -> None:
        self.path = path
        self.differences = differences
        super().__init__(
            f"schema of the data does not match the Delta table at {path!r}: "
            + "; ".join(differences)
            + " (nothing was committed; evolve the table explicitly)"
        )


class DeltaConflict(RuntimeError):
    """Another writer committed to the table at the same time, and this commit was not (or could
    no longer be) retried: nothing of it landed. Rerunning the job or batch completes it."""

    def __init__(self, path: str, operation: str, cause: BaseException, attempts: int) -> None:
        self.path = path
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
        tried = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"another writer committed to the Delta table {path} at the same time; this {operation} "
                         f"did not land{tried} ({first}); rerun it")


# Optimistic-concurrency failures, as delta-spark (class names, error classes) and delta-rs word them.
_CONFLICT_MARKS = (
    "ConcurrentAppendException", "ConcurrentDeleteReadException", "ConcurrentDeleteDeleteException",
    "ConcurrentTransactionException", "ConcurrentWriteException", "MetadataChangedException",
    "ProtocolChangedException", "DELTA_CONCURRENT_", "DELTA_METADATA_CHANGED", "DELTA_PROTOCOL_CHANGED",
    "CommitFailedError", "Transaction failed: Version", "version already exists",
)
COMMIT_ATTEMPTS = 5


def is_conflict(exc: BaseException) -> bool:
    """True for a commit that lost a race with another writer (retryable where the commit's
    content does not depend on what the other writer changed)."""
    names = {t.__name__ for t in type(exc).__mro__}
    text = f"{names} {exc}"
    return any(mark in text for mark in _CONFLICT_MARKS)


def _committing(path: str, operation: str, commit: Callable[[], Any], retry: bool) -> Any:
    """Run `commit`; on a lost race retry it (up to COMMIT_ATTEMPTS, with a short jittered back-off)
    when `retry`, else, or when attempts run out, raise DeltaConflict."""
    import random

    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            return commit()
        except Exception as exc:  # noqa: BLE001 - only conflicts are handled, the rest re-raised
            if not is_conflict(exc):
                raise
            if not retry or attempt == COMMIT_ATTEMPTS:
                raise DeltaConflict(path, operation, exc, attempt) from exc
            log.warning("%s on %s lost a race with another writer (%s); retrying (attempt %d of %d)", operation,
                        path, type(exc).__name__, attempt + 1, COMMIT_ATTEMPTS)
            time.sleep(random.uniform(0.2, 1.0) * attempt)
    raise AssertionError("unreachable")


class NativeDeltaRequired(RuntimeError):
    """The table uses Delta features that the delta-rs engine cannot honour; use engine='native'."""


# --------------------------------------------------------------------------------------------
# Engine choice
# --------------------------------------------------------------------------------------------


def _conf(spark: SparkSession | None, key: str) -> str:
    if spark is None:
        return ""
    try:
        return spark.conf.get(key, "") or ""
    except Exception:  # some Connect servers reject unknown keys instead of returning the default
        return ""


def resolve_engine(spark: SparkSession | None, engine: str = "auto") -> str:
    """Return 'native' or 'delta-rs'; 'auto' picks native only where the session has Delta."""
    if engine not in ENGINES:
        raise ValueError(f"unknown Delta engine {engine!r}; expected one of {ENGINES}")
    if engine != "auto":
        return engine
    if os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        return "native"
    if _DELTA_EXTENSION in _conf(spark, "spark.sql.extensions"):
        return "native"
    if _conf(spark, "spark.sql.catalog.spark_catalog").endswith(_DELTA_CATALOG_SUFFIX):
        return "native"
    return "delta-rs"


# --------------------------------------------------------------------------------------------
# Paths and schemas
# --------------------------------------------------------------------------------------------


def _table_uri(path: str) -> str:
    """URI that deltalake, pyarrow.fs and Spark all accept for the table root."""
    path = path.rstrip("/") or "/"
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", path) and not path.startswith("file://"):
        return path  # s3://, abfss://, hdfs://, ...
    if path.startswith("file:"):
        path = unquote(urlparse(path).path)
    # pyarrow.fs.FileSystem.from_uri needs an absolute local path.
    return os.path.abspath(path)


def _check_run_id(run_id: str) -> None:
    if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id):
        raise ValueError(f"invalid run_id {run_id!r}: must match {RUN_ID_RE.pattern}")


def _strip_nullability(dt: DataType) -> DataType:
    """Same type with every field/element/value nullable and no field metadata."""
    if isinstance(dt, StructType):
        return StructType([StructField(f.name, _strip_nullability(f.dataType), True) for f in dt.fields])
    if isinstance(dt, ArrayType):
        return ArrayType(_strip_nullability(dt.elementType), True)
    if isinstance(dt, MapType):
        return MapType(_strip_nullability(dt.keyType), _strip_nullability(dt.valueType), True)
    return dt


def _schema_differences(table: StructType, data: StructType) -> list[str]:
    """Column-level differences, ignoring nullability and top-level column order."""
    tcols = {f.name: _strip_nullability(f.dataType) for f in table.fields}
    dcols = {f.name: _strip_nullability(f.dataType) for f in data.fields}
    diffs = [f"missing column {n!r} ({tcols[n].simpleString()})" for n in tcols if n not in dcols]
    diffs += [f"extra column {n!r} ({dcols[n].simpleString()})" for n in dcols if n not in tcols]
    diffs += [
        f"column {n!r} is {dcols[n].simpleString()} but the table has {tcols[n].simpleString()}"
        for n in tcols
        if n in dcols and tcols[n] != dcols[n]
    ]
    return diffs


def _only_new_columns(table: StructType, data: StructType) -> list[str]:
    """Names of data columns the table lacks, when that is the only difference; else []."""
    names = {f.name for f in table.fields}
    new = [f.name for f in data.fields if f.name not in names]
    if not new:
        return []
    kept = StructType([f for f in data.fields if f.name in names])
    return new if not _schema_differences(table, kept) else []


def _nullable_arrow_type(t: pa.DataType) -> pa.DataType:
    """Arrow type with every nested field nullable (map keys excepted: they cannot be null)."""
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _nullable_arrow_type(f.type), True) for f in t])
    if pa.types.is_large_list(t):
        return pa.large_list(pa.field(t.value_field.name, _nullable_arrow_type(t.value_type), True))
    if pa.types.is_list(t):
        return pa.list_(pa.field(t.value_field.name, _nullable_arrow_type(t.value_type), True))
    if pa.types.is_map(t):
        return pa.map_(
            pa.field("key", _nullable_arrow_type(t.key_type), False),
            pa.field("value", _nullable_arrow_type(t.item_type), True),
        )
    return t


def _arrow_schema(schema: StructType) -> pa.Schema:
    """Arrow schema of the Parquet files: all nullable, Spark timestamps as UTC instants."""
    from pyspark.sql.pandas.types import to_arrow_schema

    # timezone="UTC": Spark TimestampType values are instants, Delta 'timestamp' is UTC-adjusted.
    # Without a time zone they would become timestamp_ntz (and upgrade the table protocol).
    raw = to_arrow_schema(schema, timezone="UTC")
    # Nullable everywhere: Spark's non-null fields would otherwise become NOT NULL Delta columns.
    return pa.schema([pa.field(f.name, _nullable_arrow_type(f.type), True) for f in raw])


def _delta_schema_as_spark(delta_schema: Any) -> StructType:
    """Delta's schemaString is Spark's StructType JSON."""
    return StructType.fromJson(json.loads(delta_schema.to_json()))


# --------------------------------------------------------------------------------------------
# Executor side: Parquet writer (pyarrow only)
# --------------------------------------------------------------------------------------------


def _is_int(t: pa.DataType) -> bool:
    return pa.types.is_integer(t)


def _is_str(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


class _FileStats:
    """Exact per-file Delta stats: numRecords, nullCount (non-struct columns), min/max for ints
    and short strings. Floats, timestamps and nested types get no min/max: absent beats wrong."""

    def __init__(self, schema: pa.Schema) -> None:
        self.num_records = 0
        self.null_count = {f.name: 0 for f in schema if not pa.types.is_struct(f.type)}
        self.minmax_cols = [f.name for f in schema if _is_int(f.type) or _is_str(f.type)]
        self.mins: dict[str, Any] = {}
        self.maxs: dict[str, Any] = {}
        self.dropped: set[str] = set()  # string columns with a value too long for stats

    def update(self, batch: pa.RecordBatch) -> None:
        self.num_records += batch.num_rows
        for name in self.null_count:
            self.null_count[name] += batch.column(name).null_count
        for name in self.minmax_cols:
            if name in self.dropped:
                continue
            col = batch.column(name)
            if _is_str(col.type):
                longest = pc.max(pc.utf8_length(col)).as_py()
                if longest is not None and longest > STRING_STATS_MAX_CHARS:
                    self.dropped.add(name)
                    self.mins.pop(name, None)
                    self.maxs.pop(name, None)
                    continue
            mm = pc.min_max(col)
            lo, hi = mm["min"].as_py(), mm["max"].as_py()
            if lo is None:  # all null in this batch
                continue
            # Strings compare by code point here, which is the UTF-8 byte order Delta uses.
            self.mins[name] = lo if name not in self.mins else min(self.mins[name], lo)
            self.maxs[name] = hi if name not in self.maxs else max(self.maxs[name], hi)

    def to_json(self) -> str:
        stats: dict[str, Any] = {"numRecords": self.num_records, "nullCount": self.null_count}
        if self.mins:
            stats["minValues"] = self.mins
            stats["maxValues"] = self.maxs
        return json.dumps(stats, separators=(",", ":"))


class _RollingParquetWriter:
    """Writes one task's batches into Parquet files under one partition folder (or the table
    root), rolling files."""

    def __init__(
        self,
        root_uri: str,
        rel_dir: str,
        schema: pa.Schema,
        file_prefix: str,
        target_file_bytes: int = TARGET_FILE_BYTES,
        max_rows_per_file: int = MAX_ROWS_PER_FILE,
    ) -> None:
        self.fs, self.root = pafs.FileSystem.from_uri(root_uri)
        self.target_file_bytes = target_file_bytes
        self.max_rows_per_file = max(1, max_rows_per_file)
        self.rel_dir = rel_dir
        self.schema = schema
        self.file_prefix = file_prefix
        self.buffer: list[pa.RecordBatch] = []
        self.buffer_rows = 0
        self.buffer_bytes = 0
        self.writer: pq.ParquetWriter | None = None
        self.stream: Any = None
        self.rel_path = ""
        self.stats: _FileStats | None = None
        self.dir_created = False

    def _open(self) -> None:
        if not self.dir_created:
            self.fs.create_dir(f"{self.root}/{self.rel_dir}".rstrip("/"), recursive=True)
            self.dir_created = True
        name = f"{self.file_prefix}-{uuid.uuid4()}.snappy.parquet"
        # rel_dir "" (unpartitioned table): the file sits at the table root.
        self.rel_path = f"{self.rel_dir}/{name}" if self.rel_dir else name
        self.stream = self.fs.open_output_stream(f"{self.root}/{self.rel_path}")
        self.writer = pq.ParquetWriter(self.stream, self.schema, compression="snappy")
        self.stats = _FileStats(self.schema)

    def write(self, batch: pa.RecordBatch) -> Iterator[dict[str, Any]]:
        """Buffer a batch; yields a file row whenever a file is finished."""
        while batch.num_rows:
            file_rows = self.stats.num_records if self.stats else 0
            # Split batches at the row cap so that no file exceeds it.
            room = self.max_rows_per_file - file_rows - self.buffer_rows
            head, batch = batch.slice(0, room), batch.slice(room)
            self.buffer.append(head)
            self.buffer_rows += head.num_rows
            self.buffer_bytes += head.nbytes
            if file_rows + self.buffer_rows >= self.max_rows_per_file:
                self._flush()
                yield self._close_file()
            elif self.buffer_rows >= ROW_GROUP_ROWS or self.buffer_bytes >= ROW_GROUP_BYTES:
                self._flush()
                if self.stream.tell() >= self.target_file_bytes:
                    yield self._close_file()

    def _flush(self) -> None:
        """Write the buffered batches as one row group."""
        if not self.buffer:
            return
        if self.writer is None:
            self._open()
        table = pa.Table.from_batches(self.buffer, schema=self.schema)
        self.buffer, self.buffer_rows, self.buffer_bytes = [], 0, 0
        self.writer.write_table(table, row_group_size=max(table.num_rows, 1))
        for b in table.to_batches():
            self.stats.update(b)

    def _close_file(self) -> dict[str, Any]:
        self.writer.close()
        self.stream.close()
        info = self.fs.get_file_info(f"{self.root}/{self.rel_path}")
        mtime_ms = info.mtime_ns // 1_000_000 if info.mtime_ns else int(time.time() * 1000)
        row = {
            "path": self.rel_path,
            "size": int(info.size),
            "modification_time": int(mtime_ms),
            "stats": self.stats.to_json(),
            "num_records": self.stats.num_records,
        }
        self.writer, self.stream, self.stats = None, None, None
        return row

    def finish(self) -> Iterator[dict[str, Any]]:
        self._flush()
        if self.writer is not None:
            yield self._close_file()

    def abort(self) -> None:
        """Best effort: drop the half-written file (it is not in the log either way)."""
        if self.writer is not None:
            try:
                self.writer.close()
                self.stream.close()
                self.fs.delete_file(f"{self.root}/{self.rel_path}")
            except Exception:
                pass


def _make_partition_writer(
    root_uri: str,
    run_id: str | None,
    partition_by: str | None,
    data_schema: pa.Schema,
    target_file_bytes: int = TARGET_FILE_BYTES,
    max_rows_per_file: int = MAX_ROWS_PER_FILE,
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """mapInArrow function: writes a task's rows as Parquet, yields one row per file written.

    `partition_by=None`: unpartitioned, files at the table root. With `run_id`, every row must
    carry it (one run's partition); with `run_id=None`, one folder per value of `partition_by`.
    """
    data_names = data_schema.names

    def check_keys(key: pa.Array) -> None:
        if run_id is not None:
            ok = pc.fill_null(pc.equal(key, run_id), False)
            context = f"while writing run {run_id!r}"
        else:
            # The values become folder names and log entries: same rule as run ids, no escaping.
            ok = pc.fill_null(pc.match_substring_regex(key, RUN_ID_RE.pattern), False)
            context = f"(partition values must be non-null and match {RUN_ID_RE.pattern})"
        if not pc.all(ok).as_py():
            bad = pc.unique(pc.filter(key, pc.invert(ok)))
            raise ValueError(f"{_BAD_ROW_MARK}: rows with {partition_by}={bad.to_pylist()[:5]} {context}")

    def split(batch: pa.RecordBatch) -> Iterator[tuple[str | None, pa.RecordBatch]]:
        """(partition value, rows) pieces of a batch, in order of first appearance."""
        if partition_by is None:
            yield None, batch.select(data_names)
            return
        key = batch.column(partition_by)
        check_keys(key)
        values = pc.unique(key).to_pylist()
        # Drop the partition column: it lives in the folder name and the log.
        if len(values) == 1:
            yield values[0], batch.select(data_names)
            return
        for value in values:
            yield value, batch.filter(pc.equal(key, value)).select(data_names)

    def write_partition(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        part_id, attempt = (ctx.partitionId(), ctx.attemptNumber()) if ctx else (0, 0)
        # partition id + attempt + uuid: retried/speculative attempts never overwrite each other.
        prefix = f"part-{part_id:05d}-{attempt}"

        def rows(value: str | None, done: list[dict[str, Any]]) -> pa.RecordBatch:
            values = json.dumps({partition_by: value} if partition_by else {})
            for d in done:
                d["partition_values"] = values
            return pa.RecordBatch.from_pylist(done, schema=_FILE_ROWS_ARROW)

        # One open file at a time: a new partition value closes the previous value's file, so
        # memory stays bounded; callers sort rows by partition value to keep the file count low.
        writer: _RollingParquetWriter | None = None
        current: str | None = None
        done: list[dict[str, Any]] = []
        try:
            for batch in batches:
                if batch.num_rows == 0:
                    continue
                for value, part in split(batch):
                    if writer is None or value != current:
                        if writer is not None:
                            done = list(writer.finish())
                            if done:
                                yield rows(current, done)
                        rel_dir = f"{partition_by}={value}" if partition_by else ""
                        writer = _RollingParquetWriter(
                            root_uri, rel_dir, data_schema, prefix, target_file_bytes, max_rows_per_file
                        )
                        current = value
                    # Cast to the file schema: nullable fields, UTC timestamps.
                    done = list(writer.write(part.cast(data_schema)))
                    if done:
                        yield rows(current, done)
            done = list(writer.finish()) if writer is not None else []
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
        if done:
            yield rows(current, done)

    return write_partition


# --------------------------------------------------------------------------------------------
# Driver side: delta-rs
# --------------------------------------------------------------------------------------------


def _require_plain_parquet_readable(dt: Any, path: str) -> None:
    """Raise when the table needs reader features that plain Parquet reading cannot honour."""
    proto = dt.protocol()
    conf = dt.metadata().configuration or {}
    needs: list[str] = []
    if (conf.get("delta.columnMapping.mode") or "none") != "none":
        needs.append("column mapping")
    features = set(proto.reader_features or []) - _PARQUET_SAFE_READER_FEATURES - {"columnMapping"}
    needs += sorted(features)
    if needs:
        raise NativeDeltaRequired(
            f"Delta table at {path!r} uses reader features {needs} that plain Parquet reading "
            "cannot honour; native Delta is needed (engine='native' on a session with Delta)"
        )


def _require_delta_rs_writable(dt: Any, path: str) -> None:
    """Raise when the table has write-time rules that our add-file commit would not enforce."""
    _require_plain_parquet_readable(dt, path)
    conf = dt.metadata().configuration or {}
    rules = [k for k in conf if k.startswith("delta.constraints.")]
    for field in json.loads(dt.schema().to_json())["fields"]:
        meta = field.get("metadata") or {}
        rules += [f"{field['name']}:{k}" for k in meta if k in ("delta.invariants", "delta.generationExpression")]
        rules += [f"{field['name']}:{k}" for k in meta if k.startswith("delta.identity.")]
    if rules:
        raise NativeDeltaRequired(
            f"Delta table at {path!r} has constraints/generated columns {rules} that the delta-rs "
            "writer does not enforce; native Delta is needed"
        )


def _check_existing(dt: Any, path: str, data_schema: StructType, partition_by: str | None,
                    check_partitioning: bool = True) -> None:
    diffs = _schema_differences(_delta_schema_as_spark(dt.schema()), data_schema)
    if diffs:
        raise DeltaSchemaMismatch(path, diffs)
    parts = list(dt.metadata().partition_columns)
    expected = [partition_by] if partition_by else []
    if check_partitioning and parts != expected:
        raise ValueError(f"Delta table at {path!r} is partitioned by {parts}, not {expected}")
    _require_delta_rs_writable(dt, path)


def _prepare_existing_delta_rs(uri: str, path: str, delta_schema: Any, partition_by: str | None,
                               add_new_columns: bool = True, check_partitioning: bool = True,
                               properties: dict[str, str] | None = None) -> bool:
    """Evolve (additively) and check the table before anything is written; False if there is none."""
    from deltalake import DeltaTable

    if not DeltaTable.is_deltatable(uri):
        return False
    # What the table's schema would be if we created it: compare like with like.
    data_schema = _delta_schema_as_spark(delta_schema)
    dt = DeltaTable(uri)
    new = _only_new_columns(_delta_schema_as_spark(dt.schema()), data_schema) if add_new_columns else []
    if new:
        # Additive evolution, explicitly: one schema commit adds the new nullable
        # columns (older rows read them as null), then the data commit follows.
        _require_delta_rs_writable(dt, path)
        dt.alter.add_columns([f for f in delta_schema.fields if f.name in new])
        dt = DeltaTable(uri)
    # Checked before any file is written; the notes saw mismatches committed silently.
    _check_existing(dt, path, data_schema, partition_by, check_partitioning)
    missing = _missing_properties(dt.metadata().configuration or {}, properties)
    if missing:
        dt.alter.set_table_properties(missing)  # e.g. CDF switched on for an existing table
    return True


def _missing_properties(current: dict[str, str], wanted: dict[str, str] | None) -> dict[str, str]:
    return {k: v for k, v in (wanted or {}).items() if str(current.get(k, "")).lower() != v.lower()}


def _write_delta_rs(df: DataFrame, path: str, partition_by: str | None, run_id: str | None,
                    add_new_columns: bool = True, properties: dict[str, str] | None = None) -> int:
    """Executors write Parquet, the driver commits once: replaces run `run_id`'s partition, or the
    whole table when `run_id` is None."""
    from deltalake import DeltaTable
    from deltalake import Schema as DeltaSchema
    from deltalake.transaction import AddAction, create_table_with_add_actions

    uri = _table_uri(path)
    arrow_schema = _arrow_schema(df.schema)
    delta_schema = DeltaSchema.from_arrow(arrow_schema)
    data_schema = _delta_schema_as_spark(delta_schema)
    existed = _prepare_existing_delta_rs(uri, path, delta_schema, partition_by, add_new_columns, properties=properties)

    if partition_by and run_id is None:
        # Rows of one partition value next to each other: one open file per task at a time.
        df = df.sortWithinPartitions(partition_by)
    file_schema = pa.schema([f for f in arrow_schema if f.name != partition_by])
    writer_fn = _make_partition_writer(uri, run_id, partition_by, file_schema)
    try:
        file_rows = df.mapInArrow(writer_fn, _FILE_ROWS_DDL).collect()
    except Exception as e:
        if _BAD_ROW_MARK in str(e):
            msg = str(e).split(_BAD_ROW_MARK + ": ", 1)[-1].splitlines()[0]
            if run_id is not None:
                raise ValueError(f"every row must carry {partition_by}={run_id!r}: {msg}") from None
            raise ValueError(f"invalid {partition_by} values: {msg}") from None
        raise

    actions = [
        AddAction(
            path=r["path"],  # plain (not URL-encoded): delta-rs encodes it for the log
            size=r["size"],
            partition_values=json.loads(r["partition_values"]),
            modification_time=r["modification_time"],
            data_change=True,
            stats=r["stats"],
        )
        for r in file_rows
    ]
    n_rows = sum(r["num_records"] for r in file_rows)
    parts = [partition_by] if partition_by else []

    if not existed:
        try:
            create_table_with_add_actions(uri, delta_schema, actions, mode="error", partition_by=parts,
                                          configuration={**CREATE_PROPERTIES, **(properties or {})})
            return n_rows
        except Exception:
            if not DeltaTable.is_deltatable(uri):
                raise
            # Another writer created the table meanwhile: replace our run (or its rows) instead.

    dt = DeltaTable(uri)
    _check_existing(dt, path, data_schema, partition_by)  # again, on the snapshot we commit on
    # overwrite + partition filter: removes exactly this run's current files, adds ours, one
    # commit; without a filter it removes every current file (whole-table overwrite).
    dt.create_write_transaction(
        actions,
        mode="overwrite",
        schema=dt.schema(),  # the table's own schema (equal up to nullability): metadata unchanged
        partition_by=parts,
        partition_filters=[(partition_by, "=", run_id)] if run_id is not None else None,
    )
    return n_rows


def _merge_delta_rs(df: DataFrame, path: str, partition_by: str | None, predicate: str,
                    update_condition: str | None, properties: dict[str, str] | None = None) -> dict[str, int | None]:
    from deltalake import DeltaTable, write_deltalake
    from deltalake import Schema as DeltaSchema

    uri = _table_uri(path)
    arrow_schema = _arrow_schema(df.schema)
    delta_schema = DeltaSchema.from_arrow(arrow_schema)
    existed = _prepare_existing_delta_rs(
        uri, path, delta_schema, partition_by, check_partitioning=partition_by is not None, properties=properties
    )
    # The source comes to the driver: delta-rs merges in this process. The cast makes every field
    # nullable and timestamps UTC, as in the files the executors write.
    source = df.toArrow().cast(arrow_schema)
    if not existed:
        try:
            write_deltalake(uri, source, mode="error", partition_by=[partition_by] if partition_by else None,
                            configuration={**CREATE_PROPERTIES, **(properties or {})})
            return {"inserted": source.num_rows, "updated": 0}
        except Exception:
            if not DeltaTable.is_deltatable(uri):
                raise
            # Another writer created the table meanwhile: merge into it.
            _prepare_existing_delta_rs(uri, path, delta_schema, partition_by,
                                       check_partitioning=partition_by is not None)
    metrics = (
        DeltaTable(uri)
        # streamed_exec=False: the source is in memory anyway, and its min/max lets delta-rs
        # skip target files early.
        .merge(source=source, predicate=predicate, source_alias="s", target_alias="t", streamed_exec=False)
        .when_matched_update_all(predicate=update_condition)
        .when_not_matched_insert_all()
        .execute()
    )
    return {"inserted": metrics.get("num_target_rows_inserted"), "updated": metrics.get("num_target_rows_updated")}


def _read_table_delta_rs(spark: SparkSession, path: str, version: int | None = None,
                         timestamp: datetime | None = None) -> DataFrame:
    from deltalake import DeltaTable

    uri = _table_uri(path)
    dt = DeltaTable(uri, version=version)
    if timestamp is not None:
        dt.load_as_version(timestamp)  # the last version committed at or before it
    _require_plain_parquet_readable(dt, path)
    schema = _delta_schema_as_spark(dt.schema())
    part_cols = list(dt.metadata().partition_columns)
    adds = pa.table(dt.get_add_actions(flatten=True))  # the log's active files, not a listing
    if adds.num_rows == 0:
        return spark.createDataFrame([], schema)

    files: list[str] = []
    hive_layout = True
    part_values: list[tuple] = []
    for i, raw in enumerate(adds.column("path").to_pylist()):
        rel = unquote(raw)  # the log holds URL-encoded paths
        absolute = rel.startswith("/") or "://" in rel
        files.append(rel if absolute else f"{uri}/{rel}")
        values = tuple(adds.column(f"partition.{c}")[i].as_py() for c in part_cols)
        part_values.append(values)
        # Spark derives partition values from col=value folders under basePath; check that the
        # folders say what the log says, else fall back to adding the log's values as literals.
        folders = dict(seg.split("=", 1) for seg in rel.split("/")[:-1] if "=" in seg)
        for c, v in zip(part_cols, values):
            if absolute or c not in folders or (isinstance(v, str) and unquote(folders[c]) != v):
                hive_layout = False

    if hive_layout:
        # The explicit schema fixes the partition columns' types (no inference: '007' stays a
        # string) and the files list comes from the log, so removed files are never read.
        df = spark.read.schema(schema).option("basePath", uri).parquet(*files)
        return df.select(*[F.col(f"`{n}`") for n in schema.names])

    data_schema = StructType([f for f in schema.fields if f.name not in part_cols])
    groups: dict[tuple, list[str]] = {}
    for f, v in zip(files, part_values):
        groups.setdefault(v, []).append(f)
    out: DataFrame | None = None
    for values, group in groups.items():
        part = spark.read.schema(data_schema).parquet(*group)
        for c, v in zip(part_cols, values):
            part = part.withColumn(c, F.lit(v).cast(schema[c].dataType))
        out = part if out is None else out.unionByName(part)
    return out.select(*[F.col(f"`{n}`") for n in schema.names])


# --------------------------------------------------------------------------------------------
# Driver side: native Delta
# --------------------------------------------------------------------------------------------


def _native_schema_or_none(spark: SparkSession, path: str) -> StructType | None:
    try:
        return spark.read.format("delta").load(path).schema
    except Exception:
        # Not a Delta table (yet) - engines word this differently (Spark: DELTA_MISSING_DELTA_TABLE
        # or PATH_NOT_FOUND; Sail: its own message). A real problem resurfaces in the write.
        return None


def _native_merge_schema(existing: StructType, df: DataFrame, path: str, add_new_columns: bool = True) -> bool:
    """True when df only adds columns to the table (additive evolution); raises on other changes."""
    diffs = _schema_differences(existing, df.schema)
    if diffs and add_new_columns and _only_new_columns(existing, df.schema):
        return True
    if diffs:
        raise DeltaSchemaMismatch(path, diffs)
    return False


def _delta_path_sql(path: str) -> str:
    """SQL name of the table at `path` (OSS Delta, Databricks and Sail all accept delta.`path`)."""
    return "delta.`" + path.replace("`", "``") + "`"


def _native_writer(df: DataFrame, path: str, partition_by: str | None, existing: StructType | None,
                   properties: dict[str, str] | None, detail: Any = None):
    """df.write for Delta: a new table gets SegLake's and the caller's properties (writer options
    become table properties at creation); an existing one gets missing caller properties first."""
    writer = df.write.format("delta")
    if partition_by:
        writer = writer.partitionBy(partition_by)
    if existing is None:
        for key, value in {**CREATE_PROPERTIES, **(properties or {})}.items():
            writer = writer.option(key, value)
    else:
        _set_missing_properties_native(df.sparkSession, path, properties, detail)
    return writer


def _native_detail(spark: SparkSession, path: str) -> Any:
    """DESCRIBE DETAIL's row (partition columns, properties), or None on engines without it (Sail).
    It reconstructs the table's state: callers fetch it once per write."""
    try:
        return spark.sql(f"DESCRIBE DETAIL {_delta_path_sql(path)}").first()
    except Exception:  # noqa: BLE001 - Sail: Delta's own checks apply
        return None


def _set_missing_properties_native(spark: SparkSession, path: str, properties: dict[str, str] | None,
                                   detail: Any = None) -> None:
    if not properties:
        return
    detail = detail if detail is not None else spark.sql(f"DESCRIBE DETAIL {_delta_path_sql(path)}").first()
    current = detail["properties"] or {}
    missing = _missing_properties(dict(current), properties)
    if missing:
        pairs = ", ".join(f"'{k}' = '{v}'" for k, v in missing.items())  # (our own constant keys and values)
        spark.sql(f"ALTER TABLE {_delta_path_sql(path)} SET TBLPROPERTIES ({pairs})")


def _check_native_partitioning(detail: Any, path: str, partition_by: str | None) -> None:
    """Raise before writing when the table is partitioned otherwise (Delta would keep its own
    partitioning and write anyway). `detail`: _native_detail's row (None: not checked)."""
    if detail is None:
        return
    parts = list(detail["partitionColumns"])
    expected = [partition_by] if partition_by else []
    if parts != expected:
        raise ValueError(f"Delta table at {path!r} is partitioned by {parts}, not {expected}")


def _write_native(df: DataFrame, path: str, partition_by: str | None, run_id: str | None,
                  add_new_columns: bool = True, properties: dict[str, str] | None = None) -> int:
    """Replaces run `run_id`'s partition (replaceWhere), or the whole table when it is None."""
    spark = df.sparkSession
    existing = _native_schema_or_none(spark, path)
    detail = None
    if existing is not None:
        add_columns = _native_merge_schema(existing, df, path, add_new_columns)  # raises on other changes
        detail = _native_detail(spark, path)
        _check_native_partitioning(detail, path, partition_by)
    writer = _native_writer(df, path, partition_by, existing, properties, detail)
    if existing is not None and add_columns:
        writer = writer.option("mergeSchema", "true")  # additive evolution only
    if run_id is None:
        if partition_by:
            # Partition values become folder names: the same rule as run ids (one pass over df;
            # whole-table overwrites of partitioned tables are rare).
            values = [r[0] for r in df.select(partition_by).distinct().collect()]
            bad = [v for v in values if not isinstance(v, str) or not RUN_ID_RE.fullmatch(v)]
            if bad:
                raise ValueError(f"invalid {partition_by} values: {bad[:5]} (partition values must be non-null "
                                 f"and match {RUN_ID_RE.pattern})")
        # static: the whole table, even where the session sets dynamic partition overwrite.
        writer.mode("overwrite").option("partitionOverwriteMode", "static").save(path)
        return spark.read.format("delta").load(path).count()
    # replaceWhere, also for a new table: Delta checks every written row against the predicate
    # inside the write (no second pass over df), and a table another job created meanwhile keeps
    # its other runs. (Sail rejects replaceWhere on a missing table: there, append creates it.)
    where = f"`{partition_by}` = '{run_id}'"
    try:
        writer.mode("overwrite").option("replaceWhere", where).save(path)
    except Exception as exc:  # noqa: BLE001 - translated or re-raised
        text = str(exc)
        if "DELTA_REPLACE_WHERE_MISMATCH" in text or "DELTA_VIOLATE_CONSTRAINT" in text:
            raise ValueError(f"every row must carry {partition_by}={run_id!r}: rows of other runs in the data for "
                             f"{path} (nothing was committed)") from None
        if existing is not None or _native_schema_or_none(spark, path) is not None or is_conflict(exc):
            raise
        writer.mode("append").save(path)  # an engine without replaceWhere on a missing table
    # Count from the committed partition instead of df.count(): no second pass over df's lineage.
    return spark.read.format("delta").load(path).where(F.col(partition_by) == run_id).count()


def _merge_native(df: DataFrame, path: str, partition_by: str | None, predicate: str,
                  update_condition: str | None, source_rows: int,
                  properties: dict[str, str] | None = None) -> dict[str, int | None]:
    spark = df.sparkSession
    existing = _native_schema_or_none(spark, path)
    if existing is None:
        writer = _native_writer(df, path, partition_by, None, properties)
        try:
            # "error" (if exists): a table another job created meanwhile is merged into, not
            # appended to. (Spark Connect clients refuse the "errorifexists" spelling.)
            writer.mode("error").save(path)
            return {"inserted": source_rows, "updated": 0}
        except Exception:
            existing = _native_schema_or_none(spark, path)
            if existing is None:
                raise
    if _native_merge_schema(existing, df, path):
        # New columns first, explicitly, with an empty append: ALTER TABLE ... ADD COLUMNS is
        # missing in Sail, and MERGE's own evolution needs a session conf or Databricks syntax.
        # A nullable schema: Sail would add a non-null source column as NOT NULL (and then read
        # the older rows' missing values as 0, not null).
        empty = spark.createDataFrame([], _strip_nullability(df.schema))
        empty.write.format("delta").mode("append").option("mergeSchema", "true").save(path)
    _set_missing_properties_native(spark, path, properties)
    view = f"seglake_merge_source_{uuid.uuid4().hex}"
    df.createTempView(view)
    matched = f"WHEN MATCHED AND ({update_condition}) THEN" if update_condition else "WHEN MATCHED THEN"
    try:
        result = spark.sql(
            f"MERGE INTO {_delta_path_sql(path)} AS t USING {view} AS s ON {predicate} "
            f"{matched} UPDATE SET * WHEN NOT MATCHED THEN INSERT *"
        ).collect()
    finally:
        spark.catalog.dropTempView(view)
    # Delta on Spark returns num_inserted_rows/num_updated_rows; engines that return other
    # columns (Sail: one total 'count') leave the split unknown.
    row = result[0].asDict() if result else {}
    return {"inserted": row.get("num_inserted_rows"), "updated": row.get("num_updated_rows")}


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _check_partition_column(df: DataFrame, partition_by: str) -> None:
    if not isinstance(partition_by, str) or not _COLUMN_RE.fullmatch(partition_by):
        raise ValueError(f"invalid partition column name {partition_by!r}")
    if partition_by not in df.columns:
        raise ValueError(f"DataFrame has no partition column {partition_by!r}: {df.columns}")
    if not isinstance(df.schema[partition_by].dataType, StringType):
        raise ValueError(f"partition column {partition_by!r} must be a string column (it holds run ids)")


def write_run(
    df: DataFrame, path: str, run_id: str, *, engine: str = "auto", partition_by: str = "run_id",
    add_new_columns: bool = True, properties: dict[str, str] | None = None,
) -> int:
    """Atomically replace run `run_id`'s rows in the Delta table at `path` with `df`.

    One commit; creates the table (partitioned by `partition_by`) if missing; other runs'
    rows are untouched; returns the number of rows written. Raises ValueError for a bad
    run_id or rows of another run, DeltaSchemaMismatch (before committing) when df's schema
    differs from the existing table's. With `add_new_columns`, columns that df has and the
    table lacks are added to the table first (nullable; earlier rows read them as null):
    that is how a newer SegLake writes into tables of an older one. Missing or retyped
    columns are always refused. `properties` (e.g. CDF_PROPERTIES) are table properties: set at
    creation, and added to an existing table that lacks them (one extra commit, once).
    A commit that loses a race with another writer is retried
    (COMMIT_ATTEMPTS); DeltaConflict when it keeps losing.
    """
    _check_run_id(run_id)
    _check_partition_column(df, partition_by)
    write = _write_native if resolve_engine(df.sparkSession, engine) == "native" else _write_delta_rs
    # A lost race is retried: the commit replaces only this run's rows, whatever the other wrote.
    return _committing(path, f"write of run {run_id}",
                       lambda: write(df, path, partition_by, run_id, add_new_columns, properties), retry=True)


def overwrite_table(df: DataFrame, path: str, *, engine: str = "auto", partition_by: str | None = None,
                    properties: dict[str, str] | None = None) -> int:
    """Replace the whole Delta table at `path` with `df` in one commit; returns rows written.

    Creates the table if missing (partitioned by `partition_by`, or not at all); older versions
    stay readable by time travel (read_table(version=...)). Schema rules as in write_run:
    new columns are added to the table first, missing or retyped ones raise DeltaSchemaMismatch
    before anything is committed. Partition values must look like run ids (RUN_ID_RE).
    """
    if partition_by is not None:
        _check_partition_column(df, partition_by)
    write = _write_native if resolve_engine(df.sparkSession, engine) == "native" else _write_delta_rs
    return _committing(path, "overwrite", lambda: write(df, path, partition_by, None, True, properties), retry=True)


def _table_location(spark: SparkSession, name: str) -> str | None:
    """Where the catalog table `name` lives ("" when the engine does not say), or None when
    there is no such table."""
    if not spark.catalog.tableExists(name):
        return None
    rows = spark.sql(f"DESCRIBE TABLE EXTENDED {name}").collect()
    return next((r["data_type"] for r in rows if r["col_name"] == "Location"), "")


def register_tables(spark: SparkSession, tables: dict[str, str], schema: str) -> dict[str, str]:
    """Name each Delta table at `tables[name]` in the catalog schema `schema` (Unity Catalog
    `catalog.schema`, or a metastore database) as an external table, so that readers query
    `schema.name` rather than a path. Idempotent. A name already bound to another location
    raises: its readers would otherwise silently see another table. Tables not written yet are
    skipped. Returns name -> full name of the registered ones.
    Needs a session whose catalog knows Delta (the native engine)."""
    if not spark.catalog.databaseExists(schema):
        spark.sql(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    names = {}
    for name, path in tables.items():
        if _native_schema_or_none(spark, path) is None:
            continue  # (not written yet, e.g. no events: registered by a later run)
        full, location = f"{schema}.{name}", _table_uri(path)
        bound = _table_location(spark, full)
        if bound is None:
            quoted = location.replace("\\", "\\\\").replace("'", "\\'")
            spark.sql(f"CREATE TABLE IF NOT EXISTS {full} USING delta LOCATION '{quoted}'")
        elif bound and _table_uri(bound) != location:  # ("": an engine that does not say)
            raise ValueError(f"catalog table {full} already points at {bound}, not at {location}: "
                             "use another output.catalog_schema or drop that table")
        names[name] = full
    return names


def _merge_predicate(df: DataFrame, keys: list[str], partition_values: dict[str, str] | None) -> str:
    """ON clause: all keys equal, plus literal filters on the target's partition columns."""
    if isinstance(keys, str) or not keys:
        raise ValueError(f"merge keys must be a non-empty list of column names, got {keys!r}")
    for name in list(keys) + list(partition_values or {}):
        if not isinstance(name, str) or not _COLUMN_RE.fullmatch(name) or name not in df.columns:
            raise ValueError(f"invalid column {name!r} (must be a plain column of the source: {df.columns})")
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate merge keys {keys!r}")
    terms = [f"t.`{k}` = s.`{k}`" for k in keys]
    for name, value in (partition_values or {}).items():
        # The value goes into SQL as a literal: only run-id-like strings, which need no escaping.
        if not isinstance(value, str) or not RUN_ID_RE.fullmatch(value):
            raise ValueError(f"invalid partition value {name}={value!r}: must match {RUN_ID_RE.pattern}")
        terms.append(f"t.`{name}` = '{value}'")
    return " AND ".join(terms)


def _check_merge_source(df: DataFrame, keys: list[str], partition_values: dict[str, str] | None) -> int:
    """Source rows; raises ValueError for duplicate or null keys, or rows outside partition_values.
    One small Spark job, before anything is collected or committed."""
    outside = F.lit(False)
    for name, value in (partition_values or {}).items():
        outside = outside | ~F.coalesce(F.col(f"`{name}`") == F.lit(value), F.lit(False))
    null_key = F.lit(False)
    for k in keys:
        null_key = null_key | F.col(f"`{k}`").isNull()
    per_key = df.groupBy(*[F.col(f"`{k}`") for k in keys]).agg(
        F.count(F.lit(1)).alias("_n"),
        F.max(null_key.cast("int")).alias("_null_key"),
        F.max(outside.cast("int")).alias("_outside"),
    )
    found = per_key.agg(
        F.sum("_n").alias("rows"),
        F.first(F.when(F.col("_n") > 1, F.struct(*[F.col(f"`{k}`") for k in keys])), ignorenulls=True).alias("dup"),
        F.max("_null_key").alias("null_key"),
        F.max("_outside").alias("outside"),
    ).first()
    if found["dup"] is not None:
        raise ValueError(f"merge source has duplicate keys, e.g. {found['dup'].asDict()} (keys {keys})")
    if found["null_key"]:
        # A NULL key never matches, so every rerun would insert the row again.
        raise ValueError(f"merge source has rows with a NULL key column {keys}")
    if found["outside"]:
        raise ValueError(f"merge source has rows outside partition {partition_values}")
    return int(found["rows"] or 0)


def merge(
    df: DataFrame, path: str, keys: list[str], *, engine: str = "auto", partition_by: str | None = None,
    update_condition: str | None = None, partition_values: dict[str, str] | None = None,
    properties: dict[str, str] | None = None,
) -> dict[str, int | None]:
    """Upsert `df` into the Delta table at `path` (MERGE) on the columns `keys`, in one commit.

    Target rows matching a source row on all keys get all the source's columns (only where
    `update_condition` holds, if given: trusted SQL over aliases t (target) and s (source), e.g.
    "t.last_batch <> s.last_batch OR t.last_batch IS NULL"); other source rows are inserted;
    other target rows are untouched. A missing table is created from df (partitioned by
    `partition_by` if given). `partition_values` ({"run_id": "r1"}) restrict the match to that
    target partition (and every source row must be in it). Source keys must be unique and
    non-null (ValueError). Schema rules as in write_run: new source columns are added to the
    table first; missing or retyped ones raise DeltaSchemaMismatch before anything is committed.

    delta-rs runs the MERGE on the driver (the source is collected as Arrow): fine for
    incremental batches locally; clusters use the native engine (MERGE INTO in Spark).
    Returns {"inserted", "updated", "source_rows"}; a count is None where the engine does
    not report it. A MERGE that loses a race with another writer raises DeltaConflict (not
    retried: the source may have been computed from the table as it was before that commit).
    """
    if partition_by is not None:
        _check_partition_column(df, partition_by)
    predicate = _merge_predicate(df, keys, partition_values)
    source_rows = _check_merge_source(df, keys, partition_values)
    if resolve_engine(df.sparkSession, engine) == "native":
        commit = lambda: _merge_native(df, path, partition_by, predicate, update_condition, source_rows,  # noqa: E731
                                       properties)
    else:
        commit = lambda: _merge_delta_rs(df, path, partition_by, predicate, update_condition, properties)  # noqa: E731
    # Not retried: the source was computed from the table as it was (e.g. a user's state combined
    # with their stored one), so merging it over another writer's commit could undo that commit.
    counts = _committing(path, "MERGE", commit, retry=False)
    return {**counts, "source_rows": source_rows}


def _as_utc(timestamp: datetime | str) -> datetime:
    """Aware UTC datetime; naive values (datetime or ISO string) are taken as UTC."""
    if isinstance(timestamp, str):
        try:
            timestamp = datetime.fromisoformat(timestamp)
        except ValueError:
            raise ValueError(f"invalid timestamp {timestamp!r}: expected ISO 8601") from None
    if not isinstance(timestamp, datetime):
        raise ValueError(f"invalid timestamp {timestamp!r}: expected a datetime or an ISO 8601 string")
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=timezone.utc)
    return timestamp.astimezone(timezone.utc)


def read_table(
    spark: SparkSession, path: str, *, engine: str = "auto", version: int | None = None,
    timestamp: datetime | str | None = None,
) -> DataFrame:
    """Spark DataFrame of the table, read through the Delta log.

    The current version, or (time travel) version number `version`, or the version current
    as of `timestamp` (datetime or ISO string; naive means UTC). Older versions need their
    files: vacuum removes them.
    """
    if version is not None and timestamp is not None:
        raise ValueError("give version or timestamp, not both")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 0):
        raise ValueError(f"invalid table version {version!r}")
    as_of = _as_utc(timestamp) if timestamp is not None else None
    if resolve_engine(spark, engine) == "native":
        reader = spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        if as_of is not None:
            reader = reader.option("timestampAsOf", as_of.isoformat())  # with its +00:00 offset
        return reader.load(path)
    return _read_table_delta_rs(spark, path, version, as_of)


def table_version(spark: SparkSession, path: str, *, engine: str = "auto") -> int:
    """Current version number of the Delta table at `path`."""
    if resolve_engine(spark, engine) == "native":
        try:
            return int(spark.sql(f"DESCRIBE HISTORY {_delta_path_sql(path)}").agg(F.max("version")).first()[0])
        except Exception:
            pass  # engines without DESCRIBE HISTORY (Sail): the log read by delta-rs says the same
    from deltalake import DeltaTable

    return DeltaTable(_table_uri(path)).version()


def read_table_if_exists(spark: SparkSession, path: str, *, engine: str = "auto") -> DataFrame | None:
    """read_table for a table that may not have been created yet (None then)."""
    return read_table(spark, path, engine=engine) if table_exists(path) else None


def table_exists(path: str) -> bool:
    """True when `path` holds a Delta table (a readable _delta_log)."""
    from deltalake import DeltaTable

    return DeltaTable.is_deltatable(_table_uri(path))
