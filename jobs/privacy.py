"""Privacy: pseudonymous user ids (keyed HMAC) and a minimum size for published segments.

PII masking of texts lives in udfs/pii.py (applied by the cleaning in udfs/text_clean.py); this module covers the two things that are
about people rather than strings: who a row belongs to, and whether a published segment is
small enough to point at individuals.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

log = logging.getLogger("seglake")
PSEUDONYM_HEX = 32  # 128 bits of HMAC-SHA256: collisions are out of reach at any user count
MIN_KEY_BYTES = 16


class PrivacyError(ValueError):
    """Privacy settings cannot be honoured (no key, or no segment large enough)."""


def user_id_key(source: str) -> bytes:
    """The HMAC key from `source`: `env:NAME` (an environment variable) or
    `databricks-secret:SCOPE/KEY` (a Databricks secret scope, read with dbutils on the driver).

    The key is never part of the conf (the conf names only where it lives), never logged
    and never stored; without it, pseudonyms cannot be mapped back to ids by brute force
    over likely ids either.
    """
    kind, _, name = source.partition(":")
    if kind == "env":
        value = os.environ.get(name)
        if not value:
            raise PrivacyError(f"privacy.pseudonymize_user_ids is on but the environment variable {name} "
                               f"(privacy.key_source {source!r}) is not set")
    elif kind == "databricks-secret":
        scope, _, key = name.partition("/")
        try:
            from pyspark.dbutils import DBUtils  # only on Databricks
            from pyspark.sql import SparkSession

            value = DBUtils(SparkSession.getActiveSession()).secrets.get(scope=scope, key=key)
        except Exception as exc:  # noqa: BLE001 - the message must not echo a secret, only where it was
            raise PrivacyError(f"cannot read the secret {scope}/{key} (privacy.key_source): "
                               f"{type(exc).__name__}") from None
    else:
        raise PrivacyError(f"privacy.key_source must be 'env:NAME' or 'databricks-secret:SCOPE/KEY', got {source!r}")
    key_bytes = value.encode("utf-8")
    if len(key_bytes) < MIN_KEY_BYTES:
        raise PrivacyError(f"the user id key from {source} is shorter than {MIN_KEY_BYTES} bytes")
    return key_bytes


def pseudonym(user_id: str, key: bytes) -> str:
    """HMAC-SHA256 of the trimmed id, hex, first PSEUDONYM_HEX characters."""
    return hmac.new(key, user_id.strip().encode("utf-8"), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX]


def pseudonymize(df: DataFrame, key: bytes, col: str = "user_id", raw_col: str | None = "_corrupt_record") -> DataFrame:
    """Replace `col` by its keyed pseudonym (blank ids stay blank, so they are still rejected
    as missing). The key travels to the executors inside the UDF's closure, not in the plan,
    so query plans, logs and the Spark UI never show it.

    A malformed raw line (`raw_col`) can hold the raw id anywhere in it, so with pseudonyms on
    it is replaced by its length and SHA-256: an operator with the input can still find it.
    """

    @F.pandas_udf("string")
    def _pseudo(ids: pd.Series) -> pd.Series:
        return pd.Series([pseudonym(v, key) if isinstance(v, str) and v.strip() else v for v in ids], dtype=object)

    out = df.withColumn(col, _pseudo(F.col(col).cast("string")))
    if raw_col and raw_col in df.columns:
        withheld = F.concat(F.lit("[malformed record withheld: pseudonymous ids are on; "),
                            F.length(raw_col).cast("string"), F.lit(" chars, sha256 "), F.sha2(F.col(raw_col), 256),
                            F.lit("]"))
        out = out.withColumn(raw_col, F.when(F.col(raw_col).isNotNull(), withheld))
    return out


def small_segments(sizes: dict[int, int], k: int, min_size: int) -> list[int]:
    """Segment ids among 0..k-1 with fewer than `min_size` users (empty ones included)."""
    return sorted(s for s in range(k) if sizes.get(s, 0) < min_size)


def allowed_segments(sizes: dict[int, int], k: int, min_size: int) -> list[int]:
    """The segments users may be assigned to when small ones are merged away: those with at
    least `min_size` users. Merging only grows them, so one pass is enough."""
    small = set(small_segments(sizes, k, min_size))
    allowed = [s for s in range(k) if s not in small]
    if not allowed:
        raise PrivacyError(f"no segment has privacy.min_segment_size={min_size} users or more "
                           f"(largest: {max(sizes.values(), default=0)}); lower it or use fewer segments")
    return allowed


def suppress_profiles(segments: DataFrame, suppressed: list[int], min_size: int) -> DataFrame:
    """Segments below the minimum size keep their id, size and share; everything that
    describes their members (terms, texts, typical users, behaviour, centroid) is emptied
    and `suppressed` is set."""
    hide = F.col("segment_id").isin(suppressed) if suppressed else F.lit(False)
    keep = {"segment_id", "size", "share", "parent_id", "lineage"}
    cols = []
    for field in segments.schema.fields:
        name = field.name
        if name in keep:
            cols.append(F.col(name))
        elif name == "name":
            cols.append(F.when(hide, F.lit(f"suppressed (fewer than {min_size} users)")).otherwise(F.col(name))
                        .alias(name))
        elif field.dataType.typeName() == "array":
            empty = F.array().cast(field.dataType) if name != "centroid" else F.lit(None).cast(field.dataType)
            cols.append(F.when(hide, empty).otherwise(F.col(name)).alias(name))
        else:
            cols.append(F.when(hide, F.lit(None).cast(field.dataType)).otherwise(F.col(name)).alias(name))
    return segments.select(*cols, hide.alias("suppressed"))
