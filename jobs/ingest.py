"""Ingest stage: read texts/events, map column names, tag bad rows with a reason.

Nothing is dropped here. Every stage up to the split adds or updates the `reason`
column; `split_quarantine` then yields the kept rows and the quarantine rows, so
rows read = rows kept + rows quarantined by construction.
"""
from __future__ import annotations

import os

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs.config import EVENT_COLUMNS, EVENT_TYPES, TEXT_COLUMNS
from udfs.pii import mask_record_udf

CORRUPT = "_corrupt_record"
REASON = "reason"


class InputError(ValueError):
    """Input cannot be read as configured (missing file, missing column, bad format)."""


def is_local_path(path: str) -> bool:
    """True for plain file-system paths (not s3://, abfss://, dbfs:, ...)."""
    return "://" not in path and not path.startswith("dbfs:")


def read_source(spark: SparkSession, path: str, fmt: str, options: dict | None = None,
                engine: str = "auto", name: str = "input") -> DataFrame:
    """Read one input. CSV/JSON are read as strings with malformed lines kept in
    `_corrupt_record` (PERMISSIVE), so parsing and validation happen explicitly later.
    `table`: `path` is a table name in the session's catalog (Unity Catalog: catalog.schema.table)."""
    options = {str(k): str(v) for k, v in (options or {}).items()}
    if fmt == "table":
        try:
            exists = spark.catalog.tableExists(path)
        except Exception:  # noqa: BLE001 - an unknown catalog or schema: the table is not there either
            exists = False
        if not exists:
            raise InputError(f"{name} input table not found: {path}")
        return spark.read.options(**options).table(path)
    if is_local_path(path) and not os.path.exists(path):
        raise InputError(f"{name} input not found: {path}")
    try:
        return _read_files(spark, path, fmt, options, engine, name)
    except Exception as exc:  # noqa: BLE001 - Spark's reader errors: a file that is not in that format
        if not _is_read_error(exc):
            raise
        raise InputError(f"{name} input {path} cannot be read as {fmt}: {_first_line(exc)}") from None


def _is_read_error(exc: BaseException) -> bool:
    """Spark's errors for files it cannot read in the given format (a CSV read as Parquet:
    'is not a Parquet file', a footer it cannot read), as opposed to a failing cluster."""
    from pyspark.errors import PySparkException
    from py4j.protocol import Py4JJavaError

    text = str(exc)
    return isinstance(exc, (PySparkException, Py4JJavaError)) and any(
        m in text for m in ("FAILED_READ_FILE", "CANNOT_READ_FILE", "not a Parquet file", "UNABLE_TO_INFER_SCHEMA",
                            "magic number"))


def _first_line(exc: BaseException) -> str:
    """The Java exception's own message (py4j puts "An error occurred while calling oNN..." first)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.startswith("\tat ")]
    for ln in lines:
        if "Exception: " in ln:
            return ln.split("Exception: ", 1)[1][:300]
    return (lines[0] if lines else type(exc).__name__)[:300]


def _read_files(spark: SparkSession, path: str, fmt: str, options: dict, engine: str, name: str) -> DataFrame:
    if fmt == "csv":
        opts = {"header": "true", "multiLine": "true", "escape": '"', **options}
        schema = _string_schema(spark.read.options(**opts).csv(path).columns)
        return (spark.read.options(**opts).option("mode", "PERMISSIVE")
                .option("columnNameOfCorruptRecord", CORRUPT).schema(schema).csv(path))
    if fmt == "json":
        opts = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT,
                "primitivesAsString": "true", **options}
        return spark.read.options(**opts).json(path)
    if fmt == "parquet":
        return spark.read.options(**options).parquet(path)
    if fmt == "delta":
        from jobs import delta_io

        return delta_io.read_table(spark, path, engine=engine)
    raise InputError(f"unsupported {name} format {fmt!r}")


def _string_schema(columns: list[str]) -> T.StructType:
    return T.StructType([T.StructField(c, T.StringType()) for c in columns if c != CORRUPT]
                        + [T.StructField(CORRUPT, T.StringType())])


def read_stream(spark: SparkSession, path: str, fmt: str, options: dict | None = None, engine: str = "auto",
                name: str = "input", max_files_per_trigger: int | None = None) -> DataFrame:
    """A streaming read of a folder of files (or of a Delta table with native Delta), with the
    same column handling as `read_source`. File streams need a schema up front: it comes from
    the files already in the folder (CSV header / JSON keys read as strings, Parquet as is)."""
    options = {str(k): str(v) for k, v in (options or {}).items()}
    if max_files_per_trigger:
        options["maxFilesPerTrigger"] = str(max_files_per_trigger)
    if fmt == "delta":
        from jobs import delta_io

        if delta_io.resolve_engine(spark, engine) != "native":
            raise InputError(f"streaming from the Delta table {path} needs native Delta (Databricks or the "
                             "Delta jars); without them stream from a folder of files")
        return spark.readStream.format("delta").options(**options).load(path)
    if fmt == "table":
        # A catalog table that supports streaming reads (a Delta table in Unity Catalog).
        return spark.readStream.options(**options).table(path)
    if is_local_path(path) and not (os.path.isdir(path) and any(not f.startswith((".", "_"))
                                                                 for f in os.listdir(path))):
        raise InputError(f"{name} stream folder {path} is missing or empty: a file stream takes its schema "
                         "from the files present when it starts, so add at least one file first")
    batch = read_source(spark, path, fmt, {k: v for k, v in options.items() if k != "maxFilesPerTrigger"},
                        engine, name)
    if fmt == "csv":
        opts = {"header": "true", "multiLine": "true", "escape": '"', "mode": "PERMISSIVE",
                "columnNameOfCorruptRecord": CORRUPT, **options}
        return spark.readStream.options(**opts).schema(_string_schema(batch.columns)).csv(path)
    if fmt == "json":
        opts = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": CORRUPT, **options}
        return spark.readStream.options(**opts).schema(_string_schema(batch.columns)).json(path)
    return spark.readStream.options(**options).schema(batch.schema).format(fmt).load(path)


def tag_before_watermark(df: DataFrame, watermark) -> DataFrame:
    """Incremental runs: a row whose ts is not after the last run's watermark was (or should
    have been) applied before; it gets reason `before_watermark` instead of being applied twice.
    Rows without ts are always applied."""
    if watermark is None:
        return df
    late = F.col(REASON).isNull() & F.col("ts").isNotNull() & (F.col("ts") <= F.lit(watermark).cast("timestamp"))
    return df.withColumn(REASON, F.when(late, F.lit("before_watermark")).otherwise(F.col(REASON)))


def map_columns(df: DataFrame, mapping: dict, spec: dict, source: str, name: str) -> DataFrame:
    """Select the logical columns (renamed from the file's names). A missing required column
    stops the job with an error naming the column and the file; a missing optional column
    becomes null. `_corrupt_record` is carried along when present."""
    have = set(df.columns)
    cols = []
    for logical in spec["required"] + spec["optional"]:
        column = mapping.get(logical)
        if column and column in have:
            cols.append(F.col(f"`{column}`").alias(logical))
        elif logical in spec["required"]:
            raise InputError(
                f"{name} input {source}: required column '{column}' (for {logical}) is missing; "
                f"columns found: {', '.join(sorted(have - {CORRUPT}))}. Map it under input.columns.{name}.{logical}"
            )
        else:
            cols.append(F.lit(None).cast("string").alias(logical))
    cols.append(F.col(CORRUPT) if CORRUPT in have else F.lit(None).cast("string").alias(CORRUPT))
    return df.select(*cols)


def _parse_ts(col: str, ts_format: str | None):
    c = F.col(col).cast("string")
    return F.try_to_timestamp(c, F.lit(ts_format)) if ts_format else F.try_to_timestamp(c)


def _first_reason(*rules):
    """The first matching (condition, reason) wins; keeps an earlier stage's reason."""
    expr = F.col(REASON)
    for cond, reason in reversed(rules):
        expr = F.when(cond, F.lit(reason)).otherwise(expr)
    return expr


def _blank(col: str):
    # (?U) makes \s Unicode-aware: an id of only U+3000 or no-break spaces is blank too.
    return F.col(col).isNull() | F.col(col).cast("string").rlike(r"(?U)^\s*$")


def validate_texts(df: DataFrame, ts_format: str | None = None) -> DataFrame:
    """Typed texts with a `reason` for rows that cannot be used (null = good so far)."""
    ts_given = ~_blank("ts")
    ts = _parse_ts("ts", ts_format)
    out = df.withColumn(REASON, F.lit(None).cast("string"))
    out = out.withColumn(REASON, _first_reason(
        (F.col(CORRUPT).isNotNull(), "malformed_record"),
        (_blank("user_id"), "missing_user_id"),
        (F.col("text").isNull(), "missing_text"),
        (ts_given & ts.isNull(), "unparsable_ts"),
    ))
    return out.select(
        F.trim(F.col("user_id").cast("string")).alias("user_id"),
        F.col("text").cast("string").alias("text"),
        F.when(ts_given, ts).alias("ts"),
        F.col("item_id").cast("string").alias("item_id"),
        F.lower(F.trim(F.col("lang").cast("string"))).alias("lang"),
        F.col("ts").cast("string").alias("ts_raw"),
        CORRUPT, REASON,
    )


def validate_events(df: DataFrame, ts_format: str | None = None,
                    rating_range: tuple[float, float] = (1.0, 5.0)) -> DataFrame:
    """Typed events with a `reason` for rows that cannot be used."""
    lo, hi = rating_range
    ts_given = ~_blank("ts")
    ts = _parse_ts("ts", ts_format)
    rating_given = ~_blank("rating")
    rating = F.col("rating").cast("string").try_cast("double")
    etype = F.lower(F.trim(F.col("event_type").cast("string")))
    out = df.withColumn(REASON, F.lit(None).cast("string"))
    out = out.withColumn(REASON, _first_reason(
        (F.col(CORRUPT).isNotNull(), "malformed_record"),
        (_blank("user_id"), "missing_user_id"),
        (_blank("item_id"), "missing_item_id"),
        (_blank("event_type") | ~etype.isin(*EVENT_TYPES), "unknown_event_type"),
        (rating_given & rating.isNull(), "invalid_rating"),
        (rating_given & ((rating < lo) | (rating > hi) | F.isnan(rating)), "rating_out_of_range"),
        (ts_given & ts.isNull(), "unparsable_ts"),
    ))
    return out.select(
        F.trim(F.col("user_id").cast("string")).alias("user_id"),
        F.trim(F.col("item_id").cast("string")).alias("item_id"),
        etype.alias("event_type"),
        F.when(rating_given, rating).alias("rating"),
        F.trim(F.col("category").cast("string")).alias("category"),
        F.when(ts_given, ts).alias("ts"),
        F.col("ts").cast("string").alias("ts_raw"),
        CORRUPT, REASON,
    )


def tag_duplicates_and_cap(df: DataFrame, order_cols: list[str], dedupe: bool = True,
                           max_per_user: int | None = None) -> DataFrame:
    """Per user, in one window (one shuffle by user_id):

    - `duplicate_row`: a usable row equal to another usable row of the same user in every
      column of `order_cols` (double-logged events, re-submitted reviews) keeps one copy;
    - `over_user_cap`: a user's usable rows beyond the `max_per_user` most recent ones (by ts,
      rows without ts last; ties broken by the row's content, so the choice is deterministic).
      A bot or a shared account with 100k texts would otherwise dominate the embedding cost
      and its segment; the dropped rows go to quarantine, so they are counted, not lost.
    """
    if not dedupe and not max_per_user:
        return df
    ok = F.col(REASON).isNull()
    order = [F.col(REASON).isNotNull()] + [F.col(c).desc_nulls_last() if c == "ts" else F.col(c).asc_nulls_last()
                                           for c in order_cols]
    w = Window.partitionBy("user_id").orderBy(*order)
    out = df
    if dedupe:
        prev_same = F.lit(True)
        for c in order_cols:
            prev_same = prev_same & F.lag(F.col(c)).over(w).eqNullSafe(F.col(c))
        prev_ok = F.lag(F.col(REASON).isNull()).over(w)
        out = out.withColumn(REASON, F.when(ok & F.coalesce(prev_ok & prev_same, F.lit(False)),
                                            F.lit("duplicate_row")).otherwise(F.col(REASON)))
    if max_per_user:
        # Running count of usable rows in the user's order: the row number among kept rows.
        rank = F.sum(F.col(REASON).isNull().cast("long")).over(w.rowsBetween(Window.unboundedPreceding, 0))
        out = out.withColumn("_rank", rank).withColumn(
            REASON, F.when(ok & (F.col("_rank") > max_per_user), F.lit("over_user_cap")).otherwise(F.col(REASON))
        ).drop("_rank")
    return out


def reason_counts(df: DataFrame, name: str) -> tuple[int, int, dict[str, int]]:
    """(rows read, rows kept, {"<name>:<reason>": n}) from one pass over a tagged frame."""
    rows = df.groupBy(REASON).count().collect()
    kept = sum(r["count"] for r in rows if r[REASON] is None)
    reasons = {f"{name}:{r[REASON]}": int(r["count"]) for r in rows if r[REASON] is not None}
    return kept + sum(reasons.values()), kept, reasons


def split_quarantine(df: DataFrame) -> tuple[DataFrame, DataFrame]:
    """(kept rows without helper columns, rejected rows with their reason)."""
    kept = df.filter(F.col(REASON).isNull()).drop(REASON, CORRUPT, "ts_raw")
    return kept, df.filter(F.col(REASON).isNotNull())


def to_quarantine(rejected: DataFrame, input_name: str, source: str, run_id: str) -> DataFrame:
    """Rows for the quarantine table: the row as JSON (raw line for malformed records)."""
    data_cols = [c for c in rejected.columns if c not in (REASON, CORRUPT, "ts_raw", "ts")]
    record = F.to_json(F.struct(*data_cols, F.col("ts_raw").alias("ts")))
    # Rejected rows are stored too, so they are PII-masked like everything else (e-mails,
    # phones, IDs, cards, URLs); the rest of the record is kept to show what went wrong.
    return rejected.select(
        F.lit(run_id).alias("run_id"),
        F.lit(input_name).alias("input"),
        F.lit(source).alias("source"),
        F.col(REASON).alias("reason"),
        mask_record_udf()(F.coalesce(F.col(CORRUPT), record)).alias("record"),
        F.current_timestamp().alias("quarantined_at"),
    )


__all__ = [
    "InputError", "read_source", "read_stream", "tag_before_watermark", "map_columns", "validate_texts", "validate_events",
    "split_quarantine", "to_quarantine", "tag_duplicates_and_cap", "TEXT_COLUMNS", "EVENT_COLUMNS",
]
