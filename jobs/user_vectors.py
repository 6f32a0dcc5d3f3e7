"""User-vector stage: pool each user's text embeddings, add behaviour, fuse.

Fusion rule (documented in the README):
    features = [ sqrt(1 - w) * t ,  sqrt(w) * z / sqrt(d_b) ]
where t is the user's L2-normalised pooled text vector, z the user's standardised
behaviour features (d_b of them) and w = `behaviour_weight`. Both parts then have an
expected squared norm of about 1 before weighting, so w is the share of squared distance
that behaviour contributes.
Missing sides: a user with texts but no events gets z = 0 (the population's average
behaviour); a user with events but no texts gets t = 0. Both are kept and segmented;
`n_texts` / `n_events` in the output show which side was missing.
"""
from __future__ import annotations

import math
import re

from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.stat import Summarizer
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from jobs.config import EVENT_TYPES


def _unit(col):
    """L2-normalise an array column in the JVM (zero vectors stay zero)."""
    norm = F.sqrt(F.aggregate(col, F.lit(0.0), lambda acc, x: acc + x * x))
    return F.when(norm > 0, F.transform(col, lambda x: x / norm)).otherwise(col)


def pool_texts(df: DataFrame, pooling: str = "mean", half_life_days: float = 30.0,
               emb_col: str = "embedding") -> DataFrame:
    """One row per user: `text_vec` (unit array<double>), `n_texts`, `last_text_ts`, `lang`.

    `recency` weights each text by 2^(-age / half_life), age measured from the user's own
    latest text so a user's vector does not drift with the run date. Undated texts get
    weight 1 (treated as current).
    """
    data = df.withColumn("_v", array_to_vector(F.col(emb_col)))
    if pooling == "recency":
        latest = F.max("ts").over(Window.partitionBy("user_id"))
        age_days = (F.col("ts").cast("double") - latest.cast("double")) / 86400.0
        data = data.withColumn("_w", F.coalesce(F.pow(F.lit(2.0), age_days / half_life_days), F.lit(1.0)))
    else:
        data = data.withColumn("_w", F.lit(1.0))
    lang = F.mode("lang", deterministic=True) if "lang" in df.columns else F.lit(None).cast("string")
    pooled = data.groupBy("user_id").agg(
        Summarizer.mean(F.col("_v"), F.col("_w")).alias("_mean"),
        F.count(F.lit(1)).alias("n_texts"),
        F.max("ts").alias("last_text_ts"),
        lang.alias("lang"),  # the user's most frequent text language
    )
    return pooled.select("user_id", _unit(vector_to_array("_mean")).alias("text_vec"), "n_texts", "last_text_ts",
                         "lang")


def _slug(value: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "_", value).strip("_").lower() or "x"


def top_categories(events: DataFrame, n: int) -> list[str]:
    """The n most frequent categories (a small list, collected on the driver)."""
    if n <= 0:
        return []
    rows = (events.where(F.col("category").isNotNull()).groupBy("category").count()
            .orderBy(F.desc("count"), "category").limit(n).collect())
    return [r["category"] for r in rows]


def behaviour_features(events: DataFrame, categories: list[str]) -> tuple[DataFrame, list[str]]:
    """Per-user raw behaviour features and their names: log1p counts per event type and in
    total, mean rating, and the share of the user's events in each of `categories`."""
    aggs = [F.count(F.lit(1)).alias("n_events")]
    names = []
    for et in EVENT_TYPES:
        aggs.append(F.log1p(F.sum(F.when(F.col("event_type") == et, 1).otherwise(0))).alias(f"b_{et}"))
        names.append(f"b_{et}")
    aggs.append(F.log1p(F.count(F.lit(1))).alias("b_total"))
    aggs.append(F.avg("rating").alias("b_mean_rating"))
    names += ["b_total", "b_mean_rating"]
    for cat in categories:
        name = f"b_cat_{_slug(cat)}"
        while name in names:
            name += "_"
        aggs.append(F.avg(F.when(F.col("category") == cat, 1.0).otherwise(0.0)).alias(name))
        names.append(name)
    return events.groupBy("user_id").agg(*aggs), names


def standardise(df: DataFrame, names: list[str]) -> tuple[DataFrame, dict]:
    """z-score the named columns across users; nulls (e.g. no ratings) become 0 = the mean.
    Returns the frame and the {name: (mean, std)} used, so new users can be scored alike."""
    if not names:
        return df, {}
    row = df.agg(*[F.avg(c).alias(f"m_{c}") for c in names], *[F.stddev_pop(c).alias(f"s_{c}") for c in names]).first()
    stats = {c: (float(row[f"m_{c}"] or 0.0), float(row[f"s_{c}"] or 0.0)) for c in names}
    cols = [
        F.coalesce((F.col(c) - F.lit(m)) / F.lit(s if s > 0 else 1.0), F.lit(0.0)).alias(c)
        for c, (m, s) in stats.items()
    ]
    return df.select(*[c for c in df.columns if c not in names], *cols), stats


def fuse(text_users: DataFrame, behaviour: DataFrame | None, names: list[str], behaviour_weight: float,
         text_dim: int) -> DataFrame:
    """One row per user seen in texts or events: user_id, features (Vector), n_texts, n_events,
    lang (null for users without texts). See the module docstring for the rule."""
    wt = math.sqrt(1.0 - behaviour_weight)
    if behaviour is None or not names or behaviour_weight == 0:
        users = text_users.withColumn("n_events", F.lit(0).cast("long"))
        arr = F.transform("text_vec", lambda x: x * wt)
    else:
        users = text_users.join(behaviour, "user_id", "full_outer")
        wb = math.sqrt(behaviour_weight) / math.sqrt(len(names))
        zero_text = F.array_repeat(F.lit(0.0), text_dim)
        text_part = F.transform(F.coalesce("text_vec", zero_text), lambda x: x * wt)
        beh_part = F.array(*[F.coalesce(F.col(c), F.lit(0.0)) * wb for c in names])
        arr = F.concat(text_part, beh_part)
    return users.select(
        "user_id",
        array_to_vector(arr).alias("features"),
        F.coalesce("n_texts", F.lit(0)).cast("long").alias("n_texts"),
        F.coalesce("n_events", F.lit(0)).cast("long").alias("n_events"),
        "lang",
    )


def build_user_vectors(texts: DataFrame, events: DataFrame | None, *, pooling: str = "mean",
                       half_life_days: float = 30.0, behaviour_weight: float = 0.3, n_categories: int = 10,
                       text_dim: int) -> tuple[DataFrame, dict]:
    """The whole stage. Returns (users, fusion parameters to save with the model)."""
    pooled = pool_texts(texts, pooling, half_life_days)
    params: dict = {"text_dim": text_dim, "behaviour_weight": behaviour_weight, "pooling": pooling,
                    "half_life_days": half_life_days, "categories": [], "behaviour_stats": {}}
    if events is None:
        return fuse(pooled, None, [], behaviour_weight, text_dim), params
    cats = top_categories(events, n_categories)
    raw, names = behaviour_features(events, cats)
    z, stats = standardise(raw, names)
    params.update(categories=cats, behaviour_features=names, behaviour_stats=stats)
    return fuse(pooled, z, names, behaviour_weight, text_dim), params
