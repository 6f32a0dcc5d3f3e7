"""User-vector stage: each user's state (pooled texts + behaviour aggregates), then features.

Two steps, so that the full job and the incremental assign job compute features the same way:

1. **State** (`user_state`, stored as the `user_vectors` Delta table): per user the weighted
   mean of their text embeddings (`text_mean`, with its total weight `text_weight`), text
   count, language counts, event counts per type and category, rating sum/count and the
   latest timestamps. States combine (`combine_state`): the state of old texts combined with
   the state of new texts equals the state of all texts, so a new text updates a user's
   vector as a running (optionally time-decayed) mean without re-reading the user's history.
2. **Features** (`features`): derived from the state alone, with the fusion parameters saved
   with the model run (behaviour categories and standardisation statistics). The assign job
   applies the same function to the stored state, so an unchanged user gets exactly the same
   vector, and segment, as in the full job.

Fusion rule (documented in the README):
    features = [ sqrt(1 - w - w_lex) * t ,  sqrt(w_lex) * l ,  sqrt(w) * z / sqrt(d_b) ]
where t is the user's L2-normalised pooled text vector, l the user's lexical vector (unit
TF-IDF + SVD of their words, jobs/lexical.py; the block is absent when w_lex = 0), z the
user's standardised behaviour features (d_b of them), w = `behaviour_weight` and w_lex =
`lexical.weight`. Each part has an expected squared norm of about 1 before weighting, so the
weights are the shares of squared distance that each part contributes. Without events there
is no z; t and l keep their ratio (a common scale does not change the clustering).
Missing sides: a user with texts but no events gets z = 0 (the population's average
behaviour); a user with events but no texts gets t = 0. Both are kept and segmented;
`n_texts` / `n_events` in the output show which side was missing.

Recency pooling weights a text by 2^(-age / half_life), age measured from the user's own
latest text (so a vector does not drift with the run date); undated texts weigh 1.
"""
from __future__ import annotations

import math
import re

import numpy as np

from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.stat import Summarizer
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from jobs import lexical as lex
from jobs.config import EVENT_TYPES

# The user_vectors table (and every state frame) has exactly these columns.
STATE_COLUMNS = ("user_id", "text_mean", "text_weight", "n_texts", "last_text_ts", "lang_counts", "n_events",
                 "event_counts", "category_counts", "rating_sum", "rating_count", "last_event_ts",
                 "model_id", "updated_by", "updated_at", "term_counts")
_EMPTY_COUNTS = "map<string,bigint>"


def _norm(col):
    """L2 norm of an array column, in the JVM."""
    return F.sqrt(F.aggregate(col, F.lit(0.0), lambda acc, x: acc + x * x))


def _count_map(df: DataFrame, key: str) -> DataFrame:
    """user_id, map<key value, count> of one column."""
    return (df.where(F.col(key).isNotNull()).groupBy("user_id", key).count()
            .groupBy("user_id").agg(F.map_from_entries(F.collect_list(F.struct(key, "count"))).alias(f"_{key}_map")))


def text_state(df: DataFrame, pooling: str = "mean", half_life_days: float = 30.0,
               emb_col: str = "embedding", lexical: bool = False, text_col: str = "text_clean") -> DataFrame:
    """Per user: text_mean (weighted mean embedding, array<double>), text_weight, n_texts,
    last_text_ts, lang_counts and (lexical) term_counts of the cleaned texts' words."""
    data = df.withColumn("_v", array_to_vector(F.col(emb_col)))
    if pooling == "recency":
        latest = F.max("ts").over(Window.partitionBy("user_id"))
        age_days = (F.col("ts").cast("double") - latest.cast("double")) / 86400.0
        data = data.withColumn("_w", F.coalesce(F.pow(F.lit(2.0), age_days / half_life_days), F.lit(1.0)))
    else:
        data = data.withColumn("_w", F.lit(1.0))
    if "lang" not in data.columns:
        data = data.withColumn("lang", F.lit(None).cast("string"))
    # Term counts (lexical): the texts collected in this same groupBy, counted per user. (Recency pooling weighs the vectors;
    # term counts are plain counts, so old and new ones add up.)
    terms = [F.collect_list(text_col).alias("_texts")] if lexical else []
    pooled = data.groupBy("user_id").agg(
        Summarizer.mean(F.col("_v"), F.col("_w")).alias("_mean"),
        F.sum("_w").alias("text_weight"),
        F.count(F.lit(1)).alias("n_texts"),
        F.max("ts").alias("last_text_ts"),
        *terms,
    ).withColumn("term_counts", lex.user_counts(F.col("_texts")) if lexical else F.lit(None).cast(_EMPTY_COUNTS))
    langs = _count_map(data, "lang")
    pooled = pooled.join(langs, "user_id", "left")
    return pooled.select("user_id", vector_to_array("_mean").alias("text_mean"), "text_weight", "n_texts",
                         "last_text_ts", F.coalesce("_lang_map", F.create_map().cast(_EMPTY_COUNTS)).alias("lang_counts"),
                         "term_counts")


def event_state(events: DataFrame) -> DataFrame:
    """Per user: n_events, event_counts, category_counts, rating_sum, rating_count, last_event_ts."""
    base = events.groupBy("user_id").agg(
        F.count(F.lit(1)).alias("n_events"),
        F.sum("rating").alias("rating_sum"),
        F.count("rating").alias("rating_count"),
        F.max("ts").alias("last_event_ts"),
    )
    return (base.join(_count_map(events, "event_type"), "user_id", "left")
            .join(_count_map(events, "category"), "user_id", "left")
            .withColumnRenamed("_event_type_map", "event_counts")
            .withColumnRenamed("_category_map", "category_counts"))


def _complete(df: DataFrame, model_id: str | None, updated_by: str) -> DataFrame:
    """Fill the state's defaults (a user without texts or events) and fix the column order."""
    empty = F.create_map().cast(_EMPTY_COUNTS)
    return df.select(
        "user_id",
        F.col("text_mean"),
        F.coalesce("text_weight", F.lit(0.0)).alias("text_weight"),
        F.coalesce("n_texts", F.lit(0)).cast("long").alias("n_texts"),
        "last_text_ts",
        F.coalesce("lang_counts", empty).alias("lang_counts"),
        F.coalesce("n_events", F.lit(0)).cast("long").alias("n_events"),
        F.coalesce("event_counts", empty).alias("event_counts"),
        F.coalesce("category_counts", empty).alias("category_counts"),
        F.coalesce("rating_sum", F.lit(0.0)).cast("double").alias("rating_sum"),
        F.coalesce("rating_count", F.lit(0)).cast("long").alias("rating_count"),
        "last_event_ts",
        F.lit(model_id).cast("string").alias("model_id"),
        F.lit(updated_by).alias("updated_by"),
        F.current_timestamp().alias("updated_at"),
        F.coalesce("term_counts", empty).alias("term_counts"),
    )


def user_state(texts: DataFrame | None, events: DataFrame | None, *, pooling: str = "mean",
               half_life_days: float = 30.0, model_id: str | None = None, updated_by: str = "",
               lexical: bool = False) -> DataFrame:
    """One state row per user seen in texts or events (columns STATE_COLUMNS); term counts
    only with `lexical` (the lexical channel is on), else empty."""
    parts = []
    if texts is not None:
        parts.append(text_state(texts, pooling, half_life_days, lexical=lexical))
    if events is not None:
        parts.append(event_state(events))
    if not parts:
        raise ValueError("user_state needs texts or events")
    state = parts[0] if len(parts) == 1 else parts[0].join(parts[1], "user_id", "full_outer")
    for c, t in (("text_mean", "array<double>"), ("text_weight", "double"), ("n_texts", "long"),
                 ("last_text_ts", "timestamp"), ("lang_counts", _EMPTY_COUNTS), ("n_events", "long"),
                 ("event_counts", _EMPTY_COUNTS), ("category_counts", _EMPTY_COUNTS), ("rating_sum", "double"),
                 ("rating_count", "long"), ("last_event_ts", "timestamp"), ("term_counts", _EMPTY_COUNTS)):
        if c not in state.columns:
            state = state.withColumn(c, F.lit(None).cast(t))
    return _complete(state, model_id, updated_by)


def _add_maps(a: str, b: str) -> Column:
    return lex.sum_maps(F.col(a), F.col(b))


def combine_state(old: DataFrame, new: DataFrame, *, pooling: str = "mean", half_life_days: float = 30.0,
                  model_id: str | None = None, updated_by: str) -> DataFrame:
    """The state of old + new data for every user in `new` (users only in `old` are not
    returned: they did not change). Running weighted mean of the text vectors; with recency
    pooling both sides first decay to the later of their latest texts, which is exactly what
    pooling all texts at once gives. Rows of `old` already updated by `updated_by` (a rerun of
    the same batch after a crash) are returned as stored: a batch is never applied twice."""
    o = old.select(*[F.col(c).alias(f"o_{c}") for c in STATE_COLUMNS])
    j = new.join(o, new["user_id"] == o["o_user_id"], "left")
    applied = F.coalesce(F.col("o_updated_by") == F.lit(updated_by), F.lit(False))
    latest = F.greatest("o_last_text_ts", "last_text_ts")

    def decay(ts: str) -> Column:
        if pooling != "recency":
            return F.lit(1.0)
        age = (latest.cast("double") - F.col(ts).cast("double")) / 86400.0
        return F.coalesce(F.pow(F.lit(2.0), -age / half_life_days), F.lit(1.0))

    wa = F.coalesce("o_text_weight", F.lit(0.0)) * decay("o_last_text_ts")
    wb = F.col("text_weight") * decay("last_text_ts")
    w = wa + wb
    mean = (F.when(F.col("o_text_mean").isNull(), F.col("text_mean"))
            .when(F.col("text_mean").isNull(), F.col("o_text_mean"))
            .otherwise(F.zip_with("o_text_mean", "text_mean", lambda x, y: (x * wa + y * wb) / w)))
    merged = j.select(
        "user_id",
        mean.alias("text_mean"),
        F.when(F.col("o_user_id").isNull(), F.col("text_weight")).otherwise(w).alias("text_weight"),
        (F.coalesce("o_n_texts", F.lit(0)) + F.col("n_texts")).alias("n_texts"),
        latest.alias("last_text_ts"),
        F.coalesce(_add_maps("o_lang_counts", "lang_counts"), F.col("lang_counts")).alias("lang_counts"),
        (F.coalesce("o_n_events", F.lit(0)) + F.col("n_events")).alias("n_events"),
        F.coalesce(_add_maps("o_event_counts", "event_counts"), F.col("event_counts")).alias("event_counts"),
        F.coalesce(_add_maps("o_category_counts", "category_counts"), F.col("category_counts"))
        .alias("category_counts"),
        (F.coalesce("o_rating_sum", F.lit(0.0)) + F.col("rating_sum")).alias("rating_sum"),
        (F.coalesce("o_rating_count", F.lit(0)) + F.col("rating_count")).alias("rating_count"),
        F.greatest("o_last_event_ts", "last_event_ts").alias("last_event_ts"),
        F.coalesce(_add_maps("o_term_counts", "term_counts"), F.col("term_counts")).alias("term_counts"),
        applied.alias("_applied"),
    )
    fresh = _complete(merged.where(~F.col("_applied")), model_id, updated_by)
    stored = j.where(applied).select(*[F.col(f"o_{c}").alias(c) for c in STATE_COLUMNS])
    return fresh.unionByName(stored)


# --------------------------------------------------------------------------------------------
# Features from state
# --------------------------------------------------------------------------------------------


def _slug(value: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "_", value).strip("_").lower() or "x"


def top_categories(events: DataFrame, n: int) -> list[str]:
    """The n most frequent categories (a small list, collected on the driver)."""
    if n <= 0:
        return []
    rows = (events.where(F.col("category").isNotNull()).groupBy("category").count()
            .orderBy(F.desc("count"), "category").limit(n).collect())
    return [r["category"] for r in rows]


def behaviour_names(categories: list[str]) -> list[tuple[str, str | None]]:
    """(feature name, category or None) for the behaviour features, in vector order."""
    names: list[tuple[str, str | None]] = [(f"b_{et}", None) for et in EVENT_TYPES]
    names += [("b_total", None), ("b_mean_rating", None)]
    taken = {n for n, _ in names}
    for cat in categories:
        name = f"b_cat_{_slug(cat)}"
        while name in taken:
            name += "_"
        taken.add(name)
        names.append((name, cat))
    return names


def raw_behaviour(state: DataFrame, categories: list[str]) -> tuple[DataFrame, list[str]]:
    """state + raw behaviour features: log1p counts per event type and in total, mean rating,
    and the share of the user's events in each of `categories`. Null for users without events."""
    has = F.col("n_events") > 0
    cols = []
    for name, cat in behaviour_names(categories):
        if cat is not None:
            value = F.coalesce(F.col("category_counts")[cat], F.lit(0)) / F.col("n_events")
        elif name == "b_total":
            value = F.log1p(F.col("n_events"))
        elif name == "b_mean_rating":
            value = F.when(F.col("rating_count") > 0, F.col("rating_sum") / F.col("rating_count"))
        else:
            value = F.log1p(F.coalesce(F.col("event_counts")[name[2:]], F.lit(0)))
        cols.append(F.when(has, value.cast("double")).alias(name))
    names = [n for n, _ in behaviour_names(categories)]
    return state.select("*", *cols), names


def standardise_stats(df: DataFrame, names: list[str]) -> dict:
    """{name: (mean, std)} over the users that have the feature (non-null)."""
    if not names:
        return {}
    row = df.agg(*[F.avg(c).alias(f"m_{c}") for c in names], *[F.stddev_pop(c).alias(f"s_{c}") for c in names]).first()
    return {c: (float(row[f"m_{c}"] or 0.0), float(row[f"s_{c}"] or 0.0)) for c in names}


def standardise(df: DataFrame, names: list[str], stats: dict | None = None) -> tuple[DataFrame, dict]:
    """z-score the named columns (with `stats`, else stats computed from df); nulls (no events,
    no ratings) become 0 = the mean. Returns the frame and the stats used."""
    if not names:
        return df, {}
    stats = stats if stats is not None else standardise_stats(df, names)
    cols = [
        F.coalesce((F.col(c) - F.lit(m)) / F.lit(s if s > 0 else 1.0), F.lit(0.0)).alias(c)
        for c, (m, s) in ((c, stats[c]) for c in names)
    ]
    return df.select(*[c for c in df.columns if c not in names], *cols), stats


def main_lang(col: str = "lang_counts") -> Column:
    """The most frequent language (ties: alphabetically first); null when none is known."""
    ranked = F.sort_array(F.transform(F.map_entries(F.col(col)), lambda e: F.struct((-e["value"]).alias("n"), e["key"].alias("lang"))))
    return F.when(F.size(F.col(col)) > 0, ranked[0].getField("lang"))


def _unit(df: DataFrame, col: str, out: str) -> DataFrame:
    """df + `out`: the array column `col` scaled to unit length (zero vectors stay zero)."""
    # The norm gets its own column: inside the transform's lambda it would be recomputed for
    # every element (d^2 work per user).
    df = df.withColumn("_norm", _norm(F.col(col)))
    return df.withColumn(out, F.when(F.col("_norm") > 0, F.transform(col, lambda x: x / F.col("_norm")))
                         .otherwise(F.col(col))).drop("_norm")


def _centred_by_language(df: DataFrame, col: str, means: dict[str, list[float]]) -> DataFrame:
    """`col` (unit text vectors) minus the mean m of the user's main language, divided by
    sqrt(1 - |m|^2), the root mean square distance of that language's unit vectors to m; users
    of other languages (or none) keep their vector. See `language_means`."""
    pairs, scales = [], []
    for lang, vec in sorted(means.items()):
        m = np.asarray(vec, dtype=np.float64)
        pairs += [F.lit(lang), F.array(*[F.lit(float(v)) for v in m])]
        scales += [F.lit(lang), F.lit(1.0 / math.sqrt(max(1.0 - float(m @ m), 1e-12)))]
    mean, inv = F.create_map(*pairs)[main_lang()], F.create_map(*scales)[main_lang()]
    return df.withColumn(col, F.when(mean.isNull() | F.col(col).isNull(), F.col(col))
                         .otherwise(F.zip_with(col, mean, lambda x, mu: (x - mu) * inv)))


def language_means(state: DataFrame, min_users: int, mode: str = "auto") -> dict[str, list[float]]:
    """The mean unit text vector of each main language with at least `min_users` text users.

    Why: a model trained mostly on one language puts each language's texts in its own region,
    and that direction dominates the distances: KMeans then splits by language and leaves the
    smaller language's topics in one segment (on the sample, with the English default model,
    all Chinese users in one segment). Each language's vectors centred on their mean and
    scaled to a mean squared norm of 1 (as unit vectors have) keep only what differs within
    the language, at the same spread in every language, so segments follow topics in each.
    Measured on the sample (text vectors, scikit-learn KMeans, k by silhouette): ARI among
    Chinese users 0.00 plain, 0.80 centred and made unit per user, 0.89 centred and scaled per
    language (this); English 0.99 in all three.
    `mode` auto: only for mixed-language input (two or more such languages); on: any such
    language; off: never ({})."""
    if mode == "off":
        return {}
    has_text = F.col("text_mean").isNotNull() & (F.col("n_texts") > 0)
    users = _unit(state.where(has_text).withColumn("_lang", main_lang()).where(F.col("_lang").isNotNull()),
                  "text_mean", "_u")
    rows = (users.groupBy("_lang").agg(F.count(F.lit(1)).alias("n"),
                                       Summarizer.mean(array_to_vector("_u")).alias("m"))
            .where(F.col("n") >= min_users).collect())
    if mode == "auto" and len(rows) < 2:
        return {}
    return {r["_lang"]: [float(v) for v in r["m"].toArray()] for r in rows}


def features(state: DataFrame, params: dict, lexicon: lex.Lexicon | None = None) -> DataFrame:
    """user_id, features (Vector), n_texts, n_events, lang — from state and fusion params (and
    the fitted lexicon when params' lexical_weight > 0)."""
    w = float(params["behaviour_weight"])
    w_lex = float(params.get("lexical_weight") or 0.0)
    names = list(params.get("behaviour_features") or [])
    wt = math.sqrt(max(0.0, 1.0 - w - w_lex))
    zero_text = F.array_repeat(F.lit(0.0), int(params["text_dim"]))
    state = _unit(state, "text_mean", "_unit")
    if params.get("language_means"):
        state = _centred_by_language(state, "_unit", params["language_means"])
    text = F.coalesce(F.col("_unit"), zero_text)  # no texts -> zero text part
    blocks = [F.transform(text, lambda x: x * wt)]
    if w_lex > 0:
        if lexicon is None:
            raise ValueError("lexical_weight > 0 needs the run's lexicon (table lexical_terms)")
        wl = math.sqrt(w_lex)
        state = state.withColumn("_lex", lex.vectors(lexicon))
        blocks.append(F.transform("_lex", lambda x: x * wl))
    if not names or w == 0:
        df = state
    else:
        raw, _ = raw_behaviour(state, list(params["categories"]))
        stats = {k: tuple(v) for k, v in params["behaviour_stats"].items()}
        df, _ = standardise(raw, names, stats)
        wb = math.sqrt(w) / math.sqrt(len(names))
        blocks.append(F.array(*[F.col(c) * wb for c in names]))
    arr = blocks[0] if len(blocks) == 1 else F.concat(*blocks)
    return df.select("user_id", array_to_vector(arr).alias("features"), "n_texts", "n_events",
                     main_lang().alias("lang"))


def fusion_params(state: DataFrame, events: DataFrame | None, *, pooling: str = "mean",
                  half_life_days: float = 30.0, behaviour_weight: float = 0.3, n_categories: int = 10,
                  text_dim: int, language_centring: str = "off", language_min_users: int = 30,
                  lexicon: lex.Lexicon | None = None, lexical_weight: float = 0.0) -> dict:
    """The parameters `features` needs, fitted on the full job's users: the behaviour
    categories and each behaviour feature's mean and std, the language means, the lexical
    channel's weight and size (its lexicon is saved apart, in lexical_terms). Saved with the
    model run."""
    w_lex = lexical_weight if lexicon is not None else 0.0  # (no user has a vocabulary term)
    params: dict = {"text_dim": text_dim, "behaviour_weight": behaviour_weight, "pooling": pooling,
                    "half_life_days": half_life_days, "categories": [], "behaviour_features": [],
                    "behaviour_stats": {},
                    "language_means": language_means(state, language_min_users, language_centring)}
    if w_lex > 0:
        params.update(lexical_weight=w_lex, lexical_dim=lexicon.dim, lexical_terms=len(lexicon.terms))
    if events is None:
        return params
    cats = top_categories(events, n_categories)
    raw, names = raw_behaviour(state, cats)
    params.update(categories=cats, behaviour_features=names, behaviour_stats=standardise_stats(raw, names))
    return params


def build_user_vectors(texts: DataFrame, events: DataFrame | None, *, pooling: str = "mean",
                       half_life_days: float = 30.0, behaviour_weight: float = 0.3, n_categories: int = 10,
                       text_dim: int, model_id: str | None = None, updated_by: str = "",
                       state: DataFrame | None = None, language_centring: str = "off",
                       language_min_users: int = 30, lexicon: lex.Lexicon | None = None,
                       lexical_weight: float = 0.0) -> tuple[DataFrame, dict, DataFrame]:
    """The whole stage: (users with features, fusion params, state). Pass `state` (e.g. a
    persisted user_state) to derive params and features from exactly those rows."""
    if state is None:
        state = user_state(texts, events, pooling=pooling, half_life_days=half_life_days, model_id=model_id,
                           updated_by=updated_by)
    params = fusion_params(state, events, pooling=pooling, half_life_days=half_life_days,
                           behaviour_weight=behaviour_weight, n_categories=n_categories, text_dim=text_dim,
                           language_centring=language_centring, language_min_users=language_min_users,
                           lexicon=lexicon, lexical_weight=lexical_weight)
    return features(state, params, lexicon), params, state
