"""PII masking: the patterns (URLs, e-mails, Chinese ID and phone numbers, card-like and
international numbers), masking a text or a quarantined record, and checking outputs for
leaks. Cleaning (udfs/text_clean.py) masks every text before anything is embedded or stored."""
from __future__ import annotations

import re
import unicodedata
from typing import Iterable

import pandas as pd

URL_TOKEN, EMAIL_TOKEN, PHONE_TOKEN = "[URL]", "[EMAIL]", "[PHONE]"
ID_TOKEN, CARD_TOKEN = "[ID]", "[CARD]"
MASK_TOKENS = (URL_TOKEN, EMAIL_TOKEN, PHONE_TOKEN, ID_TOKEN, CARD_TOKEN)

_URL_RE = re.compile(r"(?:(?:https?|ftp)://|www\.)[^\s<>\"'，。！？、）】]+", re.I)
_EMAIL_RE = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
# Chinese resident ID: 17 digits + digit/X, not embedded in a longer digit run.
_CN_ID_RE = re.compile(r"(?<!\d)\d{17}[\dXx](?![\dA-Za-z])")
# Card-like: 13-19 digits, optionally grouped by single spaces/dashes.
_CARD_RE = re.compile(r"(?<![\d+])\d(?:[ \-]?\d){12,18}(?!\d)")
# Chinese mobile numbers, optionally with +86 / 0086 and separators.
_CN_MOBILE_RE = re.compile(r"(?<!\d)(?:\+?86[ \-]?|0086[ \-]?)?1[3-9]\d(?:[ \-]?\d{4}){2}(?!\d)")
# International / national numbers: +CC then groups, or (area) groups; needs >= 7 digits.
# The boundaries are ASCII letters/digits, not \w: a number written right against Chinese
# text ("电话+44 20 7946 0958谢谢") must still be found.
_INTL_PHONE_RE = re.compile(
    r"(?<![A-Za-z0-9_+])(?:\+\d{1,3}[ \-.]?)?(?:\(\d{1,4}\)[ \-.]?)?\d{2,4}(?:[ \-.]\d{2,4}){1,4}(?![A-Za-z0-9_])"
)
# Chinese landlines: 0 + 2-3 digit area code + 7-8 digits ("010-88886666", "0755 12345678").
_CN_LANDLINE_RE = re.compile(r"(?<!\d)0\d{2,3}[ \-]?\d{7,8}(?!\d)")


def _mask_phone(match: re.Match) -> str:
    # A '+country' or '(area)' prefix marks a phone number from 7 digits on; without one,
    # ask for 9+ digits so dates ("2026-03-04") and sizes ("1920 1080") are left alone.
    s = match.group(0)
    digits = sum(ch.isdigit() for ch in s)
    marked = s.startswith("+") or "(" in s
    return PHONE_TOKEN if digits >= (7 if marked else 9) else s


def mask_pii(text: str) -> str:
    """Replace URLs, e-mails, ID-card, card-like and phone numbers with placeholder tokens."""
    text = _URL_RE.sub(URL_TOKEN, text)
    text = _EMAIL_RE.sub(EMAIL_TOKEN, text)
    text = _CN_ID_RE.sub(ID_TOKEN, text)
    text = _CN_MOBILE_RE.sub(PHONE_TOKEN, text)
    text = _CN_LANDLINE_RE.sub(PHONE_TOKEN, text)
    text = _CARD_RE.sub(CARD_TOKEN, text)
    return _INTL_PHONE_RE.sub(_mask_phone, text)


def mask_record(text: str | None) -> str | None:
    """A quarantined record as stored: NFKC-normalised and PII-masked, otherwise as it came
    (tags, broken JSON, odd whitespace stay, so the record still shows what went wrong)."""
    if text is None:
        return None
    return mask_pii(unicodedata.normalize("NFKC", text))


def mask_record_udf():
    """pandas UDF: string -> `mask_record(string)`."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("string")
    def _mask(values: pd.Series) -> pd.Series:
        return pd.Series([mask_record(v) if isinstance(v, str) else None for v in values], dtype=object)

    return _mask


# What counts as leaked PII when scanning outputs: the masking patterns themselves, with the
# phone rule's digit threshold applied (see _mask_phone).
_PII_CHECKS = (("email", _EMAIL_RE), ("url", _URL_RE), ("cn_id", _CN_ID_RE), ("cn_mobile", _CN_MOBILE_RE),
               ("cn_landline", _CN_LANDLINE_RE), ("card", _CARD_RE))


def pii_kinds(value: str | None) -> list[str]:
    """The kinds of PII still present in `value` (empty when clean)."""
    if not value:
        return []
    found = [kind for kind, rx in _PII_CHECKS if rx.search(value)]
    if any(_mask_phone(m) == PHONE_TOKEN for m in _INTL_PHONE_RE.finditer(value)):
        found.append("phone")
    return found


def contains_pii(values: Iterable[str]) -> list[str]:
    """Strings among `values` that still look like PII (used by tests and output checks)."""
    return [v for v in values if pii_kinds(v)]
