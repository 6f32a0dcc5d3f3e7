"""Guided segments (cluster.guided): named segments seeded from a short description.

Each description goes through the run's own channels as if it were a user with one text:
cleaned like every text, embedded by the run's model, pooled, centred by its language's mean,
and given the run's lexical vector (its words over the run's vocabulary). Its behaviour block
is the population's mean (zero after standardisation): a description says nothing about how
someone behaves. The `cluster.guided_neighbours` users nearest that vector (text and lexical
blocks) give the seed: their mean feature vector, which seeds one centroid of the final fit
(jobs/cluster.fit, `seeds`); Lloyd iterations then move it to its members' mean, so a guided
segment is what the data around the description look like, and a user close to no guided
segment lands in a discovered one.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

CJK = re.compile(r"[\u3400-\u9fff]")


@dataclass(frozen=True)
class Seed:
    name: str
    lang: str | None
    vector: np.ndarray


def guess_lang(text: str, languages: list[str]) -> str | None:
    """A description's language when the conf gives none: Chinese when it has CJK characters
    and zh is one of the run's languages, else the first other one (None: no languages)."""
    if not languages:
        return None
    if CJK.search(text) and "zh" in languages:
        return "zh"
    rest = [lang for lang in languages if lang != "zh"]
    return (rest or languages)[0]


def description_rows(spark: SparkSession, guided: list[dict], languages: list[str]) -> DataFrame:
    """The descriptions as input text rows (user_id guided:<i>), not yet cleaned."""
    from jobs.ingest import REASON

    rows = [(f"guided:{i}", g["describe"], None, None, g.get("lang") or guess_lang(g["describe"], languages), None)
            for i, g in enumerate(guided)]
    return spark.createDataFrame(rows, f"user_id string, text string, ts timestamp, item_id string, lang string, "
                                       f"{REASON} string")


def described_dims(params: dict) -> int:
    """How many leading features a description speaks to: the text and lexical blocks."""
    lexical = int(params.get("lexical_dim") or 0) if float(params.get("lexical_weight") or 0) > 0 else 0
    return int(params["text_dim"]) + lexical


def seed_vectors(spark: SparkSession, guided: list[dict], *, model_path: str, embed_settings: dict, params: dict,
                 lexicon, max_tokens: int = 256, max_chars: int | None = None) -> list[Seed]:
    """One fused feature vector per guided segment, in the run's feature space (`params`: the
    run's fusion params; `lexicon`: its lexical channel or None)."""
    from jobs.clean import clean_texts
    from jobs.embed import embed_texts
    from jobs.user_vectors import features, user_state

    languages = sorted(params.get("language_means") or {})
    texts = description_rows(spark, guided, languages).transform(clean_texts, max_tokens, max_chars=max_chars)
    empty = [guided[int(r["user_id"].split(":")[1])]["name"] for r in texts.where(F.length("text_clean") == 0).collect()]
    if empty:
        raise ValueError(f"cluster.guided: nothing is left of the description of {empty} after cleaning")
    embedded = embed_texts(texts, model_path, **embed_settings)
    state = user_state(embedded, None, pooling=params.get("pooling", "mean"),
                       half_life_days=params.get("half_life_days", 30.0), lexical=lexicon is not None)
    rows = {r["user_id"]: (r["features"].toArray(), r["lang"]) for r in features(state, params, lexicon).collect()}
    # The behaviour block (last): the population's mean, 0 once standardised.
    start = described_dims(params)
    seeds = []
    for i, g in enumerate(guided):
        vec, lang = rows[f"guided:{i}"]
        vec = vec.copy()
        vec[start:] = 0.0
        seeds.append(Seed(g["name"].strip(), lang, vec))
    return seeds


def neighbour_mean(seed: Seed, users: DataFrame, dims: int, m: int) -> Seed:
    """The seed moved to the mean feature vector of the `m` users nearest its description, by
    cosine over the first `dims` features (the text and lexical blocks: a description says
    nothing about behaviour). A description's vector is not a user's (one short text; no
    behaviour), so Lloyd started from it alone can drift to another group; the mean of the
    users it describes is a centroid in every block, behaviour included."""
    from pyspark.ml.functions import vector_to_array

    s = seed.vector[:dims] / max(float(np.linalg.norm(seed.vector[:dims])), 1e-12)

    @F.pandas_udf("double")
    def _cos(vecs: pd.Series) -> pd.Series:
        if not len(vecs):
            return pd.Series([], dtype="float64")
        x = np.vstack(vecs.to_numpy())[:, :dims]
        return pd.Series((x @ s) / np.maximum(np.linalg.norm(x, axis=1), 1e-12))

    rows = (users.select(vector_to_array("features").alias("x")).withColumn("_c", _cos(F.col("x")))
            .orderBy(F.desc("_c")).limit(m).select("x").collect())
    if not rows:
        return seed
    return Seed(seed.name, seed.lang, np.mean(np.array([r["x"] for r in rows], dtype=np.float64), axis=0))


def by_group(seeds: list[Seed], groups: list[str | None], other: str) -> dict[str | None, list[Seed]]:
    """Which fit each seed goes to: its language's group, else the group of other languages,
    else the first (largest) group; one fit for everyone (groups == [None]) takes them all."""
    out: dict[str | None, list[Seed]] = {}
    for s in seeds:
        g = s.lang if s.lang in groups else other if other in groups else groups[0]
        out.setdefault(g, []).append(s)
    return out
