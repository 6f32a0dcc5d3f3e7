"""Clean stage: apply the text-cleaning UDF and tag texts that end up empty."""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs.ingest import REASON, tag_duplicates_and_cap, validate_events, validate_texts
from jobs.privacy import pseudonymize, user_id_key
from udfs.text_clean import clean_text_udf


def clean_texts(df: DataFrame, max_tokens: int = 256, text_col: str = "text", out_col: str = "text_clean",
                max_chars: int | None = None) -> DataFrame:
    """Add `out_col` (raw text cut at `max_chars`, HTML stripped, PII masked, NFKC, whitespace
    collapsed, capped at `max_tokens` token units). Rows already rejected are not cleaned; rows
    left empty get reason `empty_after_cleaning` so they go to quarantine instead of vanishing."""
    clean = clean_text_udf(max_tokens, max_chars)
    ok = F.col(REASON).isNull()
    out = df.withColumn(out_col, F.when(ok, clean(F.col(text_col))))
    return out.withColumn(
        REASON, F.when(ok & (F.coalesce(F.length(out_col), F.lit(0)) == 0), F.lit("empty_after_cleaning"))
        .otherwise(F.col(REASON)))


def prepare_texts(df: DataFrame, *, ts_format: str | None = None, max_tokens: int = 256,
                  max_chars: int | None = None, dedupe_rows: bool = True,
                  max_per_user: int | None = None, user_key: bytes | None = None) -> DataFrame:
    """Mapped text rows -> validated, cleaned, de-duplicated and capped rows with a `reason`
    for every row that cannot be used (the full job and seglake-assign share this). With
    `user_key`, user ids are pseudonymised first, so no later table sees a raw id."""
    if user_key:
        df = pseudonymize(df, user_key)
    return (validate_texts(df, ts_format).transform(clean_texts, max_tokens, max_chars=max_chars)
            .transform(tag_duplicates_and_cap, ["ts", "text", "item_id", "lang"], dedupe_rows, max_per_user))


def prepare_events(df: DataFrame, *, ts_format: str | None = None, rating_range: tuple[float, float] = (1.0, 5.0),
                   dedupe_rows: bool = True, max_per_user: int | None = None,
                   user_key: bytes | None = None) -> DataFrame:
    """Mapped event rows -> validated, de-duplicated and capped rows with a `reason`."""
    if user_key:
        df = pseudonymize(df, user_key)
    return (validate_events(df, ts_format, rating_range)
            .transform(tag_duplicates_and_cap, ["ts", "item_id", "event_type", "rating", "category"], dedupe_rows,
                       max_per_user))


def rules(conf: dict, name: str) -> dict:
    """The keyword arguments of prepare_texts / prepare_events from the conf (driver side)."""
    ing = conf["ingest"]
    pv = conf["privacy"]
    common = {"ts_format": conf["input"]["timestamp_format"], "dedupe_rows": ing["dedupe_rows"],
              "max_per_user": ing[f"max_{name}_per_user"],
              "user_key": user_id_key(pv["key_source"]) if pv["pseudonymize_user_ids"] else None}
    if name == "texts":
        return {**common, "max_tokens": conf["clean"]["max_tokens"], "max_chars": conf["clean"]["max_chars"]}
    return {**common, "rating_range": tuple(conf["input"]["rating_range"])}
