"""The native engine: Spark's own Delta data source (Databricks, or clusters whose image
carries the Delta jars): ``format("delta")`` with ``replaceWhere`` on the run partition,
``MERGE INTO``."""
from __future__ import annotations

import logging
import uuid
from typing import Any, Callable

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from jobs.delta_base import (CREATE_PROPERTIES, DeltaSchemaMismatch, RUN_ID_RE, is_conflict, missing_properties,
                             only_new_columns, schema_differences, strip_nullability)

log = logging.getLogger(__name__)
HISTORY_LOOKBACK = 10  # commits searched for a write's own (concurrent writers are rare: jobs/lock.py)


# --------------------------------------------------------------------------------------------
# Driver side: native Delta
# --------------------------------------------------------------------------------------------


def schema_or_none(spark: SparkSession, path: str) -> StructType | None:
    try:
        return spark.read.format("delta").load(path).schema
    except Exception:
        # Not a Delta table (yet) - engines word this differently (Spark: DELTA_MISSING_DELTA_TABLE
        # or PATH_NOT_FOUND; Sail: its own message). A real problem resurfaces in the write.
        return None


def _native_merge_schema(existing: StructType, df: DataFrame, path: str, add_new_columns: bool = True) -> bool:
    """True when df only adds columns to the table (additive evolution); raises on other changes."""
    diffs = schema_differences(existing, df.schema)
    if diffs and add_new_columns and only_new_columns(existing, df.schema):
        return True
    if diffs:
        raise DeltaSchemaMismatch(path, diffs)
    return False


def path_sql(path: str) -> str:
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
        return spark.sql(f"DESCRIBE DETAIL {path_sql(path)}").first()
    except Exception:  # noqa: BLE001 - Sail: Delta's own checks apply
        return None


def _set_missing_properties_native(spark: SparkSession, path: str, properties: dict[str, str] | None,
                                   detail: Any = None) -> None:
    if not properties:
        return
    detail = detail if detail is not None else spark.sql(f"DESCRIBE DETAIL {path_sql(path)}").first()
    current = detail["properties"] or {}
    missing = missing_properties(dict(current), properties)
    if missing:
        pairs = ", ".join(f"'{k}' = '{v}'" for k, v in missing.items())  # (our own constant keys and values)
        spark.sql(f"ALTER TABLE {path_sql(path)} SET TBLPROPERTIES ({pairs})")


def _check_native_partitioning(detail: Any, path: str, partition_by: str | None) -> None:
    """Raise before writing when the table is partitioned otherwise (Delta would keep its own
    partitioning and write anyway). `detail`: _native_detail's row (None: not checked)."""
    if detail is None:
        return
    parts = list(detail["partitionColumns"])
    expected = [partition_by] if partition_by else []
    if parts != expected:
        raise ValueError(f"Delta table at {path!r} is partitioned by {parts}, not {expected}")


def write(df: DataFrame, path: str, partition_by: str | None, run_id: str | None,
                  add_new_columns: bool = True, properties: dict[str, str] | None = None) -> int:
    """Replaces run `run_id`'s partition (replaceWhere), or the whole table when it is None."""
    spark = df.sparkSession
    existing = schema_or_none(spark, path)
    detail = None
    if existing is not None:
        add_columns = _native_merge_schema(existing, df, path, add_new_columns)  # raises on other changes
        detail = _native_detail(spark, path)
        _check_native_partitioning(detail, path, partition_by)
    writer = _native_writer(df, path, partition_by, existing, properties, detail)
    tag = commit_tag(spark)
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
        writer.mode("overwrite").option("partitionOverwriteMode", "static").option("userMetadata", tag).save(path)
        return _rows_committed(spark, path, tag, lambda: spark.read.format("delta").load(path).count())
    # replaceWhere, also for a new table: Delta checks every written row against the predicate
    # inside the write (no second pass over df), and a table another job created meanwhile keeps
    # its other runs. (Sail rejects replaceWhere on a missing table: there, append creates it.)
    where = f"`{partition_by}` = '{run_id}'"
    try:
        writer.mode("overwrite").option("replaceWhere", where).option("userMetadata", tag).save(path)
    except Exception as exc:  # noqa: BLE001 - translated or re-raised
        text = str(exc)
        if "DELTA_REPLACE_WHERE_MISMATCH" in text or "DELTA_VIOLATE_CONSTRAINT" in text:
            raise ValueError(f"every row must carry {partition_by}={run_id!r}: rows of other runs in the data for "
                             f"{path} (nothing was committed)") from None
        if existing is not None or schema_or_none(spark, path) is not None or is_conflict(exc):
            raise
        writer.mode("append").option("userMetadata", tag).save(path)  # an engine without replaceWhere on a missing table
    return _rows_committed(spark, path, tag,
                           lambda: spark.read.format("delta").load(path).where(F.col(partition_by) == run_id).count())


def commit_tag(spark: SparkSession) -> str:
    """The commit's userMetadata: a token that finds this write's commit in the table history
    (after the session's own userMetadata, if it sets one)."""
    own = spark.conf.get("spark.databricks.delta.commitInfo.userMetadata", None)
    token = f"seglake-write-{uuid.uuid4().hex[:16]}"
    return f"{own} ({token})" if own else token


def _rows_committed(spark: SparkSession, path: str, tag: str, count: Callable[[], int]) -> int:
    """Rows the commit tagged `tag` wrote, from its operation metrics in the table history: a
    read of the last few commit files, where counting the written partition (the fallback,
    for engines or tables without those metrics) reads the new snapshot and scans its files.
    Neither makes a second pass over the written frame's lineage."""
    try:
        history = spark.sql(f"DESCRIBE HISTORY {path_sql(path)} LIMIT {HISTORY_LOOKBACK}").collect()
    except Exception:  # noqa: BLE001 - an engine without DESCRIBE HISTORY (Sail): count instead
        return count()
    for row in history:
        if row["userMetadata"] == tag:
            rows = (row["operationMetrics"] or {}).get("numOutputRows")
            return int(rows) if rows is not None else count()
    return count()  # (more than HISTORY_LOOKBACK commits since ours: other writers)


def merge(df: DataFrame, path: str, partition_by: str | None, predicate: str,
                  update_condition: str | None, source_rows: int,
                  properties: dict[str, str] | None = None) -> dict[str, int | None]:
    spark = df.sparkSession
    existing = schema_or_none(spark, path)
    if existing is None:
        writer = _native_writer(df, path, partition_by, None, properties)
        try:
            # "error" (if exists): a table another job created meanwhile is merged into, not
            # appended to. (Spark Connect clients refuse the "errorifexists" spelling.)
            writer.mode("error").save(path)
            return {"inserted": source_rows, "updated": 0}
        except Exception:
            existing = schema_or_none(spark, path)
            if existing is None:
                raise
    if _native_merge_schema(existing, df, path):
        # New columns first, explicitly, with an empty append: ALTER TABLE ... ADD COLUMNS is
        # missing in Sail, and MERGE's own evolution needs a session conf or Databricks syntax.
        # A nullable schema: Sail would add a non-null source column as NOT NULL (and then read
        # the older rows' missing values as 0, not null).
        empty = spark.createDataFrame([], strip_nullability(df.schema))
        empty.write.format("delta").mode("append").option("mergeSchema", "true").save(path)
    _set_missing_properties_native(spark, path, properties)
    view = f"seglake_merge_source_{uuid.uuid4().hex}"
    df.createTempView(view)
    matched = f"WHEN MATCHED AND ({update_condition}) THEN" if update_condition else "WHEN MATCHED THEN"
    try:
        result = spark.sql(
            f"MERGE INTO {path_sql(path)} AS t USING {view} AS s ON {predicate} "
            f"{matched} UPDATE SET * WHEN NOT MATCHED THEN INSERT *"
        ).collect()
    finally:
        spark.catalog.dropTempView(view)
    # Delta on Spark returns num_inserted_rows/num_updated_rows; engines that return other
    # columns (Sail: one total 'count') leave the split unknown.
    row = result[0].asDict() if result else {}
    return {"inserted": row.get("num_inserted_rows"), "updated": row.get("num_updated_rows")}

