"""Segment history: one row each time a user enters a segment, so that any user's segment at
any past time can be answered (the full job writes every user; assign runs write the users
whose segment changed, and new users)."""
from __future__ import annotations

from datetime import datetime

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

HISTORY_COLUMNS = ("run_id", "model_run_id", "user_id", "old_segment_id", "new_segment_id", "changed_at")


def history_rows(new: DataFrame, old: DataFrame | None, run_id: str, model_run_id: str) -> DataFrame:
    """Rows for users whose segment differs between `old` and `new` (both user_id,
    segment_id; a user missing from `old` is new: old_segment_id null). `run_id` is the run
    that made the change, `model_run_id` the model whose segment ids these are."""
    cur = new.select("user_id", F.col("segment_id").cast("int").alias("new_segment_id"))
    if old is None:
        changed = cur.withColumn("old_segment_id", F.lit(None).cast("int"))
    else:
        prev = old.select("user_id", F.col("segment_id").cast("int").alias("old_segment_id"))
        changed = (cur.join(prev, "user_id", "left")
                   .where(~F.col("old_segment_id").eqNullSafe(F.col("new_segment_id"))))
    return changed.select(F.lit(run_id).alias("run_id"), F.lit(model_run_id).alias("model_run_id"), "user_id",
                          "old_segment_id", "new_segment_id", F.current_timestamp().alias("changed_at"))


def segment_at(history: DataFrame, user_id: str, at: datetime | str, model_run_id: str | None = None) -> dict | None:
    """The user's segment as of `at`: the latest history row at or before it (optionally of
    one model run), as a dict, or None when the user had no segment yet."""
    rows = history.where((F.col("user_id") == user_id) & (F.col("changed_at") <= F.lit(at).cast("timestamp")))
    if model_run_id is not None:
        rows = rows.where(F.col("model_run_id") == model_run_id)
    row = rows.orderBy(F.desc("changed_at")).limit(1).collect()
    return row[0].asDict() if row else None


def read_history(spark: SparkSession, root: str, engine: str = "auto") -> DataFrame:
    from jobs import delta_io

    return delta_io.read_table(spark, f"{root.rstrip('/')}/segment_history", engine=engine)
