"""Offline evaluation of top-k recommendations on a temporal hold-out.

Protocol: cut the event history at a timestamp (`event_cutoff`), fit on what came before
(`temporal_split`), and score each user's recommendations against the items they turned to
afterwards that were new to them (`relevant_items`). `ranking_metrics` averages, over those
users, binary-relevance precision / recall / NDCG / hit rate at several k, plus catalogue
coverage. Definitions match MLlib's RankingMetrics (precisionAt divides by k, recallAt by
|relevant|, ndcgAt uses gain 1/log(rank + 1) and an ideal DCG over min(|relevant|, k) ranks)
as long as each user's ranks run 1, 2, 3, ... without gaps: MLlib ranks by array position,
this module by the `rank` column.

Everything runs in Spark; only the cutoff and the final scalar metrics reach the driver.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Iterable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
METRICS = ("precision", "recall", "ndcg", "hit_rate")


def event_cutoff(events: DataFrame, train_share: float = 0.8, ts_col: str = "ts") -> datetime:
    """The timestamp at the `train_share` quantile of the non-null event timestamps (UTC)."""
    if not 0.0 < train_share < 1.0:
        raise ValueError(f"train_share must lie in (0, 1), got {train_share}")
    # Epoch microseconds are exact in a double up to year ~2255, so the quantile is an actual
    # event time and relativeError 0.0 makes it exact (approxQuantile skips nulls).
    micros = events.select(F.unix_micros(F.col(ts_col).cast("timestamp")).cast("double").alias("_us"))
    q = micros.approxQuantile("_us", [train_share], 0.0)
    if not q:
        raise ValueError(f"no non-null {ts_col!r} values to cut at")
    return EPOCH + timedelta(microseconds=int(q[0]))


def temporal_split(df: DataFrame, cutoff: datetime, ts_col: str = "ts") -> tuple[DataFrame, DataFrame]:
    """(rows with ts < cutoff, rows with ts >= cutoff) of a texts or events frame.

    Rows without a timestamp go to train: they are undated history, and a test period must
    only hold what provably happened after the cutoff."""
    ts, cut = F.col(ts_col).cast("timestamp"), F.lit(cutoff).cast("timestamp")
    return df.where(ts.isNull() | (ts < cut)), df.where(ts >= cut)


def per_user_split(df: DataFrame, test_share: float = 0.2, ts_col: str = "ts") -> tuple[DataFrame, DataFrame]:
    """(train, test): each user's latest `test_share` of rows (by ts, ties by item_id) are test.

    A second protocol for data where users are active in short bursts (MovieLens), so that a
    global cut leaves few users on both sides. Weaker than `temporal_split`: train holds other
    users' later events, so trends after a user's test start leak into popularity."""
    from pyspark.sql.window import Window

    w = Window.partitionBy("user_id").orderBy(F.col(ts_col).asc_nulls_first(), "item_id")
    ranked = df.withColumn("_pr", F.percent_rank().over(w))
    cut = F.col("_pr") >= F.lit(1.0 - test_share)
    return ranked.where(~cut).drop("_pr"), ranked.where(cut).drop("_pr")


def relevant_items(train: DataFrame, test: DataFrame) -> DataFrame:
    """(user_id, item_id), distinct: the test-period items of users with a train event, less
    the items the user already had in train. Recommenders exclude consumed items, so a
    re-consumption can never be a hit and would only depress recall for every model alike."""
    seen = train.where(F.col("item_id").isNotNull()).select("user_id", "item_id")
    return (test.where(F.col("item_id").isNotNull()).select("user_id", "item_id").distinct()
            .join(train.select("user_id").distinct(), "user_id", "left_semi")  # cold users: nothing to fit on
            .join(seen, ["user_id", "item_id"], "left_anti"))


def _log2(x: Column) -> Column:
    return F.log(2.0, x)


def ranking_metrics(recs: DataFrame, relevant: DataFrame, ks: Iterable[int] = (10, 50),
                    catalogue_size: int | None = None) -> dict:
    """Mean precision@k, recall@k, ndcg@k, hit_rate@k over the users in `relevant` (each with
    its standard error, key suffix `_se`), and
    coverage@k (distinct items in those users' top k / catalogue_size; None without a size).

    `recs`: user_id, rank (1-based), item_id; `relevant`: user_id, item_id. A user in
    `relevant` without recs scores 0 and still counts; recs of other users are ignored, as are
    ranks above max(ks). Two recs of one user with the same rank, or a rank < 1, raise
    ValueError. With no relevant users the means are None."""
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    if catalogue_size is not None and catalogue_size < 1:
        raise ValueError(f"catalogue_size must be positive, got {catalogue_size}")
    top = max(ks)
    rel = (relevant.where(F.col("item_id").isNotNull())
           .groupBy("user_id").agg(F.collect_set("item_id").alias("_rel")))
    # Only the evaluated users' top max(ks) recs can change a metric: cut them down before grouping.
    cut = (recs.select("user_id", F.col("rank").cast("int").alias("rank"), "item_id")
           .where(F.col("rank") <= top)
           .join(rel.select("user_id"), "user_id", "left_semi"))
    per_user = cut.groupBy("user_id").agg(
        # A duplicate or non-positive rank would silently double-count or divide by log2(1) = 0:
        # flag it (raised below) and keep ranks < 1 out of the list so the pass itself can finish.
        F.collect_list(F.when(F.col("rank") >= 1, F.struct("rank", "item_id"))).alias("_recs"),
        ((F.count("*") != F.count_distinct("rank")) | (F.min("rank") < 1)).alias("_bad"))
    # Left join from the relevant side: a user without recs gets an empty list and scores 0.
    users = rel.join(per_user, "user_id", "left").select(
        "_rel", F.coalesce("_recs", F.array()).alias("_recs"), F.coalesce("_bad", F.lit(False)).alias("_bad"))

    cols, aggs = [], [F.count("*").alias("users"), F.max(F.col("_bad").cast("int")).alias("_bad")]
    n_rel = F.size("_rel")
    for k in ks:
        hits = F.filter("_recs", lambda r: (r["rank"] <= k) & F.array_contains("_rel", r["item_id"]))
        dcg = F.aggregate(hits, F.lit(0.0), lambda acc, r: acc + 1.0 / _log2(r["rank"] + 1))
        idcg = F.aggregate(F.sequence(F.lit(1), F.least(n_rel, F.lit(k))), F.lit(0.0),
                           lambda acc, i: acc + 1.0 / _log2(i + 1))
        cols += [(F.size(hits) / k).alias(f"precision@{k}"), (F.size(hits) / n_rel).alias(f"recall@{k}"),
                 (dcg / idcg).alias(f"ndcg@{k}"), (F.size(hits) > 0).cast("double").alias(f"hit_rate@{k}")]
        for m in METRICS:
            # The standard error of the mean tells a real difference between methods from noise.
            aggs += [F.avg(f"{m}@{k}").alias(f"{m}@{k}"),
                     (F.stddev_samp(f"{m}@{k}") / F.sqrt(F.count("*"))).alias(f"{m}@{k}_se")]
    row = users.select("_bad", *cols).agg(*aggs).first().asDict()
    if row.pop("_bad"):
        raise ValueError("recs hold a user with two items at one rank, or a rank < 1")

    coverage = {f"coverage@{k}": None for k in ks}
    if catalogue_size is not None:
        # A second, cheap job: distinct counts need the item rows, not the per-user arrays.
        counts = cut.agg(*[F.count_distinct(F.when(F.col("rank") <= k, F.col("item_id"))).alias(str(k))
                           for k in ks]).first()
        coverage = {f"coverage@{k}": counts[str(k)] / catalogue_size for k in ks}
    out = {"users": int(row.pop("users"))}
    for k in ks:
        out.update({f"{m}@{k}{se}": row[f"{m}@{k}{se}"] for m in METRICS for se in ("", "_se")})
        out[f"coverage@{k}"] = coverage[f"coverage@{k}"]
    return out
