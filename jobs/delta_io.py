"""Write and read SegLake's Delta tables: one run partition at a time (write_run), the whole
table (overwrite_table), or by key (merge); read any version (read_table, time travel).

This module is engine-neutral: it checks the arguments and hands each commit to one of two
engines, with the retries on a lost commit race (jobs/delta_base.py):

* ``native``   - Spark's own Delta data source (jobs/delta_native.py): Databricks, or clusters
  whose image carries the Delta jars.
* ``delta-rs`` - for everywhere else (jobs/delta_rs.py): executors write Parquet with pyarrow,
  the driver commits with ``deltalake``.

Jobs reach the tables through the registry (jobs/tables.py), which calls these functions.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType

from jobs import delta_native, delta_rs
from jobs.delta_base import (  # noqa: F401 - the errors, properties and engine choice are this API's too
    CDF_PROPERTIES, CREATE_PROPERTIES, ENGINES, RUN_ID_RE, DeltaConflict, DeltaSchemaMismatch, NativeDeltaRequired,
    check_run_id, committing, is_conflict, resolve_engine, table_uri, user_segments_properties)
from jobs.delta_base import COLUMN_RE

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _check_partition_column(df: DataFrame, partition_by: str) -> None:
    if not isinstance(partition_by, str) or not COLUMN_RE.fullmatch(partition_by):
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
    check_run_id(run_id)
    _check_partition_column(df, partition_by)
    write = delta_native.write if resolve_engine(df.sparkSession, engine) == "native" else delta_rs.write
    # A lost race is retried: the commit replaces only this run's rows, whatever the other wrote.
    return committing(path, f"write of run {run_id}",
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
    write = delta_native.write if resolve_engine(df.sparkSession, engine) == "native" else delta_rs.write
    return committing(path, "overwrite", lambda: write(df, path, partition_by, None, True, properties), retry=True)


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
        if delta_native.schema_or_none(spark, path) is None:
            continue  # (not written yet, e.g. no events: registered by a later run)
        full, location = f"{schema}.{name}", table_uri(path)
        bound = _table_location(spark, full)
        if bound is None:
            quoted = location.replace("\\", "\\\\").replace("'", "\\'")
            spark.sql(f"CREATE TABLE IF NOT EXISTS {full} USING delta LOCATION '{quoted}'")
        elif bound and table_uri(bound) != location:  # ("": an engine that does not say)
            raise ValueError(f"catalog table {full} already points at {bound}, not at {location}: "
                             "use another output.catalog_schema or drop that table")
        names[name] = full
    return names


def _merge_predicate(df: DataFrame, keys: list[str], partition_values: dict[str, str] | None) -> str:
    """ON clause: all keys equal, plus literal filters on the target's partition columns."""
    if isinstance(keys, str) or not keys:
        raise ValueError(f"merge keys must be a non-empty list of column names, got {keys!r}")
    for name in list(keys) + list(partition_values or {}):
        if not isinstance(name, str) or not COLUMN_RE.fullmatch(name) or name not in df.columns:
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


def _materialized(df: DataFrame) -> DataFrame:
    """df computed once into the executors' block stores, its plan cut to a scan of them.

    Delta plans MERGE's source several times over (the touched files, the rewrite, its own
    materialization), and an incremental batch's source plan runs to thousands of lines: on
    small batches, analysing and optimising those plans on the driver cost more than the Spark
    jobs did. This also makes the source check below and the MERGE see the same rows. (A lost
    executor loses the blocks and fails the MERGE before it commits; the batch's rerun then
    applies it once, as after any failed batch.) Engines without local checkpoints get df."""
    try:
        return df.localCheckpoint(eager=True)
    except Exception:  # noqa: BLE001 - an engine without it (Spark Connect servers may refuse it)
        return df


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
    native = resolve_engine(df.sparkSession, engine) == "native"
    if native:
        df = _materialized(df)
    source_rows = _check_merge_source(df, keys, partition_values)
    if native:
        commit = lambda: delta_native.merge(df, path, partition_by, predicate, update_condition, source_rows,  # noqa: E731
                                       properties)
    else:
        commit = lambda: delta_rs.merge(df, path, partition_by, predicate, update_condition, properties)  # noqa: E731
    # Not retried: the source was computed from the table as it was (e.g. a user's state combined
    # with their stored one), so merging it over another writer's commit could undo that commit.
    counts = committing(path, "MERGE", commit, retry=False)
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
    return delta_rs.read_table(spark, path, version, as_of)


def table_version(spark: SparkSession, path: str, *, engine: str = "auto") -> int:
    """Current version number of the Delta table at `path`."""
    if resolve_engine(spark, engine) == "native":
        try:
            return int(spark.sql(f"DESCRIBE HISTORY {delta_native.path_sql(path)}").agg(F.max("version")).first()[0])
        except Exception:
            pass  # engines without DESCRIBE HISTORY (Sail): the log read by delta-rs says the same
    from deltalake import DeltaTable

    return DeltaTable(table_uri(path)).version()


def read_table_if_exists(spark: SparkSession, path: str, *, engine: str = "auto") -> DataFrame | None:
    """read_table for a table that may not have been created yet (None then)."""
    return read_table(spark, path, engine=engine) if table_exists(path) else None


def table_exists(path: str) -> bool:
    """True when `path` holds a Delta table (a readable _delta_log)."""
    from deltalake import DeltaTable

    return DeltaTable.is_deltatable(table_uri(path))

