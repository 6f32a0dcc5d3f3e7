"""Clean stage: apply the text-cleaning UDF and tag texts that end up empty."""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.ingest import REASON
from udfs.text_clean import clean_text_udf


def clean_texts(df: DataFrame, max_tokens: int = 256, text_col: str = "text", out_col: str = "text_clean") -> DataFrame:
    """Add `out_col` (HTML stripped, PII masked, NFKC, whitespace collapsed, capped at
    `max_tokens` token units). Rows already rejected are not cleaned; rows left empty get
    reason `empty_after_cleaning` so they go to quarantine instead of vanishing."""
    clean = clean_text_udf(max_tokens)
    ok = F.col(REASON).isNull()
    out = df.withColumn(out_col, F.when(ok, clean(F.col(text_col))))
    return out.withColumn(
        REASON, F.when(ok & (F.coalesce(F.length(out_col), F.lit(0)) == 0), F.lit("empty_after_cleaning"))
        .otherwise(F.col(REASON)))
