"""Profile stage: what each segment is — size, distinctive terms, representative texts, behaviour.

Everything is computed in Spark with joins and aggregations; only k-sized results (one row
per segment) ever reach the driver.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from udfs.text_clean import terms_udf


def sizes(user_segments: DataFrame) -> DataFrame:
    """segment_id, size, share, mean_distance."""
    total = F.sum("size").over(Window.partitionBy())
    return (user_segments.groupBy("segment_id")
            .agg(F.count(F.lit(1)).alias("size"), F.avg("distance").alias("mean_distance"))
            .withColumn("share", F.col("size") / total))


def top_terms(texts: DataFrame, user_segments: DataFrame, n: int = 10, bigrams: bool = True,
              min_count: int = 2) -> DataFrame:
    """segment_id, top_terms, term_scores by class-based TF-IDF: each segment's texts form one
    document; score = tf(term, segment) * log(1 + A / f(term)), A = mean terms per segment,
    f = the term's count over all segments (as in BERTopic's c-TF-IDF)."""
    seg_terms = (texts.join(user_segments.select("user_id", "segment_id"), "user_id")
                 .select("segment_id", F.explode(terms_udf(bigrams)(F.col("text_clean"))).alias("term")))
    counts = seg_terms.groupBy("segment_id", "term").agg(F.count(F.lit(1)).alias("n")).cache()
    # Two scalars (total term count, number of segments) come to the driver; no global windows.
    totals = counts.agg(F.sum("n").alias("all"), F.countDistinct("segment_id").alias("k")).first()
    avg_terms = float(totals["all"] or 0) / max(int(totals["k"] or 0), 1)
    seg_total = counts.groupBy("segment_id").agg(F.sum("n").alias("seg_n"))
    term_total = counts.groupBy("term").agg(F.sum("n").alias("f"))
    scored = (counts.where(F.col("n") >= min_count).join(seg_total, "segment_id").join(term_total, "term")
              .withColumn("score", (F.col("n") / F.col("seg_n")) * F.log1p(F.lit(avg_terms) / F.col("f"))))
    rank = F.row_number().over(Window.partitionBy("segment_id").orderBy(F.desc("score"), "term"))
    top = scored.withColumn("rank", rank).where(F.col("rank") <= n)
    ordered = F.array_sort(F.collect_list(F.struct("rank", "term", "score")))
    return top.groupBy("segment_id").agg(ordered.alias("_t")).select(
        "segment_id", F.col("_t.term").alias("top_terms"), F.col("_t.score").alias("term_scores"))


def representative_texts(texts: DataFrame, user_segments: DataFrame, centers: np.ndarray, text_dim: int,
                         n: int = 5) -> DataFrame:
    """segment_id, representative_texts: the cleaned (PII-masked) texts closest in cosine to the
    text part of the segment's centroid; duplicates counted once."""
    text_centers = centers[:, :text_dim].astype(np.float32)
    text_centers /= np.maximum(np.linalg.norm(text_centers, axis=1, keepdims=True), 1e-12)

    @F.pandas_udf("double")
    def _score(vecs: pd.Series, seg: pd.Series) -> pd.Series:
        if not len(vecs):
            return pd.Series([], dtype="float64")
        x = np.vstack(vecs.to_numpy()).astype(np.float32)
        return pd.Series((x * text_centers[seg.to_numpy().astype(int)]).sum(1).astype(np.float64))

    scored = (texts.join(user_segments.select("user_id", "segment_id"), "user_id")
              .withColumn("score", _score(F.col("embedding"), F.col("segment_id")))
              .groupBy("segment_id", "text_clean").agg(F.max("score").alias("score")))
    rank = F.row_number().over(Window.partitionBy("segment_id").orderBy(F.desc("score"), "text_clean"))
    top = scored.withColumn("rank", rank).where(F.col("rank") <= n)
    return top.groupBy("segment_id").agg(
        F.array_sort(F.collect_list(F.struct("rank", "text_clean"))).alias("_r")
    ).select("segment_id", F.col("_r.text_clean").alias("representative_texts"))


def behaviour(events: DataFrame, user_segments: DataFrame, n_categories: int = 3) -> DataFrame:
    """segment_id, n_events, users_with_events, purchase_share, mean_rating, top_categories,
    top_category_shares, top_category_lifts (share in segment / share overall)."""
    ev = events.join(user_segments.select("user_id", "segment_id"), "user_id")
    per_seg = ev.groupBy("segment_id").agg(
        F.count(F.lit(1)).alias("n_events"),
        F.countDistinct("user_id").alias("users_with_events"),
        F.avg(F.when(F.col("event_type") == "purchase", 1.0).otherwise(0.0)).alias("purchase_share"),
        F.avg("rating").alias("mean_rating"),
    )
    cats = ev.where(F.col("category").isNotNull()).groupBy("segment_id", "category").agg(F.count(F.lit(1)).alias("n"))
    seg_share = F.col("n") / F.sum("n").over(Window.partitionBy("segment_id"))
    overall = (F.sum("n").over(Window.partitionBy("category")) / F.sum("n").over(Window.partitionBy()))
    cats = cats.withColumn("share", seg_share).withColumn("lift", F.col("share") / overall)
    rank = F.row_number().over(Window.partitionBy("segment_id").orderBy(F.desc("n"), "category"))
    top = cats.withColumn("rank", rank).where(F.col("rank") <= n_categories).groupBy("segment_id").agg(
        F.array_sort(F.collect_list(F.struct("rank", "category", "share", "lift"))).alias("_c"))
    top = top.select("segment_id", F.col("_c.category").alias("top_categories"),
                     F.col("_c.share").alias("top_category_shares"), F.col("_c.lift").alias("top_category_lifts"))
    return per_seg.join(top, "segment_id", "left")


def profile_segments(user_segments: DataFrame, texts: DataFrame, events: DataFrame | None, centers: np.ndarray,
                     *, text_dim: int, top_terms_n: int = 10, representative_n: int = 5,
                     top_categories_n: int = 3, bigrams: bool = True) -> DataFrame:
    """One row per segment with everything above plus the centroid."""
    spark = user_segments.sparkSession
    centroid_df = spark.createDataFrame(
        [(i, [float(x) for x in c]) for i, c in enumerate(centers)], "segment_id int, centroid array<double>")
    out = (sizes(user_segments)
           .join(top_terms(texts, user_segments, top_terms_n, bigrams), "segment_id", "left")
           .join(representative_texts(texts, user_segments, centers, text_dim, representative_n), "segment_id", "left"))
    if events is not None:
        beh = behaviour(events, user_segments, top_categories_n)
    else:
        beh = spark.createDataFrame([], "segment_id int, n_events long, users_with_events long, purchase_share double, "
                                        "mean_rating double, top_categories array<string>, "
                                        "top_category_shares array<double>, top_category_lifts array<double>")
    out = out.join(beh, "segment_id", "left").join(centroid_df, "segment_id", "left")
    return out.select(
        F.col("segment_id").cast("int"), "size", "share", "mean_distance",
        F.coalesce("top_terms", F.array().cast("array<string>")).alias("top_terms"),
        F.coalesce("term_scores", F.array().cast("array<double>")).alias("term_scores"),
        F.coalesce("representative_texts", F.array().cast("array<string>")).alias("representative_texts"),
        F.coalesce("n_events", F.lit(0)).cast("long").alias("n_events"),
        (F.coalesce("n_events", F.lit(0)) / F.col("size")).alias("events_per_user"),
        "purchase_share", "mean_rating",
        F.coalesce("top_categories", F.array().cast("array<string>")).alias("top_categories"),
        F.coalesce("top_category_shares", F.array().cast("array<double>")).alias("top_category_shares"),
        F.coalesce("top_category_lifts", F.array().cast("array<double>")).alias("top_category_lifts"),
        "centroid",
    ).orderBy("segment_id")
