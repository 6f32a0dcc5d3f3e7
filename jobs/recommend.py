"""Recommend stage: a ranked item list per segment, from the segment's own behaviour events.

Segment-level collaborative filtering: every user of a segment shares one list, so serving is
a lookup by segment id, and a user with little or no history (cold, long tail) still gets the
taste of the users they resemble. Scoring, per segment s and item i:

    strength(u, i) = log1p( sum over u's events on i of  weight(type) * r * 2^(-age / half_life) )
    pop_s(i)       = sum over the users u of s of strength(u, i)
    share_s(i)     = (pop_s(i) + m * share_all(i)) / (sum_j pop_s(j) + m)
    lift_s(i)      = share_s(i) / share_all(i)
    score_s(i)     = share_s(i) * lift_s(i) ^ lift_weight

- `weight(type)` is the conf's event weight (purchase > cart > click > view); `r` scales a
  rating event by where its rating sits in the rating range (a 1-star rating pulls nothing).
- The age is measured from `as_of` (the run's events watermark, not the wall clock: a rerun
  on the same data scores the same).
- `log1p` damps one user's repeated events: one heavy user must not make an item a segment's
  favourite.
- `share_all` is the same sum over all users. `m` (`lift_prior`) pseudo-interactions pull a
  small segment's shares toward the global ones, so an item that two users of a tiny segment
  touched does not get an enormous lift.
- `lift_weight` trades popularity inside the segment (0) against what sets the segment apart
  from everyone (1); bench/eval_recommendations.py measures it.
- Items fewer than `min_users` users of a segment interacted with do not count for that
  segment (noise, and one user's history must not be readable from a segment's list).
- Every segment's candidates also hold the `fallback_n` most popular items overall (scored by
  the same rule with their in-segment support, or none): a small segment still fills its list.
"""
from __future__ import annotations

from datetime import datetime

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

# The segment_recommendations table (besides run_id).
REC_COLUMNS = ("segment_id", "rank", "item_id", "score", "n_users", "segment_share", "lift", "reason_terms")


def interactions(events: DataFrame, event_weights: dict[str, float], *, as_of: datetime | None = None,
                 half_life_days: float | None = None, rating_range: tuple[float, float] = (1.0, 5.0)) -> DataFrame:
    """user_id, item_id, strength (> 0): each user's damped, decayed, weighted pull to an item.
    Event types with weight 0 (or not listed) are ignored; undated events are not decayed."""
    lo, hi = rating_range
    w = F.lit(0.0)
    for etype, weight in event_weights.items():
        w = F.when(F.col("event_type") == etype, F.lit(float(weight))).otherwise(w)
    # A rating without a value counts as the middle of the range.
    r = F.when(F.col("event_type") == "rating",
               F.coalesce((F.col("rating") - F.lit(lo)) / F.lit(hi - lo), F.lit(0.5))).otherwise(F.lit(1.0))
    decay = F.lit(1.0)
    if half_life_days and as_of is not None:
        age_days = F.greatest(F.lit(0.0), (F.lit(as_of).cast("double") - F.col("ts").cast("double")) / 86400.0)
        decay = F.coalesce(F.pow(F.lit(2.0), -age_days / F.lit(float(half_life_days))), F.lit(1.0))
    return (events.where(F.col("item_id").isNotNull())
            .select("user_id", "item_id", (w * r * decay).alias("_w"))
            .groupBy("user_id", "item_id").agg(F.log1p(F.sum("_w")).alias("strength"))
            .where(F.col("strength") > 0))


def item_scores(inter: DataFrame, user_segments: DataFrame, *, lift_weight: float = 0.5, lift_prior: float = 20.0,
                min_users: int = 2, fallback_n: int = 50, exclude_segments: list[int] | None = None) -> DataFrame:
    """segment_id, item_id, score, n_users, segment_share, lift, rank (1 = best): every
    candidate of every segment of `user_segments` (user_id, segment_id), ranked.

    `exclude_segments` (privacy: segments whose profiles are suppressed) get the overall
    fallback list only, so nothing their few users did shows through."""
    seg = user_segments.select("user_id", F.col("segment_id").cast("int"))
    totals = inter.groupBy("item_id").agg(F.sum("strength").alias("_pop_all"))
    grand = totals.agg(F.sum("_pop_all").alias("_grand"))
    overall = (totals.crossJoin(F.broadcast(grand))
               .select("item_id", (F.col("_pop_all") / F.col("_grand")).alias("share_all")))
    per_seg = (inter.join(seg, "user_id")
               .where(~F.col("segment_id").isin(*(exclude_segments or [])))
               .groupBy("segment_id", "item_id")
               .agg(F.sum("strength").alias("pop"), F.count(F.lit(1)).alias("n_users"))
               .where(F.col("n_users") >= min_users))
    seg_total = per_seg.groupBy("segment_id").agg(F.sum("pop").alias("_seg_total"))
    # Fallback candidates: the most popular items overall, for every segment (k x fallback_n rows).
    top_all = overall.orderBy(F.desc("share_all"), "item_id").limit(fallback_n).select("item_id")
    segments = seg.select("segment_id").distinct()
    candidates = (per_seg.select("segment_id", "item_id")
                  .unionByName(F.broadcast(segments).crossJoin(top_all)).distinct())
    m = float(lift_prior)
    share = ((F.coalesce(F.col("pop"), F.lit(0.0)) + F.lit(m) * F.col("share_all"))
             / (F.coalesce(F.col("_seg_total"), F.lit(0.0)) + F.lit(m)))
    scored = (candidates.join(per_seg, ["segment_id", "item_id"], "left")
              .join(F.broadcast(seg_total), "segment_id", "left")
              .join(overall, "item_id")
              .withColumn("segment_share", share)
              .withColumn("lift", F.col("segment_share") / F.col("share_all"))
              .withColumn("score", F.col("segment_share") * F.pow(F.col("lift"), F.lit(float(lift_weight))))
              .withColumn("n_users", F.coalesce(F.col("n_users"), F.lit(0)).cast("long")))
    rank = F.row_number().over(Window.partitionBy("segment_id").orderBy(F.desc("score"), "item_id"))
    return scored.select("segment_id", "item_id", "score", "n_users", "segment_share", "lift",
                         rank.alias("rank"))


def reason_terms(terms: DataFrame, user_segments: DataFrame, segments: DataFrame, n: int = 3) -> DataFrame:
    """segment_id, item_id, reason_terms: the segment's top terms (profile) that its users
    wrote about the item (texts with an item_id), most used first; items without such texts
    have no row."""
    if n <= 0 or "item_id" not in terms.columns:
        return terms.sparkSession.createDataFrame([], "segment_id int, item_id string, reason_terms array<string>")
    seg_terms = segments.select(F.col("segment_id").cast("int"), F.explode("top_terms").alias("term"))
    counts = (terms.where(F.col("item_id").isNotNull())
              .join(user_segments.select("user_id", F.col("segment_id").cast("int")), "user_id")
              .join(F.broadcast(seg_terms), ["segment_id", "term"])
              .groupBy("segment_id", "item_id", "term").agg(F.count(F.lit(1)).alias("n")))
    rank = F.row_number().over(Window.partitionBy("segment_id", "item_id").orderBy(F.desc("n"), "term"))
    return (counts.withColumn("_r", rank).where(F.col("_r") <= n).groupBy("segment_id", "item_id")
            .agg(F.array_sort(F.collect_list(F.struct("_r", "term"))).alias("_t"))
            .select("segment_id", "item_id", F.col("_t.term").alias("reason_terms")))


def segment_recommendations(scores: DataFrame, reasons: DataFrame, top_n: int) -> DataFrame:
    """The `top_n` best items per segment, with their reason terms (`reason_terms`' output;
    items without any get an empty list). Columns REC_COLUMNS."""
    top = scores.where(F.col("rank") <= top_n).join(reasons, ["segment_id", "item_id"], "left")
    return top.withColumn("reason_terms", F.coalesce("reason_terms", F.array().cast("array<string>"))).select(
        F.col("segment_id").cast("int"), F.col("rank").cast("int"), "item_id", "score", "n_users",
        "segment_share", "lift", "reason_terms")


def _with_consumed_counts(users: DataFrame, consumed: DataFrame | None) -> tuple[DataFrame, DataFrame | None]:
    """`users` + `_c`, each user's count of distinct consumed items (0 without `consumed`),
    and those (user_id, item_id) rows."""
    if consumed is None:
        return users.withColumn("_c", F.lit(0)), None
    seen = consumed.select("user_id", "item_id").where(F.col("item_id").isNotNull()).distinct()
    counts = seen.groupBy("user_id").agg(F.count(F.lit(1)).alias("_c"))
    return users.join(counts, "user_id", "left").withColumn("_c", F.coalesce("_c", F.lit(0))), seen


def recommend_for_users(user_segments: DataFrame, scores: DataFrame, consumed: DataFrame | None, n: int) -> DataFrame:
    """user_id, segment_id, rank, item_id, score: each user's `n` best items of their segment's
    ranking that they have not interacted with yet.

    Exact without ranking every candidate for every user: a user with c consumed items needs
    at most the segment's top n + c (at most c of them are consumed). Each user row becomes
    exactly those n + c ranks and meets the candidates in an equi-join on (segment_id, rank),
    spread over all users; a join on segment_id alone would put every user of a segment in
    one task. `consumed` (user_id, item_id) may hold any items; `scores` is `item_scores`'."""
    users = user_segments.select("user_id", F.col("segment_id").cast("int"))
    users, seen = _with_consumed_counts(users, consumed)
    ranks = users.select("user_id", "segment_id", F.explode(F.sequence(F.lit(1), F.lit(n) + F.col("_c"))).alias("_sr"))
    cands = ranks.join(scores.select("segment_id", F.col("rank").alias("_sr"), "item_id", "score"),
                       ["segment_id", "_sr"])
    if consumed is not None:
        cands = cands.join(seen, ["user_id", "item_id"], "left_anti")
    rank = F.row_number().over(Window.partitionBy("user_id").orderBy("_sr"))
    return (cands.withColumn("rank", rank).where(F.col("rank") <= n)
            .select("user_id", "segment_id", F.col("rank").cast("int"), "item_id", "score"))


def recommend_blended(user_segments: DataFrame, scores: DataFrame, consumed: DataFrame | None, n: int) -> DataFrame:
    """user_id, segment_id (the own), rank, item_id, score: each user's segment lists mixed by
    membership (recommend.blend_memberships): an item's score is the sum over the user's top
    segments (user_segments.top_segment_ids) of membership x its score in that segment's
    ranking, from the first n + c ranks of each (c: the user's consumed items, as in
    `recommend_for_users`; an item past them adds nothing from that segment). Consumed items
    are left out."""
    users = user_segments.select("user_id", F.col("segment_id").cast("int").alias("_own"),
                                 F.arrays_zip(F.col("top_segment_ids").alias("s"), F.col("memberships").alias("w")).alias("_m"))
    users, seen = _with_consumed_counts(users, consumed)
    pairs = users.select("user_id", "_own", "_c", F.explode("_m").alias("_p")).select(
        "user_id", "_own", "_c", F.col("_p.s").cast("int").alias("segment_id"), F.col("_p.w").alias("_w"))
    ranks = pairs.select("user_id", "_own", "segment_id", "_w",
                         F.explode(F.sequence(F.lit(1), F.lit(n) + F.col("_c"))).alias("_sr"))
    cands = ranks.join(scores.select("segment_id", F.col("rank").alias("_sr"), "item_id", "score"), ["segment_id", "_sr"])
    if consumed is not None:
        cands = cands.join(seen, ["user_id", "item_id"], "left_anti")
    mixed = cands.groupBy("user_id", "_own", "item_id").agg(F.sum(F.col("_w") * F.col("score")).alias("score"))
    rank = F.row_number().over(Window.partitionBy("user_id").orderBy(F.desc("score"), "item_id"))
    return (mixed.withColumn("rank", rank).where(F.col("rank") <= n)
            .select("user_id", F.col("_own").alias("segment_id"), F.col("rank").cast("int"), "item_id", "score"))


def for_users(spark, root: str, users: DataFrame, consumed: DataFrame | None = None, n: int = 10,
              run_id: str | None = None, engine: str = "auto") -> DataFrame:
    """Recommendations for a set of users (a frame with user_id) from a finished run's tables,
    for when `recommend.user_table` is off: user_segments (with seglake-assign's later
    assignments, which MERGE into the model run's partition) and segment_recommendations,
    read through the Delta log. `consumed` (user_id, item_id), e.g. today's events, is left
    out. The stored lists hold `recommend.top_n` items, so a user who consumed many of them
    gets fewer than n; users the run does not know get no rows."""
    from jobs.tables import Lake, latest_succeeded_run

    lake = Lake(spark, root, engine)
    run_id = run_id or latest_succeeded_run(root)
    segs = (lake.read("user_segments").where(F.col("run_id") == run_id)
            .join(users.select("user_id").distinct(), "user_id", "left_semi"))
    recs = lake.read("segment_recommendations").where(F.col("run_id") == run_id)
    return recommend_for_users(segs, recs, consumed, n)
