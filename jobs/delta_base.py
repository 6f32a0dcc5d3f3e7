"""What both Delta engines share: table properties, errors, commit retries, engine choice,
run ids, table URIs and schema checks."""
from __future__ import annotations

import json
import logging
import os
import re
import time
from typing import Any, Callable
from urllib.parse import unquote, urlparse

import pyarrow as pa
from pyspark.sql import SparkSession
from pyspark.sql.types import ArrayType, DataType, MapType, StructField, StructType

log = logging.getLogger(__name__)

ENGINES = ("auto", "native", "delta-rs")

# Run ids become folder names (run_id=<id>) and go into SQL predicates: keep them boring.
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# Partition, key and filter columns go into SQL predicates too: plain names only.
COLUMN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

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


def committing(path: str, operation: str, commit: Callable[[], Any], retry: bool) -> Any:
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


def table_uri(path: str) -> str:
    """URI that deltalake, pyarrow.fs and Spark all accept for the table root."""
    path = path.rstrip("/") or "/"
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", path) and not path.startswith("file://"):
        return path  # s3://, abfss://, hdfs://, ...
    if path.startswith("file:"):
        path = unquote(urlparse(path).path)
    # pyarrow.fs.FileSystem.from_uri needs an absolute local path.
    return os.path.abspath(path)


def check_run_id(run_id: str) -> None:
    if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id):
        raise ValueError(f"invalid run_id {run_id!r}: must match {RUN_ID_RE.pattern}")


def strip_nullability(dt: DataType) -> DataType:
    """Same type with every field/element/value nullable and no field metadata."""
    if isinstance(dt, StructType):
        return StructType([StructField(f.name, strip_nullability(f.dataType), True) for f in dt.fields])
    if isinstance(dt, ArrayType):
        return ArrayType(strip_nullability(dt.elementType), True)
    if isinstance(dt, MapType):
        return MapType(strip_nullability(dt.keyType), strip_nullability(dt.valueType), True)
    return dt


def schema_differences(table: StructType, data: StructType) -> list[str]:
    """Column-level differences, ignoring nullability and top-level column order."""
    tcols = {f.name: strip_nullability(f.dataType) for f in table.fields}
    dcols = {f.name: strip_nullability(f.dataType) for f in data.fields}
    diffs = [f"missing column {n!r} ({tcols[n].simpleString()})" for n in tcols if n not in dcols]
    diffs += [f"extra column {n!r} ({dcols[n].simpleString()})" for n in dcols if n not in tcols]
    diffs += [
        f"column {n!r} is {dcols[n].simpleString()} but the table has {tcols[n].simpleString()}"
        for n in tcols
        if n in dcols and tcols[n] != dcols[n]
    ]
    return diffs


def only_new_columns(table: StructType, data: StructType) -> list[str]:
    """Names of data columns the table lacks, when that is the only difference; else []."""
    names = {f.name for f in table.fields}
    new = [f.name for f in data.fields if f.name not in names]
    if not new:
        return []
    kept = StructType([f for f in data.fields if f.name in names])
    return new if not schema_differences(table, kept) else []


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


def arrow_schema(schema: StructType) -> pa.Schema:
    """Arrow schema of the Parquet files: all nullable, Spark timestamps as UTC instants."""
    from pyspark.sql.pandas.types import to_arrow_schema

    # timezone="UTC": Spark TimestampType values are instants, Delta 'timestamp' is UTC-adjusted.
    # Without a time zone they would become timestamp_ntz (and upgrade the table protocol).
    raw = to_arrow_schema(schema, timezone="UTC")
    # Nullable everywhere: Spark's non-null fields would otherwise become NOT NULL Delta columns.
    return pa.schema([pa.field(f.name, _nullable_arrow_type(f.type), True) for f in raw])


def delta_schema_as_spark(delta_schema: Any) -> StructType:
    """Delta's schemaString is Spark's StructType JSON."""
    return StructType.fromJson(json.loads(delta_schema.to_json()))

def missing_properties(current: dict[str, str], wanted: dict[str, str] | None) -> dict[str, str]:
    return {k: v for k, v in (wanted or {}).items() if str(current.get(k, "")).lower() != v.lower()}
