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

from jobs import lexical
from udfs.terms import terms_udf


def sizes(user_segments: DataFrame, typical_n: int = 5) -> DataFrame:
    """segment_id, size, share, mean_distance, texts_per_user and typical_users (the ids of
    the `typical_n` users closest to the centroid)."""
    rank = F.row_number().over(Window.partitionBy("segment_id").orderBy("distance", "user_id"))
    typical = (user_segments.withColumn("_r", rank).where(F.col("_r") <= typical_n).groupBy("segment_id")
               .agg(F.array_sort(F.collect_list(F.struct("_r", "user_id"))).alias("_t"))
               .select("segment_id", F.col("_t.user_id").alias("typical_users")))
    total = user_segments.agg(F.count(F.lit(1)).alias("_total"))
    return (user_segments.groupBy("segment_id")
            .agg(F.count(F.lit(1)).alias("size"), F.avg("distance").alias("mean_distance"),
                 F.avg("n_texts").alias("texts_per_user"))
            .crossJoin(F.broadcast(total)).withColumn("share", F.col("size") / F.col("_total")).drop("_total")
            .join(typical, "segment_id", "left"))


def user_terms(texts: DataFrame, bigrams: bool = True) -> DataFrame:
    """(user_id, [item_id,] term) for every term of every cleaned text (jieba for Chinese);
    item_id when the texts have one (the recommendations' reason terms use it). Cache it:
    the segment terms, the per-user explanations and the reason terms all read it."""
    item = ["item_id"] if "item_id" in texts.columns else []
    return texts.select("user_id", *item, F.explode(terms_udf(bigrams)(F.col("text_clean"))).alias("term"))


def top_terms(terms: DataFrame, user_segments: DataFrame, n: int = 10, min_count: int = 2) -> DataFrame:
    """segment_id, top_terms, term_scores by class-based TF-IDF: each segment's texts form one
    document; score = tf(term, segment) * log(1 + A / f(term)), A = mean terms per segment,
    f = the term's count over all segments (as in BERTopic's c-TF-IDF)."""
    seg_terms = terms.join(user_segments.select("user_id", "segment_id"), "user_id")
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


def representative_texts(texts: DataFrame, user_segments: DataFrame, centroids: dict[int, np.ndarray], text_dim: int,
                         n: int = 5) -> DataFrame:
    """segment_id, representative_texts: the cleaned (PII-masked) texts closest in cosine to the
    text part of the segment's centroid (`centroids`: segment id -> centroid); duplicates counted once."""
    text_centers = np.zeros((max(centroids, default=-1) + 1, text_dim), dtype=np.float32)  # row = segment id
    for sid, c in centroids.items():
        text_centers[sid] = np.asarray(c[:text_dim], dtype=np.float32)
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
        F.count("rating").alias("n_ratings"),
        F.countDistinct("user_id").alias("users_with_events"),
        F.avg(F.when(F.col("event_type") == "purchase", 1.0).otherwise(0.0)).alias("purchase_share"),
        F.avg("rating").alias("mean_rating"),
    )
    cats = ev.where(F.col("category").isNotNull()).groupBy("segment_id", "category").agg(F.count(F.lit(1)).alias("n"))
    seg_share = F.col("n") / F.sum("n").over(Window.partitionBy("segment_id"))
    # Overall category shares: category counts over their total (a one-row aggregate joined on),
    # not a window over a constant, which Spark turns into a window without partitions (all rows
    # in one task, and a WARN line per task).
    by_cat = ev.where(F.col("category").isNotNull()).groupBy("category").agg(F.count(F.lit(1)).alias("_c"))
    overall = (by_cat.crossJoin(F.broadcast(by_cat.agg(F.sum("_c").alias("_t"))))
               .select("category", (F.col("_c") / F.col("_t")).alias("_overall")))
    cats = (cats.withColumn("share", seg_share).join(F.broadcast(overall), "category")
            .withColumn("lift", F.col("share") / F.col("_overall")).drop("_overall"))
    rank = F.row_number().over(Window.partitionBy("segment_id").orderBy(F.desc("n"), "category"))
    top = cats.withColumn("rank", rank).where(F.col("rank") <= n_categories).groupBy("segment_id").agg(
        F.array_sort(F.collect_list(F.struct("rank", "category", "share", "lift"))).alias("_c"))
    top = top.select("segment_id", F.col("_c.category").alias("top_categories"),
                     F.col("_c.share").alias("top_category_shares"), F.col("_c.lift").alias("top_category_lifts"))
    return per_seg.join(top, "segment_id", "left")


def profile_segments(user_segments: DataFrame, texts: DataFrame, terms: DataFrame, events: DataFrame | None,
                     centroids: dict[int, np.ndarray], *, text_dim: int, top_terms_n: int = 10, representative_n: int = 5,
                     top_categories_n: int = 3, typical_n: int = 5) -> DataFrame:
    """One row per segment with everything above plus the centroid (names come later, from
    these rows: see `name_segments`)."""
    spark = user_segments.sparkSession
    centroid_df = spark.createDataFrame(
        [(int(i), [float(x) for x in c]) for i, c in sorted(centroids.items())], "segment_id int, centroid array<double>")
    out = (sizes(user_segments, typical_n)
           .join(top_terms(terms, user_segments, top_terms_n), "segment_id", "left")
           .join(representative_texts(texts, user_segments, centroids, text_dim, representative_n), "segment_id", "left"))
    if events is not None:
        beh = behaviour(events, user_segments, top_categories_n)
    else:
        beh = spark.createDataFrame([], "segment_id int, n_events long, n_ratings long, users_with_events long, purchase_share double, "
                                        "mean_rating double, top_categories array<string>, "
                                        "top_category_shares array<double>, top_category_lifts array<double>")
    out = out.join(beh, "segment_id", "left").join(centroid_df, "segment_id", "left")
    return out.select(
        F.col("segment_id").cast("int"), "size", "share", "mean_distance", "texts_per_user",
        F.coalesce("typical_users", F.array().cast("array<string>")).alias("typical_users"),
        F.coalesce("top_terms", F.array().cast("array<string>")).alias("top_terms"),
        F.coalesce("term_scores", F.array().cast("array<double>")).alias("term_scores"),
        F.coalesce("representative_texts", F.array().cast("array<string>")).alias("representative_texts"),
        F.coalesce("n_events", F.lit(0)).cast("long").alias("n_events"),
        F.coalesce("n_ratings", F.lit(0)).cast("long").alias("n_ratings"),
        (F.coalesce("n_events", F.lit(0)) / F.col("size")).alias("events_per_user"),
        "purchase_share", "mean_rating",
        F.coalesce("top_categories", F.array().cast("array<string>")).alias("top_categories"),
        F.coalesce("top_category_shares", F.array().cast("array<double>")).alias("top_category_shares"),
        F.coalesce("top_category_lifts", F.array().cast("array<double>")).alias("top_category_lifts"),
        "centroid",
    ).orderBy("segment_id")


def segment_terms(segments: DataFrame) -> DataFrame:
    """segment_id, term: each segment's top terms and lexical terms, what users' matched terms
    are matched against (the full job and seglake-assign alike). Segments of a run written
    before the lexical channel have no lexical_terms column."""
    listed = F.col("top_terms")
    if "lexical_terms" in segments.columns:
        listed = F.array_union(listed, F.coalesce("lexical_terms", F.array().cast("array<string>")))
    return segments.select("segment_id", F.explode(listed).alias("term"))


def explain_users(user_segments: DataFrame, terms: DataFrame, segments: DataFrame) -> DataFrame:
    """user_segments + `matched_terms`: the user's own terms that are among their segment's
    top terms or lexical terms (why this user is here, in words); empty when none match."""
    seg_terms = segment_terms(segments)
    matched = (terms.join(user_segments.select("user_id", "segment_id"), "user_id")
               .join(seg_terms, ["segment_id", "term"])
               .groupBy("user_id").agg(F.array_sort(F.collect_set("term")).alias("matched_terms")))
    return (user_segments.join(matched, "user_id", "left")
            .withColumn("matched_terms", F.coalesce("matched_terms", F.array().cast("array<string>"))))


def lexical_terms(centroids: dict[int, np.ndarray], lexicon, params: dict, n: int = 10) -> dict[int, list[str]]:
    """segment id -> the vocabulary terms its centre's lexical block points at, against the
    mean centre: the words the clustering itself weighed (jobs/lexical.top_terms). Empty
    without the lexical channel."""
    w = float(params.get("lexical_weight") or 0.0)
    if lexicon is None or w <= 0:
        return {}
    start = int(params["text_dim"])
    ids = sorted(centroids)
    block = np.vstack([centroids[i] for i in ids])[:, start:start + lexicon.dim] / np.sqrt(w)
    mean = block.mean(axis=0)
    return {i: lexical.top_terms(lexicon, c - mean, n) for i, c in zip(ids, block)}


def _ratio(value, base):
    return value / base if value is not None and base else None


def name_segments(rows: list[dict]) -> dict[int, str]:
    """A short, deterministic name per segment from its profile (k rows on the driver):
    the category it over-indexes on, its two most distinctive words, and up to two traits
    against the whole population (purchases, activity, reviewing, ratings), joined by " · ".
    Example: "electronics · battery, camera · frequent reviewer". Duplicates get " #id"."""
    users = sum(r["size"] for r in rows) or 1
    events = sum(r.get("n_events") or 0 for r in rows)
    pop = {
        "events_per_user": events / users,
        "texts_per_user": sum((r.get("texts_per_user") or 0) * r["size"] for r in rows) / users,
        "purchase_share": (sum((r.get("purchase_share") or 0) * (r.get("n_events") or 0) for r in rows) / events
                           if events else None),
    }
    ratings = sum(r.get("n_ratings") or 0 for r in rows)
    pop["mean_rating"] = (sum((r.get("mean_rating") or 0) * (r.get("n_ratings") or 0) for r in rows) / ratings
                          if ratings else None)
    names: dict[int, str] = {}
    for r in sorted(rows, key=lambda x: x["segment_id"]):
        parts = []
        cats, lifts = r.get("top_categories") or [], r.get("top_category_lifts") or []
        if cats and lifts and lifts[0] is not None and lifts[0] >= 1.2:
            parts.append(cats[0])
        # Distinctive profile words first, then the words the lexical channel weighed.
        words = list(dict.fromkeys(t for t in [*(r.get("top_terms") or []), *(r.get("lexical_terms") or [])]
                                   if " " not in t and t not in parts))[:2]
        if words:
            parts.append(", ".join(words))
        traits = []
        ratio = _ratio(r.get("purchase_share"), pop["purchase_share"])
        if ratio is not None and ratio >= 1.25:
            traits.append("high purchase")
        elif ratio is not None and ratio <= 0.75:
            traits.append("browses more than buys")
        ratio = _ratio(r.get("events_per_user"), pop["events_per_user"])
        if ratio is not None and ratio >= 1.5:
            traits.append("very active")
        elif ratio is not None and ratio <= 0.5:
            traits.append("light activity")
        ratio = _ratio(r.get("texts_per_user"), pop["texts_per_user"])
        if ratio is not None and ratio >= 1.25:
            traits.append("frequent reviewer")
        if r.get("mean_rating") is not None and pop["mean_rating"] is not None:
            if r["mean_rating"] >= pop["mean_rating"] + 0.3:
                traits.append("high ratings")
            elif r["mean_rating"] <= pop["mean_rating"] - 0.3:
                traits.append("low ratings")
        parts += traits[:2]
        names[r["segment_id"]] = " · ".join(parts) or f"segment {r['segment_id']}"
    seen: dict[str, int] = {}
    for sid in sorted(names):
        seen[names[sid]] = seen.get(names[sid], 0) + 1
    return {sid: (f"{n} #{sid}" if seen[n] > 1 else n) for sid, n in names.items()}
