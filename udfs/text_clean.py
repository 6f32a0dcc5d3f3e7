"""Text cleaning: pure Python functions plus the Spark pandas UDFs that apply them.

Cleaning runs before embedding *and* before anything is stored, so PII masking here is
what keeps e-mails and phone numbers out of every output table. The order matters:
HTML is removed first (so tags cannot hide PII), then Unicode is NFKC-normalised (so
full-width digits such as "１３８..." become ASCII and the phone pattern sees them),
then PII is masked, then whitespace is collapsed and length is capped.
"""
from __future__ import annotations

import html
import re
import unicodedata

import pandas as pd

from udfs.pii import MASK_TOKENS, mask_pii

# Contents of these elements are never user text (scripts, styles): drop them whole.
_SCRIPT_RE = re.compile(r"<\s*(script|style|noscript)\b[^>]*>.*?<\s*/\s*\1\s*>", re.I | re.S)
_COMMENT_RE = re.compile(r"<!--.*?-->", re.S)
# A tag starts with a letter, '/' or '!' right after '<', so "a < b" and "<3" survive.
_TAG_RE = re.compile(r"</?[A-Za-z!][^<>]*>")
_BLOCK_TAG_RE = re.compile(r"<\s*(br|/p|/div|/li|/h[1-6]|/tr)\b[^>]*>", re.I)

# Control and invisible format characters (zero-width, word joiner, soft hyphen, BOM): they
# could split a phone number or an e-mail so that no pattern sees it.
_CONTROL_RE = re.compile(
    r"[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u00ad\u200b-\u200f\u2028\u2029\u2060-\u206f\ufeff]")
_WS_RE = re.compile(r"\s+")

# Rough token units for the length cap: one CJK character, one word, or one symbol each.
# BERT's WordPiece splits no coarser than this, so capping here never cuts text the model
# would have kept; the tokenizer still truncates exactly at model.max_tokens.
CJK_CHARS = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
# A mask token is one unit, so the cap never cuts "[EMAIL]" in half.
_TOKEN_UNIT_RE = re.compile(rf"\[(?:URL|EMAIL|PHONE|ID|CARD)\]|[{CJK_CHARS}]|[^\s{CJK_CHARS}\W]+|[^\w\s]")


def strip_html(text: str) -> str:
    """Remove scripts/styles/comments and tags, keep the visible text, unescape entities."""
    text = _SCRIPT_RE.sub(" ", text)
    text = _COMMENT_RE.sub(" ", text)
    text = _BLOCK_TAG_RE.sub(" ", text)
    text = _TAG_RE.sub("", text)
    # Unescape after removing tags so "&lt;script&gt;" stays literal text, not a new tag.
    return html.unescape(text)



def cap_tokens(text: str, max_tokens: int) -> str:
    """Cut text after `max_tokens` rough token units (CJK char, word or symbol)."""
    if max_tokens <= 0:
        return text
    for i, m in enumerate(_TOKEN_UNIT_RE.finditer(text)):
        if i == max_tokens:
            return text[: m.start()].rstrip()
    return text


def clean_text(text: str | None, max_tokens: int = 256, max_chars: int | None = None) -> str | None:
    """Full cleaning chain for one text; returns None for null input, "" when nothing is left.

    A text that holds nothing but masked PII tokens counts as empty: it carries no signal
    about the user's interests, only a placeholder. With `max_chars`, the raw text is cut to
    that many characters first, so a 1 MB paste costs no more regex work than the cap (the
    model reads only the first `max_tokens` anyway).
    """
    if text is None:
        return None
    text = str(text)
    if max_chars and len(text) > max_chars:
        text = text[:max_chars]
    text = strip_html(text)
    text = unicodedata.normalize("NFKC", text)
    text = _CONTROL_RE.sub(" ", text)
    text = mask_pii(text)
    # Cap first, then judge what is left: a cut that leaves only a mask token leaves nothing.
    text = cap_tokens(_WS_RE.sub(" ", text).strip(), max_tokens)
    residue = text
    for token in MASK_TOKENS:
        residue = residue.replace(token, "")
    if not re.search(r"\w", residue):
        return ""
    return text


def clean_series(texts: pd.Series, max_tokens: int, max_chars: int | None = None) -> pd.Series:
    """Vectorised-by-loop form used inside the pandas UDF."""
    return pd.Series([clean_text(t, max_tokens, max_chars) if t is not None else None for t in texts], dtype=object)


def clean_text_udf(max_tokens: int, max_chars: int | None = None):
    """pandas UDF: string -> cleaned string (see `clean_text`)."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("string")
    def _clean(texts: pd.Series) -> pd.Series:
        return clean_series(texts.where(texts.notna(), None), max_tokens, max_chars)

    return _clean
