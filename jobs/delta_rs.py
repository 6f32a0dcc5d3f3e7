"""The delta-rs engine, for everywhere Spark has no Delta (local runs, tests, CI): Spark
executors write plain Parquet files with pyarrow (``mapInArrow``), the driver commits them with
one ``deltalake`` transaction (merge: ``deltalake`` merges on the driver). Reading goes through
the Delta log (``deltalake``) and hands the active files to Spark's Parquet reader.

``deltalake`` is imported only inside driver-side functions: it is not fork-safe, and Spark's
Python daemon forks the workers that import this module to run the Parquet writer.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from datetime import datetime
from typing import Any, Callable, Iterator
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import fs as pafs
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

log = logging.getLogger(__name__)
from jobs.delta_base import (CREATE_PROPERTIES, DeltaSchemaMismatch, NativeDeltaRequired, RUN_ID_RE, arrow_schema,
                             delta_schema_as_spark, missing_properties, only_new_columns, schema_differences,
                             table_uri)

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


def _check_partition_keys(key: pa.Array, partition_by: str, run_id: str | None) -> None:
    """With `run_id`, every row must carry it; else every value must look like a run id."""
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


def _split_by_partition(batch: pa.RecordBatch, partition_by: str | None, data_names: list[str],
                        run_id: str | None) -> Iterator[tuple[str | None, pa.RecordBatch]]:
    """(partition value, rows) pieces of a batch, in order of first appearance; the partition
    column is dropped (it lives in the folder name and the log)."""
    if partition_by is None:
        yield None, batch.select(data_names)
        return
    key = batch.column(partition_by)
    _check_partition_keys(key, partition_by, run_id)
    values = pc.unique(key).to_pylist()
    if len(values) == 1:
        yield values[0], batch.select(data_names)
        return
    for value in values:
        yield value, batch.filter(pc.equal(key, value)).select(data_names)


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

    def split(batch: pa.RecordBatch) -> Iterator[tuple[str | None, pa.RecordBatch]]:
        return _split_by_partition(batch, partition_by, data_names, run_id)

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
    diffs = schema_differences(delta_schema_as_spark(dt.schema()), data_schema)
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
    data_schema = delta_schema_as_spark(delta_schema)
    dt = DeltaTable(uri)
    new = only_new_columns(delta_schema_as_spark(dt.schema()), data_schema) if add_new_columns else []
    if new:
        # Additive evolution, explicitly: one schema commit adds the new nullable
        # columns (older rows read them as null), then the data commit follows.
        _require_delta_rs_writable(dt, path)
        dt.alter.add_columns([f for f in delta_schema.fields if f.name in new])
        dt = DeltaTable(uri)
    # Checked before any file is written; the notes saw mismatches committed silently.
    _check_existing(dt, path, data_schema, partition_by, check_partitioning)
    missing = missing_properties(dt.metadata().configuration or {}, properties)
    if missing:
        dt.alter.set_table_properties(missing)  # e.g. CDF switched on for an existing table
    return True



def write(df: DataFrame, path: str, partition_by: str | None, run_id: str | None,
                    add_new_columns: bool = True, properties: dict[str, str] | None = None) -> int:
    """Executors write Parquet, the driver commits once: replaces run `run_id`'s partition, or the
    whole table when `run_id` is None."""
    from deltalake import DeltaTable
    from deltalake import Schema as DeltaSchema
    from deltalake.transaction import AddAction, create_table_with_add_actions

    uri = table_uri(path)
    table_arrow = arrow_schema(df.schema)
    delta_schema = DeltaSchema.from_arrow(table_arrow)
    data_schema = delta_schema_as_spark(delta_schema)
    existed = _prepare_existing_delta_rs(uri, path, delta_schema, partition_by, add_new_columns, properties=properties)

    if partition_by and run_id is None:
        # Rows of one partition value next to each other: one open file per task at a time.
        df = df.sortWithinPartitions(partition_by)
    file_schema = pa.schema([f for f in table_arrow if f.name != partition_by])
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


def merge(df: DataFrame, path: str, partition_by: str | None, predicate: str,
                    update_condition: str | None, properties: dict[str, str] | None = None) -> dict[str, int | None]:
    from deltalake import DeltaTable, write_deltalake
    from deltalake import Schema as DeltaSchema

    uri = table_uri(path)
    table_arrow = arrow_schema(df.schema)
    delta_schema = DeltaSchema.from_arrow(table_arrow)
    existed = _prepare_existing_delta_rs(
        uri, path, delta_schema, partition_by, check_partitioning=partition_by is not None, properties=properties
    )
    # The source comes to the driver: delta-rs merges in this process. The cast makes every field
    # nullable and timestamps UTC, as in the files the executors write.
    source = df.toArrow().cast(table_arrow)
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


def read_table(spark: SparkSession, path: str, version: int | None = None,
                         timestamp: datetime | None = None) -> DataFrame:
    from deltalake import DeltaTable

    uri = table_uri(path)
    dt = DeltaTable(uri, version=version)
    if timestamp is not None:
        dt.load_as_version(timestamp)  # the last version committed at or before it
    _require_plain_parquet_readable(dt, path)
    schema = delta_schema_as_spark(dt.schema())
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

