"""Drift of newly assigned users against the model run they are assigned with.

Three measures, each against the training run's reference (saved in its feature params):
* far_share  - share of assigned users farther from their centroid than the training run's
               95th percentile distance (about 0.05 when nothing drifted);
* psi        - population stability index of the segment shares of the whole population
               after the batch, sum (a - e) ln(a / e); the usual reading: < 0.1 stable,
               0.1-0.25 moderate, > 0.25 a real shift;
* mean_shift - euclidean distance between the mean feature vector of the assigned users and
               the training users' mean (features are unit-scale, so 0.1 is sizeable).
"""
from __future__ import annotations

import logging
import math

import numpy as np
from pyspark.ml.stat import Summarizer
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

log = logging.getLogger(__name__)
EPS = 1e-4  # share floor in the PSI: an empty segment must not give an infinite index


def drift_reference(assigned: DataFrame) -> dict:
    """What later assign runs compare against, from the full job's assigned users."""
    p95 = assigned.approxQuantile("distance", [0.95], 0.001)[0]
    sizes = {int(r["segment_id"]): int(r["count"]) for r in assigned.groupBy("segment_id").count().collect()}
    n = sum(sizes.values())
    mean = assigned.select(Summarizer.mean(F.col("features")).alias("m")).first()["m"]
    return {"users": n, "distance_p95": float(p95), "segment_shares": {str(k): v / n for k, v in sorted(sizes.items())},
            "features_mean": [float(x) for x in mean.toArray()]}


def psi(expected: dict[str, float], actual: dict[str, float]) -> float:
    """Population stability index over the union of segments (shares floored at EPS)."""
    total = 0.0
    for seg in set(expected) | set(actual):
        e, a = max(expected.get(seg, 0.0), EPS), max(actual.get(seg, 0.0), EPS)
        total += (a - e) * math.log(a / e)
    return total


def population_sizes(current: DataFrame, history: DataFrame | None) -> dict[str, int]:
    """Segment sizes of the model's whole population once this batch is applied: `current`
    (the user_segments rows of the model run, before the batch) moved by `history` (this
    batch's rows: old_segment_id -1, new_segment_id +1). k rows reach the driver."""
    sizes = {str(r["segment_id"]): int(r["count"]) for r in current.groupBy("segment_id").count().collect()}
    if history is not None:
        for col, sign in (("old_segment_id", -1), ("new_segment_id", 1)):
            for r in history.where(F.col(col).isNotNull()).groupBy(col).count().collect():
                sizes[str(r[col])] = sizes.get(str(r[col]), 0) + sign * int(r["count"])
    return sizes


def drift_measures(assigned: DataFrame, reference: dict, population: dict[str, int] | None = None) -> dict:
    """far_share and mean_shift of the assigned users (one pass), and the PSI of segment
    shares against training: of `population` (segment sizes of everyone after the batch;
    see population_sizes) when given, else of the assigned users. The population is the
    better default: touched users are the active ones, whose segment mix differs from
    everyone's without any drift."""
    row = assigned.agg(F.count(F.lit(1)).alias("n"),
                       F.avg((F.col("distance") > F.lit(reference["distance_p95"])).cast("double")).alias("far"),
                       Summarizer.mean(F.col("features")).alias("m")).first()
    n = int(row["n"])
    if n == 0:
        return {"users": 0, "far_share": None, "psi": None, "mean_shift": None}
    if population is None:
        population = {str(r["segment_id"]): int(r["count"]) for r in assigned.groupBy("segment_id").count().collect()}
    total = sum(population.values()) or 1
    shift = float(np.linalg.norm(row["m"].toArray() - np.asarray(reference["features_mean"])))
    return {"users": n, "far_share": float(row["far"]),
            "psi": psi(reference["segment_shares"], {k: v / total for k, v in population.items()}),
            "mean_shift": shift}


def judge(measures: dict, thresholds: dict) -> list[str]:
    """The measures past their thresholds, as readable reasons (empty: no re-fit needed).
    Batches smaller than `min_users` are recorded but not judged (too noisy)."""
    if measures["users"] < thresholds["min_users"]:
        return []
    reasons = []
    for key, limit in (("far_share", "max_far_share"), ("psi", "max_psi"), ("mean_shift", "max_mean_shift")):
        value = measures.get(key)
        if value is not None and value > thresholds[limit]:
            reasons.append(f"{key} {value:.3f} > {thresholds[limit]}")
    return reasons
