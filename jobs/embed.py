"""Embed stage: BERT sentence embeddings for every cleaned text."""
from __future__ import annotations

from typing import Callable

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.config import EmbedConf
from jobs.tables import Lake
from udfs.embedding import embed_udf, model_id


def _partitions(df: DataFrame, partitions: int | None) -> int:
    """Tasks for the embed stage: as configured, else 2 x default parallelism (a small input
    file is often a single partition, which would leave cores idle)."""
    return partitions or max(2 * df.sparkSession.sparkContext.defaultParallelism, 2)


def embed_texts(
    df: DataFrame,
    model_path: str | None = None,
    *,
    text_col: str = "text_clean",
    out_col: str = "embedding",
    batch_size: int = 64,
    token_budget: int = 8192,
    max_tokens: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    threads_per_task: int | None = None,
    partitions: int | None = None,
    dedupe: bool = True,
    task_hook: Callable[[str], None] | None = None,
    backend: str = "torch",
    onnx_cache: str | None = None,
) -> DataFrame:
    """Add `out_col` (array<float>, unit length) computed from `text_col`.

    With `dedupe`, each distinct text is embedded once and joined back: identical
    reviews and copy-pasted comments are common, and the model is the expensive part.
    The texts are spread over `partitions` tasks (see `_partitions`).
    """
    n = _partitions(df, partitions)
    udf = embed_udf(model_path, batch_size, token_budget, max_tokens, device, precision, threads_per_task,
                    task_hook, backend, onnx_cache)
    if not dedupe:
        return df.repartition(n).withColumn(out_col, udf(F.col(text_col)))
    # Hash-partitioning by the text first lets distinct() run without a second shuffle; an
    # explicit partition count is kept by adaptive execution (it is not coalesced away).
    vectors = (df.select(text_col).where(F.col(text_col).isNotNull()).repartition(n, text_col).distinct()
               .withColumn(out_col, udf(F.col(text_col))))
    return df.join(vectors, on=text_col, how="left")


def embed_with_cache(
    df: DataFrame,
    cache: DataFrame | None,
    model_path: str | None = None,
    *,
    text_col: str = "text_clean",
    out_col: str = "embedding",
    partitions: int | None = None,
    **settings,
) -> tuple[DataFrame, DataFrame]:
    """Embed only the distinct texts that `cache` (rows of the text_embeddings table for
    this model id: text_hash, embedding) does not hold yet.

    Returns (hits, new): both (text_hash, `text_col`, `out_col`) for distinct texts; `new`
    ran through the model. The caller persists `new` (it is the expensive part), appends it
    to the cache and joins hits + new back onto its rows. Texts are keyed by the SHA-256 of
    the cleaned text, so the cache never stores raw text.
    """
    n = _partitions(df, partitions)
    texts = (df.select(text_col).where(F.col(text_col).isNotNull()).distinct()
             .withColumn("text_hash", F.sha2(F.col(text_col), 256)))
    udf = embed_udf(model_path, **settings)
    if cache is None:
        hits = texts.withColumn(out_col, F.lit(None).cast("array<float>")).limit(0)
        missing = texts
    else:
        vectors = cache.select("text_hash", F.col("embedding").alias(out_col)).dropDuplicates(["text_hash"])
        hits = texts.join(vectors, "text_hash")
        missing = texts.join(vectors.select("text_hash"), "text_hash", "left_anti")
    new = missing.repartition(n, "text_hash").withColumn(out_col, udf(F.col(text_col)))
    return hits.select("text_hash", text_col, out_col), new.select("text_hash", text_col, out_col)


def embed_model_id(ec: EmbedConf) -> str:
    """The cache key of the embedding model of conf section `embed` (see udfs.embedding.model_id)."""
    return model_id(ec.model_path, ec.max_tokens, ec.precision, ec.backend)


def embed_cached(texts: DataFrame, lake: Lake, run_id: str, ec: EmbedConf, *,
                 persist: Callable[[DataFrame], DataFrame] | None = None,
                 task_hook: Callable[[str], None] | None = None) -> tuple[DataFrame, int]:
    """The embed stage with the lake's `text_embeddings` cache, for the full and the assign job.

    Embeds only the distinct texts whose hash is not cached for this model id, appends them to
    the cache in run `run_id`'s partition (a rerun of the run replaces rather than duplicates,
    and keeps what an earlier attempt cached) and joins all vectors back onto `texts`. Returns
    (texts + embedding, number of texts that ran through the model). `persist` keeps the new
    vectors (the expensive part) until the caller is done.
    """
    persist = persist or (lambda d: d.persist())
    mid = embed_model_id(ec)
    cache = lake.read_if_exists("text_embeddings")
    if cache is not None:
        cache = cache.where(F.col("model_id") == mid)
    hits, new = embed_with_cache(texts, cache, ec.model_path, partitions=ec.partitions,
                                 threads=ec.threads_per_task, task_hook=task_hook, **ec.settings)
    new = persist(new)
    n_new = new.count()  # runs the model, once
    rows = new.select(F.lit(run_id).alias("run_id"), F.lit(mid).alias("model_id"), "text_hash", "embedding",
                      F.current_timestamp().alias("created_at"))
    if cache is not None:
        own = persist(cache.where(F.col("run_id") == run_id).select(*rows.columns))
        own.count()
        rows = own.unionByName(rows)
    lake.write_run("text_embeddings", rows, run_id)
    vectors = hits.unionByName(new).select("text_clean", "embedding")
    return texts.join(vectors, "text_clean", "left"), n_new
