"""Stable segment ids across full runs, and their lineage (the segment_lineage table).

A full run fits its segments from scratch: MLlib numbers them 0..k-1 in whatever order the
fit found them. Published ids must outlive refits (a campaign aimed at segment 3 must still
reach the same people after the next run), so each run's segments are matched to those of
the previous succeeded run and keep their ids where they match:

* the score of a pair (new segment i, previous segment j) is the Jaccard index of their
  members among the users present in both runs, plus `similarity_weight` x the cosine
  similarity of their centroids' text blocks (the BERT part, a space both runs share when
  the model and the fusion weights are the same; the lexical and behaviour blocks are refitted
  every run). The similarity breaks ties, and matches segments with few common users;
* one-to-one by an optimal assignment of those scores (scipy's linear_sum_assignment);
* a pair is a match when its Jaccard index is at least `min_overlap`, or, for a segment with
  fewer than `min_common_users` users present in both runs, when the centroids' similarity is
  at least `min_similarity`;
* unmatched segments get fresh ids, above every id ever published (ids are never reused).

A first run numbers its segments 0..k-1 as before. A run whose model space changed (another
embedding model, other fusion weights or dimensions, another distance) starts fresh ids,
and says so in its log, its summary and its lineage rows (relation new, previous_run_id set).

Relations, per segment of this run (and one row per retired previous segment):
  same     keeps a previous id, and took no majority of another, retired, previous segment
  merged   keeps a previous id and took at least half of the members of a retired one
  split    a fresh id, at least `lineage_share` of its common members from a previous
           segment that lives on under its own id
  new      a fresh id otherwise
  retired  a previous segment no segment of this run continues; successor_ids says where
           its members went
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

log = logging.getLogger("seglake")
# What must be equal between two runs for their centroids to share a space (feature_params keys).
SPACE_KEYS = ("text_dim", "behaviour_weight", "lexical_weight", "pooling")


@dataclass(frozen=True)
class Previous:
    """The previous succeeded full run, as the matching needs it."""

    run_id: str
    user_segments: DataFrame  # user_id, segment_id (its partition: assign's upserts included)
    sizes: dict[int, int]  # its published id -> users
    text_centroids: dict[int, np.ndarray]  # its published id -> the centroid's text block
    next_id: int  # the smallest id never published under this output root
    space_change: str | None  # why this run's centroids are not comparable (None: they are)


@dataclass(frozen=True)
class Matching:
    """Published ids for one run's segments and what they descend from."""

    ids: list[int]  # model centroid index -> published segment id
    lineage: list[dict] = field(default_factory=list)  # segment_lineage rows (run_id added on write)
    next_id: int = 0
    note: str = "first run: segment ids 0..k-1"
    kept_share: float | None = None  # of the users present in both runs, the share whose id stayed
    moves: list[dict] = field(default_factory=list)  # previous id -> id, users (the report's moves)
    previous_run_id: str | None = None  # the run matched against (None: fresh ids)
    previous_sizes: dict[int, int] = field(default_factory=dict)

    def changes(self) -> dict:
        """The run result's view: the summary and the report's "changes since the last run"."""
        return {"note": self.note, "previous_run_id": self.previous_run_id, "kept_share": self.kept_share,
                "lineage": self.lineage, "moves": self.moves, "previous_sizes": self.previous_sizes}


def space_signature(embed_model_id: str | None, params: dict, distance: str) -> dict:
    """What two runs' centroids must agree on to be compared (see SPACE_KEYS)."""
    sig = {k: params.get(k) for k in SPACE_KEYS}
    sig["lexical_weight"] = float(sig["lexical_weight"] or 0.0)
    return {"embed_model_id": embed_model_id, "distance": distance, **sig}


def space_change(old: dict, new: dict) -> str | None:
    """A short reason naming what differs, or None."""
    diff = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in new if old.get(k) != new.get(k)]
    return "; ".join(diff) or None


def text_block(centroid: np.ndarray, params: dict) -> np.ndarray:
    """The BERT block of a fused centroid, unweighted (features = [sqrt(w_text) * text, ...])."""
    dim = int(params["text_dim"])
    w_text = max(1e-12, 1.0 - float(params.get("behaviour_weight") or 0.0) - float(params.get("lexical_weight") or 0.0))
    return np.asarray(centroid[:dim], dtype=np.float64) / np.sqrt(w_text)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def match(overlap: np.ndarray, sizes: np.ndarray, prev_ids: list[int], prev_sizes: dict[int, int],
          similarity: np.ndarray | None, next_id: int, *, min_overlap: float = 0.3, min_similarity: float = 0.9,
          min_common_users: int = 20, similarity_weight: float = 0.25, lineage_share: float = 0.1,
          previous_run_id: str | None = None) -> Matching:
    """Published ids for k segments (this run's model indexes 0..k-1) against previous ones.

    overlap[i, j]: users in this run's segment i and in previous segment prev_ids[j];
    sizes[i]: segment i's users in this run; prev_sizes: previous id -> its users then;
    similarity[i, j]: the cosine of the centroids' text blocks, or None when the spaces
    differ. Pure: everything it needs is k x k_prev numbers."""
    from scipy.optimize import linear_sum_assignment

    k, kp = overlap.shape
    common = overlap.sum(axis=1)  # this run's members present in the previous run too
    prev_common = overlap.sum(axis=0)  # the previous members still present
    union = common[:, None] + prev_common[None, :] - overlap
    jaccard = np.divide(overlap, union, out=np.zeros_like(overlap, dtype=np.float64), where=union > 0)
    sim = np.zeros((k, kp)) if similarity is None else np.clip(similarity, -1.0, 1.0)
    matched: dict[int, int] = {}  # index -> j
    if kp:
        rows, cols = linear_sum_assignment(-(jaccard + similarity_weight * sim))
        for i, j in zip(rows, cols):
            by_members = jaccard[i, j] >= min_overlap
            by_centroid = (similarity is not None and common[i] < min_common_users
                           and sim[i, j] >= min_similarity)
            if by_members or by_centroid:
                matched[int(i)] = int(j)
    ids = [0] * k
    fresh = next_id
    for i in range(k):
        if i in matched:
            ids[i] = prev_ids[matched[i]]
        else:
            ids[i], fresh = fresh, fresh + 1
    share_of_new = np.divide(overlap, common[:, None], out=np.zeros_like(overlap, dtype=np.float64),
                             where=common[:, None] > 0)
    share_of_prev = np.divide(overlap, prev_common[None, :], out=np.zeros_like(overlap, dtype=np.float64),
                              where=prev_common[None, :] > 0)
    rows_out = []
    # A segment with no users this run (merged away by privacy.min_segment_size) is not
    # published: the previous segment it continues is retired, and its id stays reserved.
    published = {i for i in range(k) if sizes[i] > 0}
    continued = {matched[i] for i in published if i in matched}
    for i in sorted(published):
        parents = [j for j in np.argsort(-overlap[i]) if share_of_new[i, j] >= lineage_share]
        if i in matched:
            absorbed = [j for j in parents if j not in continued and share_of_prev[i, j] >= 0.5]
            relation = "merged" if absorbed else "same"
            parents = [matched[i]] + [j for j in parents if j != matched[i]]
        else:
            relation = "split" if any(j in continued for j in parents) else "new"
        rows_out.append(_row(ids[i], relation, previous_run_id, [prev_ids[j] for j in parents],
                             [share_of_new[i, j] for j in parents], [share_of_prev[i, j] for j in parents],
                             int(sizes[i]), int(common[i]),
                             float(sim[i, matched[i]]) if i in matched and similarity is not None else None))
    for j in range(kp):
        if j in continued:
            continue
        heirs = [i for i in np.argsort(-overlap[:, j]) if share_of_prev[i, j] >= lineage_share]
        rows_out.append({**_row(prev_ids[j], "retired", previous_run_id, [prev_ids[j]], [], [],
                                0, int(prev_common[j]), None),
                         "successor_ids": [ids[i] for i in heirs],
                         "successor_shares": [float(share_of_prev[i, j]) for i in heirs]})
    total_common = int(common.sum())
    kept = sum(int(overlap[i, j]) for i, j in matched.items() if i in published)
    moves = [{"from": prev_ids[j], "to": ids[i], "users": int(overlap[i, j])}
             for i in sorted(published) for j in range(kp) if overlap[i, j] > 0]
    counts = {r: sum(1 for x in rows_out if x["relation"] == r) for r in ("same", "merged", "split", "new", "retired")}
    note = (f"segment ids matched to run {previous_run_id}: "
            + ", ".join(f"{n} {r}" for r, n in counts.items() if n)
            + (f"; {kept / total_common:.1%} of the {total_common} returning users kept their id" if total_common else ""))
    return Matching(ids, rows_out, max([fresh, next_id, *[i + 1 for i in ids]]), note,
                    kept / total_common if total_common else None, moves, previous_run_id, dict(prev_sizes))


def _row(segment_id: int, relation: str, previous_run_id: str | None, previous_ids: list[int],
         overlap_shares: list[float], previous_shares: list[float], size: int, common: int,
         similarity: float | None) -> dict:
    return {"segment_id": int(segment_id), "relation": relation, "previous_run_id": previous_run_id,
            "previous_ids": [int(x) for x in previous_ids], "overlap_shares": [float(x) for x in overlap_shares],
            "previous_shares": [float(x) for x in previous_shares], "successor_ids": [], "successor_shares": [],
            "size": size, "common_users": common, "centroid_similarity": similarity}


def fresh(sizes: np.ndarray, next_id: int, previous_run_id: str | None = None, why: str | None = None) -> Matching:
    """Ids next_id.. for a run matched to nothing (a first run, or a changed model space);
    sizes[i]: model index i's users."""
    k = len(sizes)
    ids = list(range(next_id, next_id + k))
    note = (f"segment ids fresh from {next_id}, not matched to run {previous_run_id} ({why})"
            if why else "first run: segment ids 0..k-1")
    return Matching(ids, [_row(i, "new", previous_run_id, [], [], [], int(n), 0, None) for i, n in zip(ids, sizes) if n],
                    next_id + k, note)


# --------------------------------------------------------------------------------------------
# Spark side: the previous run, the overlaps, the relabelling
# --------------------------------------------------------------------------------------------


def previous_run(lake, run_id: str, signature: dict) -> Previous | None:
    """The newest succeeded full run under the lake other than `run_id` (None: a first run)."""
    if not lake.exists("runs"):
        return None
    runs = (lake.read("runs").where((F.col("status") == "succeeded") & (F.col("run_id") != run_id))
            .orderBy(F.desc("finished_at"))
            .select("run_id", "feature_params", "embed_model_id", "distance", "algorithm", "model_path")
            .limit(1).collect())
    if not runs:
        return None
    r = runs[0]
    params = json.loads(r["feature_params"] or "{}")
    segs = lake.read("segments").where(F.col("run_id") == r["run_id"]).select("segment_id", "size", "centroid").collect()
    ids_ever = [int(s["segment_id"]) for s in segs]
    if lake.exists("segment_lineage"):
        top = lake.read("segment_lineage").agg(F.max("segment_id")).first()[0]
        ids_ever.append(-1 if top is None else int(top))
    next_id = max([int(params.get("next_segment_id") or 0), *[i + 1 for i in ids_ever]])
    old_sig = space_signature(r["embed_model_id"], params, r["distance"])
    users = lake.read("user_segments").where(F.col("run_id") == r["run_id"]).select("user_id", "segment_id")
    centroids = {int(s["segment_id"]): np.asarray(s["centroid"]) for s in segs if s["centroid"] is not None}
    centroids.update(saved_centroids(r["model_path"], r["algorithm"], params.get("segment_ids")))
    return Previous(r["run_id"], users, {int(s["segment_id"]): int(s["size"]) for s in segs},
                    {sid: text_block(c, params) for sid, c in centroids.items()}, next_id,
                    space_change(old_sig, signature))


def saved_centroids(model_path: str | None, algorithm: str | None, ids: list[int] | None) -> dict[int, np.ndarray]:
    """Published id -> centroid from a run's saved model (the segments table empties the
    centroid of a privacy-suppressed segment); {} when the model cannot be read."""
    from pyspark.ml.clustering import BisectingKMeansModel, KMeansModel

    if not model_path:
        return {}
    try:
        model = (BisectingKMeansModel if algorithm == "bisecting" else KMeansModel).load(model_path)
    except Exception as exc:  # noqa: BLE001 - a moved or deleted model: the segments' centroids still serve
        log.info("segment ids: the previous model at %s cannot be read (%s); using the published centroids",
                 model_path, str(exc).splitlines()[0][:200])
        return {}
    centers = model.clusterCenters()
    ids = ids or list(range(len(centers)))
    return {int(ids[i]): np.asarray(c) for i, c in enumerate(centers) if i < len(ids)}


def match_run(assigned: DataFrame, centers: np.ndarray, params: dict, prev: Previous | None, sc) -> Matching:
    """Published ids for a run's assignment (segment_id = model index) against the previous
    run (`sc`: the SegmentIdsConf). Two small Spark jobs: segment sizes and the overlaps."""
    k = len(centers)
    sizes = np.zeros(k, dtype=np.int64)
    for r in assigned.groupBy("segment_id").count().collect():
        sizes[int(r["segment_id"])] = int(r["count"])
    if prev is None:
        return fresh(sizes, 0)
    if not sc.stable or prev.space_change:
        why = prev.space_change or "segment_ids.stable is false"
        log.warning("segment ids: fresh ids from %d, not matched to run %s (%s)", prev.next_id, prev.run_id, why)
        return fresh(sizes, prev.next_id, prev.run_id, why)
    prev_ids = sorted(prev.sizes)
    col = {sid: j for j, sid in enumerate(prev_ids)}
    overlap = np.zeros((k, len(prev_ids)), dtype=np.int64)
    pairs = (assigned.select("user_id", F.col("segment_id").alias("_i"))
             .join(prev.user_segments.select("user_id", F.col("segment_id").alias("_j")), "user_id")
             .groupBy("_i", "_j").count().collect())
    for r in pairs:
        if int(r["_j"]) in col:
            overlap[int(r["_i"]), col[int(r["_j"])]] = int(r["count"])
    sim = None
    if prev.text_centroids and prev_ids:
        new_text = np.vstack([text_block(c, params) for c in centers])
        known = [j for j in prev_ids if j in prev.text_centroids]
        sim = np.zeros((k, len(prev_ids)))  # (a previous segment without a centroid: no similarity)
        if known:
            sim[:, [col[j] for j in known]] = _cosine(new_text, np.vstack([prev.text_centroids[j] for j in known]))
    m = match(overlap, sizes, prev_ids, prev.sizes, sim, prev.next_id, min_overlap=sc.min_overlap,
              min_similarity=sc.min_similarity, min_common_users=sc.min_common_users,
              similarity_weight=sc.similarity_weight, lineage_share=sc.lineage_share, previous_run_id=prev.run_id)
    log.info("%s", m.note)
    return m


def relabel(df: DataFrame, ids: list[int] | None, *columns: str) -> DataFrame:
    """`columns` (model indexes) replaced by their published ids (None: the indexes are the ids)."""
    if ids is None or ids == list(range(len(ids))):
        return df
    table = F.array(*[F.lit(int(i)) for i in ids])
    return df.withColumns({c: F.element_at(table, F.col(c).cast("int") + 1) for c in columns if c in df.columns})


def published_list(values: list[int] | None, ids: list[int]) -> list[int] | None:
    """A list of model indexes (a privacy note's segments) as published ids."""
    return None if values is None else [ids[int(v)] for v in values]
