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
from typing import Iterable

import pandas as pd

# Contents of these elements are never user text (scripts, styles): drop them whole.
_SCRIPT_RE = re.compile(r"<\s*(script|style|noscript)\b[^>]*>.*?<\s*/\s*\1\s*>", re.I | re.S)
_COMMENT_RE = re.compile(r"<!--.*?-->", re.S)
# A tag starts with a letter, '/' or '!' right after '<', so "a < b" and "<3" survive.
_TAG_RE = re.compile(r"</?[A-Za-z!][^<>]*>")
_BLOCK_TAG_RE = re.compile(r"<\s*(br|/p|/div|/li|/h[1-6]|/tr)\b[^>]*>", re.I)

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
# Control and invisible format characters (zero-width, word joiner, soft hyphen, BOM): they
# could split a phone number or an e-mail so that no pattern sees it.
_CONTROL_RE = re.compile(
    r"[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u00ad\u200b-\u200f\u2028\u2029\u2060-\u206f\ufeff]")
_WS_RE = re.compile(r"\s+")

# Rough token units for the length cap: one CJK character, one word, or one symbol each.
# BERT's WordPiece splits no coarser than this, so capping here never cuts text the model
# would have kept; the tokenizer still truncates exactly at model.max_tokens.
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
# A mask token is one unit, so the cap never cuts "[EMAIL]" in half.
_TOKEN_UNIT_RE = re.compile(rf"\[(?:URL|EMAIL|PHONE|ID|CARD)\]|[{_CJK}]|[^\s{_CJK}\W]+|[^\w\s]")


def strip_html(text: str) -> str:
    """Remove scripts/styles/comments and tags, keep the visible text, unescape entities."""
    text = _SCRIPT_RE.sub(" ", text)
    text = _COMMENT_RE.sub(" ", text)
    text = _BLOCK_TAG_RE.sub(" ", text)
    text = _TAG_RE.sub("", text)
    # Unescape after removing tags so "&lt;script&gt;" stays literal text, not a new tag.
    return html.unescape(text)


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


# ---------------------------------------------------------------- profile terms
EN_STOP_WORDS = frozenset(
    """a about above after again against all also am an and any are aren't as at be because been before
    being below between both but by can can't cannot could couldn't did didn't do does doesn't doing don't
    down during each few for from further get got had hadn't has hasn't have haven't having he her here hers
    herself him himself his how i i'm i've if in into is isn't it it's its itself just let's like me more most
    much my myself no nor not now of off on once only or other ought our ours ourselves out over own really
    same she should shouldn't so some such than that that's the their theirs them themselves then there
    there's these they they're this those through to too under until up us very was wasn't we we're were
    weren't what when where which while who whom why will with won't would wouldn't you you're your yours
    yourself yourselves one two also even still ever well back go going went make made lot lots thing things
    way quite bit every since though however yet already always never maybe via per etc ok okay yes""".split()
)
ZH_STOP_WORDS = frozenset(
    """的 了 和 是 就 都 而 及 与 着 或 一个 没有 我们 你们 他们 她们 它们 我 你 他 她 它 这 那 这个 那个 也 很 还 又
    在 有 被 把 让 给 对 从 到 为 以 于 上 下 中 里 吧 吗 呢 啊 呀 哦 嗯 得 地 之 其 但 但是 而且 因为 所以 如果
    就是 还是 不是 不 没 非常 比较 真的 一下 一些 一点 这样 那样 可以 已经 自己 什么 怎么 这么 那么 觉得 感觉
    东西 时候 今天 特别 太 最 更 挺 个 次 说 会 要 能 去 来 用 看 做 买 后 前 多 少 好""".split()
)
_EN_WORD_RE = re.compile(r"[a-z][a-z'\-]*[a-z]|[a-z]")
_HAS_CJK_RE = re.compile(rf"[{_CJK}]")


def _jieba():
    """jieba with its dictionary loaded once per Python worker, quietly."""
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    return jieba


def terms(text: str | None, bigrams: bool = True) -> list[str]:
    """Profile terms of a cleaned text: lower-cased English words (no stop words, no mask
    tokens), jieba words for Chinese runs, plus adjacent-term bigrams."""
    if not text:
        return []
    for token in MASK_TOKENS:
        text = text.replace(token, " ")
    out: list[str] = []
    # Split into CJK and non-CJK runs so English inside Chinese text is tokenised as English.
    for run in re.split(rf"([{_CJK}]+)", text):
        if not run:
            continue
        if _HAS_CJK_RE.match(run):
            words = [w for w in _jieba().lcut(run) if w.strip() and w not in ZH_STOP_WORDS and len(w) > 1]
        else:
            words = [w for w in _EN_WORD_RE.findall(run.lower()) if w not in EN_STOP_WORDS and len(w) > 2]
        out.extend(words)
    if bigrams:
        out.extend(f"{a} {b}" for a, b in zip(out, out[1:]))
    return out


def terms_udf(bigrams: bool = True):
    """pandas UDF: cleaned string -> array<string> of profile terms."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("array<string>")
    def _terms(texts: pd.Series) -> pd.Series:
        return pd.Series([terms(t, bigrams) for t in texts], dtype=object)

    return _terms


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
