"""The lexical channel: a TF-IDF view of each user's words, reduced by a truncated SVD.

Per user (the user is the document): the counts of their texts' words (`udfs.terms.words`:
English words minus stop words, jieba words for Chinese, character bigrams for unspaced
scripts), kept in the user's state as `term_counts` so that new texts update them by addition.

    x_t = (1 + ln count_t) * idf_t       over the vocabulary, then x / |x|
    l   = x @ V_d^T, then l / |l|        V_d: the SVD's top d right singular vectors

The vocabulary (bounded by document frequency and size), the IDF (smooth: ln((1+n)/(1+df))
+ 1) and the SVD are fitted on a sample of users; the vocabulary's document frequencies are
counted in Spark, and only the SVD sample's rows (lexical.svd_sample_size users at most)
reach the driver. The fitted `Lexicon` is a model: saved with the run (table lexical_terms)
and broadcast to the workers, where an Arrow UDF turns term counts into l (pure numpy).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

_MAP = "map<string,bigint>"


@dataclass(frozen=True)
class Lexicon:
    """A fitted lexical channel: vocabulary, document frequencies, IDF, SVD components
    (dim x vocabulary) and the number of users the vocabulary was counted on."""

    terms: tuple[str, ...]
    df: np.ndarray
    idf: np.ndarray
    components: np.ndarray
    n_docs: int

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    def rows(self, run_id: str) -> pd.DataFrame:
        """The lexical_terms table's rows: one per vocabulary term."""
        return pd.DataFrame({"run_id": run_id, "term": list(self.terms), "term_index": np.arange(len(self.terms)),
                             "df": self.df.astype(np.int64), "idf": self.idf,
                             "component": [c.tolist() for c in self.components.T]})

    @classmethod
    def from_rows(cls, rows: pd.DataFrame) -> Lexicon:
        """The lexicon saved by `rows` (n_docs is not saved: only fitting needs it)."""
        rows = rows.sort_values("term_index")
        comps = np.array([list(c) for c in rows["component"]], dtype=np.float64).T
        return cls(tuple(rows["term"]), rows["df"].to_numpy(), rows["idf"].to_numpy(np.float64), comps, 0)


def load(lake, run_id: str) -> Lexicon:
    """Model run `run_id`'s lexicon from the lexical_terms table of `lake` (a jobs.tables.Lake);
    LookupError when it holds none."""
    stored = lake.read_if_exists("lexical_terms")
    rows = stored.where(F.col("run_id") == run_id).toPandas() if stored is not None else None
    if rows is None or rows.empty:
        raise LookupError(f"lexical_terms under {lake.root} holds no terms for run {run_id}")
    return Lexicon.from_rows(rows)


# --------------------------------------------------------------------------------------------
# Term counts (part of the user state)
# --------------------------------------------------------------------------------------------


def user_counts(texts: Column) -> Column:
    """map<word, count>: the words of all of a user's cleaned texts (an array, collect_list in
    the pooling's groupBy), counted in one pandas UDF per user.

    Why per user, after the groupBy: a count map per text, summed in the JVM (map_zip_with over
    the list), cost twice the Python tokenising itself (bench/lexical_counting.py); one exploded row per word and a groupBy on (user, word) would
    shuffle every word twice and join back (at 1M users it tripled the user_vectors stage)."""
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("struct<k:array<string>,v:array<bigint>>")
    def _counts(lists: pd.Series) -> pd.DataFrame:
        from collections import Counter

        from udfs.terms import words

        keys, values = [], []
        for texts_of_user in lists:
            c: Counter = Counter()
            for t in texts_of_user if texts_of_user is not None else ():
                c.update(words(t))
            keys.append(list(c))
            values.append(list(c.values()))
        return pd.DataFrame({"k": keys, "v": values})

    c = _counts(texts)
    return F.map_from_arrays(c["k"], c["v"])


def sum_maps(a: Column, b: Column) -> Column:
    """Two count maps added key by key (a key missing on one side counts 0)."""
    return F.map_zip_with(a, b, lambda _, x, y: F.coalesce(x, F.lit(0)) + F.coalesce(y, F.lit(0)))


# --------------------------------------------------------------------------------------------
# Fitting on a sample
# --------------------------------------------------------------------------------------------


def _sample(users: DataFrame, n: int, size: int, seed: int) -> DataFrame:
    return users if n <= size else users.sample(fraction=min(1.0, 1.1 * size / n), seed=seed).limit(size)


def fit(state: DataFrame, *, dim: int = 64, min_df: int = 2, max_df: float = 0.5, max_terms: int = 20000,
        sample_size: int = 200000, svd_sample_size: int = 20000, seed: int = 42) -> Lexicon | None:
    """The vocabulary, IDF and SVD of the users' term counts (None: no user has a term).

    Vocabulary: the `max_terms` terms with the highest document frequency among those in at
    least `min_df` and at most a `max_df` share of the sampled users (`sample_size` users)."""
    users = state.where(F.size("term_counts") > 0).select("term_counts")
    n = users.count()
    if n == 0:
        return None
    sample = _sample(users, n, sample_size, seed).cache()
    try:
        n_docs = sample.count()
        dfs = sample.select(F.explode(F.map_keys("term_counts")).alias("term")).groupBy("term").count()
        top = (dfs.where((F.col("count") >= min_df) & (F.col("count") <= max(1.0, max_df * n_docs)))
               .orderBy(F.desc("count"), "term").limit(max_terms).collect())
        if not top:
            return None
        terms = tuple(r["term"] for r in top)
        df = np.array([r["count"] for r in top], dtype=np.int64)
        idf = np.log((1.0 + n_docs) / (1.0 + df)) + 1.0
        rows = _sample(sample, n_docs, svd_sample_size, seed + 1).collect()
    finally:
        sample.unpersist()
    x = tfidf(pd.Series([list(r["term_counts"].keys()) for r in rows], dtype=object),
              pd.Series([list(r["term_counts"].values()) for r in rows], dtype=object), pd.Index(terms), idf)
    return Lexicon(terms, df, idf, truncated_svd(x, min(dim, len(terms)), seed), n_docs)


@dataclass(frozen=True)
class Sparse:
    """Rows of a sparse matrix in CSR form."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray
    n_cols: int

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    def csr(self):
        """The same matrix as scipy's csr_matrix (its products are C loops)."""
        from scipy.sparse import csr_matrix

        return csr_matrix((self.data, self.indices, self.indptr), shape=(self.n_rows, self.n_cols))

    def dot(self, m: np.ndarray) -> np.ndarray:
        """self @ m (m dense, n_cols x d). Each row's terms are stored in column order
        (`tfidf` sorts them), so the sums do not depend on the order of a user's map. (scipy:
        50x numpy's gather and reduceat, measured on 20k users x 40 terms.)"""
        return np.asarray(self.csr() @ m, dtype=np.float64)


def tfidf(keys: pd.Series, counts: pd.Series, index: pd.Index, idf: np.ndarray) -> Sparse:
    """Each row's sublinear TF x IDF over the vocabulary `index`, L2-normalised (terms not in
    the vocabulary are ignored; a row without any stays empty)."""
    lens = np.fromiter((len(k) for k in keys), dtype=np.int64, count=len(keys))
    if lens.sum() == 0:
        return _weighted(lens, np.zeros(0, dtype=np.int64), np.zeros(0), idf, len(index))
    cols = index.get_indexer(np.concatenate([np.asarray(k, dtype=object) for k in keys if len(k)]))
    vals = np.concatenate([np.asarray(c, dtype=np.float64) for c in counts if len(c)])
    return _weighted(lens, cols, vals, idf, len(index))


def _weighted(lens: np.ndarray, cols: np.ndarray, vals: np.ndarray, idf: np.ndarray, n_cols: int) -> Sparse:
    """`tfidf` from the rows' entries laid end to end: `lens` entries a row, their vocabulary
    columns (-1: not in the vocabulary) and counts."""
    n = len(lens)
    rows = np.repeat(np.arange(n), lens)
    keep = cols >= 0
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    order = np.lexsort((cols, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    vals = (1.0 + np.log(vals)) * idf[cols]
    norms = np.sqrt(np.bincount(rows, weights=vals * vals, minlength=n))
    vals = vals / norms[rows]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))])
    return Sparse(indptr, cols, vals, n_cols)


def truncated_svd(x: Sparse, dim: int, seed: int, n_iter: int = 7, oversample: int = 10) -> np.ndarray:
    """The top `dim` right singular vectors of x (dim x n_cols): a randomized SVD (Halko et
    al. 2011, power iterations with QR), signs fixed so each vector's largest loading is
    positive (deterministic for a seed). On the driver, with scipy's sparse products (x and
    its transpose in CSR): numpy's scatter-add for x.T @ q made this 15 s for 20k users."""
    a = x.csr()
    at = a.T.tocsr()
    rng = np.random.default_rng(seed)
    q = a @ rng.standard_normal((x.n_cols, min(dim + oversample, x.n_cols)))
    q, _ = np.linalg.qr(q)
    for _ in range(n_iter):
        z, _ = np.linalg.qr(at @ q)
        q, _ = np.linalg.qr(a @ z)
    b = (at @ q).T  # (q^T x): small, dense
    _, _, vt = np.linalg.svd(b, full_matrices=False)
    vt = vt[:dim]
    signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])
    return vt * np.where(signs == 0, 1.0, signs)[:, None]


# --------------------------------------------------------------------------------------------
# Applying: every user, on the workers
# --------------------------------------------------------------------------------------------

_WORKER: dict[str, tuple] = {}  # lexicon key -> (vocabulary as an Arrow array, idf, components^T): once per worker


def project(maps, vocabulary, idf: np.ndarray, comp_t: np.ndarray) -> np.ndarray:
    """Users' lexical vectors l (rows; zero for a user without vocabulary terms) from an Arrow
    map<string, bigint> array of term counts (no nulls), over `vocabulary` (an Arrow string
    array): the terms are looked up in Arrow's C++ (pyarrow.compute.index_in),
    no Python string is made. (The pandas UDF turned every user's terms into Python strings
    first: at 1M users, 40M of them.)"""
    import pyarrow.compute as pc

    offsets = maps.offsets.to_numpy()
    start, length = int(offsets[0]), int(offsets[-1] - offsets[0])  # (.keys ignores a slice)
    cols = pc.index_in(maps.keys.slice(start, length), value_set=vocabulary).fill_null(-1)
    vals = maps.items.slice(start, length).to_numpy(zero_copy_only=False).astype(np.float64)
    x = _weighted(np.diff(offsets), cols.to_numpy(zero_copy_only=False).astype(np.int64), vals, idf, len(vocabulary))
    y = x.dot(comp_t)
    norms = np.linalg.norm(y, axis=1, keepdims=True)
    return np.divide(y, norms, out=np.zeros_like(y), where=norms > 0)


def vectors(lexicon: Lexicon, counts: str = "term_counts") -> Column:
    """Column: the user's lexical vector (array<double>, length lexicon.dim) from `counts`
    (an Arrow UDF: pyarrow arrays in and out)."""
    import pyarrow as pa
    from pyspark.sql.functions import arrow_udf

    bc = SparkSession.getActiveSession().sparkContext.broadcast(
        (list(lexicon.terms), lexicon.idf, np.ascontiguousarray(lexicon.components.T)))
    key = uuid.uuid4().hex  # (a worker's Broadcast has no id of its own)

    def _lexical(maps: pa.Array) -> pa.Array:
        if key not in _WORKER:
            terms, idf, comp_t = bc.value
            _WORKER[key] = (pa.array(terms, type=pa.string()), idf, comp_t)
        y = project(maps, *_WORKER[key])
        offsets = pa.array(np.arange(len(y) + 1, dtype=np.int32) * y.shape[1])
        return pa.ListArray.from_arrays(offsets, pa.array(y.ravel(), type=pa.float64()))

    # (Spark reads the UDF's kind from its hints; this module's annotations are strings.)
    _lexical.__annotations__ = {"maps": pa.Array, "return": pa.Array}
    _lexical = arrow_udf(_lexical, "array<double>")
    return _lexical(F.coalesce(F.col(counts), F.create_map().cast(_MAP)))


def top_terms(lexicon: Lexicon, centre: np.ndarray, n: int = 10) -> list[str]:
    """The vocabulary terms a lexical centre points at most (centre @ components), for naming."""
    if not len(centre) or not np.any(centre):
        return []
    scores = np.asarray(centre, dtype=np.float64) @ lexicon.components
    best = np.argsort(-scores, kind="stable")[:n]
    return [lexicon.terms[i] for i in best if scores[i] > 0]

