"""The lexical channel: tokens (CJK included), TF-IDF, the SVD fitted on a sample, fusion."""
import math

import numpy as np
import pandas as pd
import pytest

from jobs import lexical
from jobs.user_vectors import combine_state, features, user_state
from tests.conftest import ROOT
from udfs.terms import words

SCHEMA = "user_id string, embedding array<float>, ts timestamp, lang string, text_clean string"


# --------------------------------------------------------------------------------------------
# unit
# --------------------------------------------------------------------------------------------


def test_words_by_script():
    assert words("The battery life of this phone is GREAT, 100% sure") == ["battery", "life", "phone", "great", "sure"]
    assert words("这件连衣裙的面料很舒服") == ["这件", "连衣裙", "面料", "舒服"]  # jieba, no stop words
    assert words("Привет мир, café naïve") == ["привет", "мир", "café", "naïve"]  # letters of any script
    assert words("テスト") == ["テス", "スト"]  # unspaced script: character bigrams
    assert words("电池 battery [EMAIL] [PHONE]") == ["电池", "battery"]  # mask tokens are not words
    assert words(None) == [] and words("") == []


def test_chinese_words_are_jiebas():
    """The segmenter (rjieba, jieba in Rust) cuts every Han run of the sample's Chinese texts
    exactly as jieba does (HMM on in both): the faster library changes no word."""
    import logging

    import jieba
    import rjieba

    from udfs.terms import _HAN_RE, _RUN_RE

    jieba.setLogLevel(logging.WARNING)
    texts = pd.read_csv(ROOT / "data" / "sample" / "texts.csv", dtype=str)
    runs = {r for t in texts.loc[texts["lang"] == "zh", "text"].dropna() for r in _RUN_RE.split(t)
            if r and _HAN_RE.match(r)}
    assert len(runs) > 500
    differ = sorted(r for r in runs if rjieba.cut(r) != jieba.lcut(r))
    assert not differ, f"{len(differ)} of {len(runs)} Han runs cut differently, e.g. {differ[:3]}"


def _dense_tfidf(keys, counts, vocab, idf):
    x = np.zeros((len(keys), len(vocab)))
    for i, (ks, cs) in enumerate(zip(keys, counts)):
        for k, c in zip(ks, cs):
            if k in vocab:
                x[i, vocab.index(k)] = (1 + math.log(c)) * idf[vocab.index(k)]
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def test_tfidf_is_sublinear_tf_times_idf_unit_rows():
    vocab = ["a", "b", "c"]
    idf = np.array([1.0, 2.0, 3.0])
    keys, counts = [["a", "b", "zz"], [], ["zz"], ["c", "a"]], [[1, 4, 9], [], [2], [2, 1]]
    x = lexical.tfidf(pd.Series(keys, dtype=object), pd.Series(counts, dtype=object), pd.Index(vocab), idf)
    np.testing.assert_allclose(x.dot(np.eye(3)), _dense_tfidf(keys, counts, vocab, idf))
    assert x.n_rows == 4 and list(np.diff(x.indptr)) == [2, 0, 0, 2]  # unknown terms ignored


def _sparse(dense: np.ndarray) -> lexical.Sparse:
    rows, cols = np.nonzero(dense)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=dense.shape[0]))])
    return lexical.Sparse(indptr, cols, dense[rows, cols], dense.shape[1])


def test_truncated_svd_finds_the_top_singular_vectors():
    rng = np.random.default_rng(3)
    low_rank = rng.random((200, 3)) @ rng.random((3, 40))
    vt = lexical.truncated_svd(_sparse(low_rank), 3, seed=0)
    _, _, ref = np.linalg.svd(low_rank, full_matrices=False)
    # Same vectors (each up to sign), the largest loading of each positive, the same again for a seed.
    np.testing.assert_allclose(np.abs(vt @ ref[:3].T), np.eye(3), atol=1e-8)
    assert all(v[np.abs(v).argmax()] > 0 for v in vt)
    np.testing.assert_array_equal(vt, lexical.truncated_svd(_sparse(low_rank), 3, seed=0))
    # A sparse full-rank matrix: the subspace keeps (almost) the best rank-5 energy.
    sparse = rng.random((300, 60)) * (rng.random((300, 60)) < 0.1)
    vt = lexical.truncated_svd(_sparse(sparse), 5, seed=0)
    best = np.sum(np.linalg.svd(sparse, compute_uv=False)[:5] ** 2)
    assert np.sum((sparse @ vt.T) ** 2) / best > 0.995


def _maps(keys, counts):
    import pyarrow as pa

    return pa.array([list(zip(k, c)) for k, c in zip(keys, counts)], type=pa.map_(pa.string(), pa.int64()))


def test_projection_ignores_term_order_and_is_unit_or_zero():
    import pyarrow as pa

    rng = np.random.default_rng(1)
    vocab = pa.array([f"w{i}" for i in range(30)])
    comp_t = rng.standard_normal((30, 4))
    keys = [["w1", "w7", "w3"], ["nope"], ["w2"], []]
    counts = [[3, 1, 2], [5], [1], []]
    a = lexical.project(_maps(keys, counts), vocab, np.ones(30), comp_t)
    b = lexical.project(_maps([k[::-1] for k in keys], [c[::-1] for c in counts]), vocab, np.ones(30), comp_t)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), [1.0, 0.0, 1.0, 0.0])
    # The same as the TF-IDF of the driver's fit (pandas rows) times the components.
    x = lexical.tfidf(pd.Series(keys, dtype=object), pd.Series(counts, dtype=object),
                      pd.Index(vocab.to_pylist()), np.ones(30)).dot(comp_t)
    np.testing.assert_allclose(a[0], x[0] / np.linalg.norm(x[0]), rtol=1e-12)
    # A slice of a batch (Arrow's map keys ignore the slice; the offsets do not).
    np.testing.assert_array_equal(lexical.project(_maps(keys, counts).slice(2, 2), vocab, np.ones(30), comp_t), a[2:])


def test_lexicon_rows_round_trip():
    lex = lexical.Lexicon(("x", "y"), np.array([3, 2]), np.array([1.1, 1.4]), np.array([[0.6, 0.8], [0.8, -0.6]]), 5)
    back = lexical.Lexicon.from_rows(lex.rows("r1").iloc[::-1])
    assert back.terms == lex.terms and back.dim == 2
    np.testing.assert_array_equal(back.components, lex.components)
    np.testing.assert_array_equal(back.idf, lex.idf)
    assert lexical.top_terms(lex, np.array([1.0, 0.0]), 1) == ["y"]


# --------------------------------------------------------------------------------------------
# integration (Spark)
# --------------------------------------------------------------------------------------------

TOPICS = {"phone": "battery screen charger camera phone", "food": "pizza noodles recipe taste dinner",
          "trip": "hotel flight beach luggage airport"}


def _texts(spark, n_per_topic=12):
    rng = np.random.default_rng(0)
    rows = []
    for t, vocab in TOPICS.items():
        ws = vocab.split()
        for i in range(n_per_topic):
            for j in range(2):
                text = " ".join(rng.choice(ws, 3)) + (" common" if j == 0 else "")
                rows.append((f"{t}{i}", [1.0, float(j)], None, "en", text))
    return spark.createDataFrame(rows, SCHEMA)


@pytest.fixture(scope="module")
def state(spark):
    return user_state(_texts(spark), None, lexical=True).cache()


def test_fit_bounds_the_vocabulary_and_counts_idf_on_users(state):
    lex = lexical.fit(state, dim=4, min_df=2, max_df=0.9, max_terms=12, sample_size=1000, svd_sample_size=1000)
    assert "common" not in lex.terms  # in every user: above max_df
    assert len(lex.terms) == 12 and lex.n_docs == 36 and lex.dim == 4
    i = lex.terms.index("battery")
    assert lex.df[i] == state.where("term_counts['battery'] > 0").count()
    assert lex.idf[i] == pytest.approx(math.log((1 + 36) / (1 + lex.df[i])) + 1)


def test_svd_is_fitted_on_a_sample_of_users(state, monkeypatch):
    seen = []
    real = lexical.truncated_svd
    monkeypatch.setattr(lexical, "truncated_svd", lambda x, dim, seed: seen.append(x.n_rows) or real(x, dim, seed))
    lex = lexical.fit(state, dim=3, min_df=2, max_df=0.9, sample_size=20, svd_sample_size=10)
    assert 0 < lex.n_docs <= 20 and len(seen) == 1 and 0 < seen[0] <= 10


def test_lexical_vectors_separate_topics_and_fuse_by_weight(state):
    lex = lexical.fit(state, dim=3, min_df=2, max_df=0.9, sample_size=1000, svd_sample_size=1000)
    params = {"text_dim": 2, "behaviour_weight": 0.0, "behaviour_features": [], "lexical_weight": 0.4}
    rows = {r.user_id: r.features.toArray() for r in features(state, params, lex).collect()}
    v = {u: x[2:] / math.sqrt(0.4) for u, x in rows.items()}
    assert all(np.linalg.norm(x[:2]) ** 2 == pytest.approx(0.6) for x in rows.values())
    assert all(np.linalg.norm(x) == pytest.approx(1.0) for x in v.values())
    same = np.mean([v["phone0"] @ v[f"phone{i}"] for i in range(1, 12)])
    other = np.mean([v["phone0"] @ v[f"{t}{i}"] for t in ("food", "trip") for i in range(12)])
    assert same > 0.9 and other < 0.5, (same, other)


def test_weight_zero_is_exactly_the_vectors_without_the_channel(state):
    base = {"text_dim": 2, "behaviour_weight": 0.0, "behaviour_features": []}
    plain = {r.user_id: r.features.toArray() for r in features(state, base).collect()}
    zero = {r.user_id: r.features.toArray() for r in features(state, {**base, "lexical_weight": 0.0}).collect()}
    assert plain.keys() == zero.keys()
    assert all(np.array_equal(plain[u], zero[u]) and len(zero[u]) == 2 for u in plain)


def test_term_counts_add_up_over_batches(spark):
    texts = _texts(spark, 3)
    old, new = texts.where("embedding[1] = 0"), texts.where("embedding[1] = 1")
    both = combine_state(user_state(old, None, updated_by="full", lexical=True),
                         user_state(new, None, updated_by="b1", lexical=True), updated_by="b1")
    want = {r.user_id: r.term_counts for r in user_state(texts, None, lexical=True).collect()}
    assert {r.user_id: r.term_counts for r in both.collect()} == want
    assert all(r.term_counts == {} for r in user_state(texts, None).collect())  # channel off: no counts


def test_segments_are_named_and_explained_by_their_lexical_centre():
    from jobs.segment_profile import lexical_terms, name_segments

    lex = lexical.Lexicon(("battery", "pizza", "hotel"), np.array([5, 5, 5]), np.ones(3), np.eye(3), 10)
    w = 0.25
    centers = np.array([[0.1, 0.2, *(np.sqrt(w) * np.array([1.0, 0.0, 0.0]))],
                        [0.3, 0.1, *(np.sqrt(w) * np.array([0.0, 1.0, 0.0]))]])
    terms = lexical_terms(dict(enumerate(centers)), lex, {"text_dim": 2, "lexical_weight": w})
    assert terms == {0: ["battery"], 1: ["pizza"]}
    assert lexical_terms(dict(enumerate(centers)), None, {"text_dim": 2, "lexical_weight": 0.0}) == {}
    names = name_segments([{"segment_id": 0, "size": 3, "top_terms": [], "lexical_terms": terms[0]},
                           {"segment_id": 1, "size": 3, "top_terms": ["noodles"], "lexical_terms": terms[1]}])
    assert names == {0: "battery", 1: "noodles, pizza"}
