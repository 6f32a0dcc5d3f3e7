"""Baseline segmentations for the evaluations (bench/eval_public.py, bench/eval_recommendations.py).

Each one clusters another kind of user vector with the job's own KMeans (jobs.cluster: same
seed, restarts and iterations, the job's assign), so only the vectors differ from the job's.
All return (user_id, segment_id) as a persisted Spark frame and the silhouette.
"""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

SEED = 42
N_INIT = 3
MAX_ITER = 40


def kmeans_segments(users: DataFrame, k: int, seed: int = SEED) -> tuple[DataFrame, float]:
    """KMeans as the job fits it on (user_id, features); releases `users` if it was cached."""
    from jobs import cluster

    users = users.cache()
    model = cluster.fit(users, k, seed=seed, max_iter=MAX_ITER, n_init=N_INIT)
    pred = cluster.assign(users, model).cache()
    sil = cluster.silhouette(pred)
    seg = pred.select("user_id", F.col("segment_id").cast("int")).cache()
    seg.count()
    pred.unpersist()
    users.unpersist()
    return seg, sil


def behaviour_segments(events: DataFrame, k: int, n_categories: int = 10, seed: int = SEED
                       ) -> tuple[DataFrame, float, list[str]]:
    """Users with events, by what they do only: the job's user-vector code (state, behaviour
    features, z-scores) with the behaviour part at full weight and no text part. `events` has
    the job's typed columns (user_id, item_id, event_type, rating, category, ts)."""
    from jobs.user_vectors import build_user_vectors, user_state

    state = user_state(None, events)
    users, params, _ = build_user_vectors(None, events, behaviour_weight=1.0, n_categories=n_categories,
                                          text_dim=1, state=state)
    seg, sil = kmeans_segments(users.select("user_id", "features"), k, seed)
    return seg, sil, list(params["behaviour_features"])


def tfidf_segments(texts: DataFrame, k: int, seed: int = SEED) -> tuple[DataFrame, float]:
    """The classical text baseline: one document per user (the job's cleaned texts, cut into
    the job's terms: words and bigrams, jieba for Chinese), TF-IDF, L2, KMeans."""
    from pyspark.ml.feature import IDF, HashingTF, Normalizer

    from jobs.segment_profile import user_terms

    docs = user_terms(texts).groupBy("user_id").agg(F.collect_list("term").alias("terms"))
    tf = HashingTF(inputCol="terms", outputCol="tf", numFeatures=1 << 18).transform(docs)
    tfidf = IDF(inputCol="tf", outputCol="tfidf", minDocFreq=2).fit(tf).transform(tf)
    users = Normalizer(inputCol="tfidf", outputCol="features", p=2.0).transform(tfidf).select("user_id", "features")
    return kmeans_segments(users, k, seed)


def random_segments(users: DataFrame, k: int, seed: int = SEED) -> DataFrame:
    """A control: each user in one of k segments by a hash of (seed, user_id), sizes about equal."""
    return users.select("user_id").distinct().select(
        "user_id", F.pmod(F.xxhash64(F.lit(seed), "user_id"), F.lit(k)).cast("int").alias("segment_id"))
