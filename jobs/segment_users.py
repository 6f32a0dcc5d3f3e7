"""seglake-segment: texts + events in, BERT user vectors, MLlib segments, Delta tables out.

`segment` below is the whole pipeline, one stage a line; each stage follows it in this file,
and its DataFrame work lives in the stage's own module (ingest, embed, user_vectors, cluster,
segment_profile, recommend). The command line is jobs/cli.py; the tables are jobs/tables.py.

Commit order, so that readers never see a half-written run: a `runs` row `running` first; then
quarantine, user_segments, segments, segment_lineage, k_selection, segment_history (each replaces this run's
partition), user_vectors (replaced whole), lexical_terms, the recommendations; the `runs` row `succeeded`
last. Readers take only succeeded runs; a rerun of the same run id replaces its partitions.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import (cluster, config, guided, ingest, lexical, metrics, privacy, recommend, segment_ids, segment_profile,
                  summary, tracking)
from jobs.delta_io import user_segments_properties
from jobs.config import (ClusterConf, EmbedConf, LexicalConf, PrivacyConf, ProfileConf, RecommendConf, SegmentIdsConf,
                         UserVectorsConf)
from jobs.drift import drift_reference
from jobs.embed import embed_model_id
from jobs.history import history_rows
from jobs.lock import job_lock
from jobs.pipeline import (INPUTS, Embedded, Ingested, RunContext, embed_stage, fit_to_input, ingest_stage,
                           new_run_id, read_mapped, run_scope)
from jobs.tables import K_SELECTION_ROW, SEGMENT, TABLES, Lake
from jobs.user_vectors import STATE_COLUMNS, build_user_vectors, user_state
from udfs.embedding import resolve_model_path

log = logging.getLogger("seglake")
K_COLUMNS = tuple(f.name for f in K_SELECTION_ROW)
# Written when there are events (the recommendations), or with the lexical channel on.
OPTIONAL_TABLES = ("segment_recommendations", "user_recommendations", "lexical_terms")
PROJECTION_POINTS = 2000


@dataclass
class RunResult:
    """What a run produced: enough for the summary, the runs row, MLflow and tests."""

    run_id: str
    output: str
    tables: dict[str, str]
    counts: dict[str, int]
    reasons: dict[str, int]
    k: int = 0
    silhouette: float = float("nan")
    cost: float = float("nan")
    k_selection: list[dict] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    embed_texts_per_s: float = 0.0
    segments: list[dict] = field(default_factory=list)
    quality: dict = field(default_factory=dict)
    report_path: str | None = None
    model_path: str | None = None
    table_names: dict[str, str] = field(default_factory=dict)  # catalog names (output.catalog_schema)
    model: object = field(default=None, repr=False)  # the fitted MLlib model (for MLflow)
    changes: dict | None = None  # segment ids against the previous run (jobs/segment_ids.Matching.changes)
    tracking: dict | None = None  # the MLflow run, when tracked


def run(spark: SparkSession, conf: dict) -> RunResult:
    """The whole job on an existing session, holding the output root's lock (jobs/lock.py):
    a second run on the same root fails (or waits) before it writes anything."""
    lake = Lake(spark, conf["output"]["root"], conf["output"]["engine"])
    config.require_catalog_engine(conf, lake.engine)
    ctx = RunContext(spark, conf, conf["run_id"] or new_run_id(), lake)
    with job_lock(spark, conf, "seglake-segment", ctx.run_id), \
            tracking.tracked(conf, "seglake-segment", ctx.run_id) as tracker:
        result = segment(ctx)
        tracker.log_segment_run(conf, result)
        return result


def segment(ctx: RunContext) -> RunResult:
    """The pipeline (commit order: see the module docstring)."""
    conf = ctx.conf
    log.info("run %s: writing to %s with the %s Delta writer", ctx.run_id, ctx.lake.root, ctx.engine)
    write_runs_row(ctx, "running")
    with run_scope(ctx, lambda exc: write_runs_row(ctx, "failed", error=repr(exc)[:2000]), f"run {ctx.run_id}"):
        resolve_model_path(conf["embed"]["model_path"])  # before any work: fail fast, on the driver
        ingested = ingest_stage(ctx, read_inputs(ctx))
        require_texts(ctx)
        fit_to_input(ctx)  # small inputs: the session's settings sized to them
        ec = EmbedConf.of(conf)
        embedded = embed_stage(ctx, ingested.texts, ec, cache=ec.cache, measure=True)
        ctx.crash_point("after_embed")  # (tests: the cache holds this run's vectors now)
        users = user_vectors_stage(ctx, embedded, ingested.events, UserVectorsConf.of(conf), LexicalConf.of(conf),
                                   ClusterConf.of(conf))
        clusters = cluster_stage(ctx, users, ClusterConf.of(conf), PrivacyConf.of(conf))
        profiles = profile_stage(ctx, embedded, ingested.events, users, clusters, ProfileConf.of(conf),
                                 PrivacyConf.of(conf))
        recs = recommend_stage(ctx, ingested.events, clusters, profiles, users.watermarks["events_watermark"],
                               RecommendConf.of(conf))
        tables = write_stage(ctx, ingested, users, clusters, profiles, recs)
        result = run_result(ctx, tables, embedded, clusters, profiles, recs)
        result.report_path = summary.write_report(conf, result, ctx.started, profiles.projection)
        write_runs_row(ctx, "succeeded", result, users.watermarks,
                       {**users.feature_params, **clusters.feature_params})
        return result


# --------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------


def read_inputs(ctx: RunContext) -> dict[str, tuple[DataFrame, str]]:
    """The input.texts and (when given) input.events rows, mapped to their logical columns."""
    ic = config.InputConf.of(ctx.conf)
    return {name: (read_mapped(ctx.spark, ctx.conf, getattr(ic, name), name), getattr(ic, name).path)
            for name in INPUTS if getattr(ic, name).path}


def require_texts(ctx: RunContext) -> None:
    if ctx.counts["texts_kept"] == 0:
        raise ingest.InputError(f"no usable texts in {ctx.conf['input']['texts']['path']} "
                                f"(all {ctx.counts['texts_read']} rows quarantined: {ctx.reasons})")


@dataclass(frozen=True)
class Users:
    """The user_vectors stage: features per user, the state rows behind them (the
    user_vectors table), what the assign job needs to rebuild the features (the fusion params
    and the lexicon), the watermarks."""

    users: DataFrame
    state: DataFrame
    feature_params: dict
    watermarks: dict
    lexicon: lexical.Lexicon | None = None


def user_vectors_stage(ctx: RunContext, embedded: Embedded, events: DataFrame | None, uc: UserVectorsConf,
                       lc: LexicalConf, cc: ClusterConf) -> Users:
    with ctx.stage("user_vectors") as facts:
        # The state is persisted first: the user_vectors table and the features are derived
        # from the very same rows, so the assign job reproduces every user's segment exactly.
        state = ctx.keep(user_state(embedded.texts, events, pooling=uc.pooling, half_life_days=uc.half_life_days,
                                    model_id=embed_model_id(EmbedConf.of(ctx.conf)), updated_by=ctx.run_id,
                                    lexical=lc.weight > 0))
        lexicon = None
        if lc.weight > 0:
            lexicon = lexical.fit(state, dim=lc.dim, min_df=lc.min_df, max_df=lc.max_df, max_terms=lc.max_terms,
                                  sample_size=lc.sample_size, svd_sample_size=lc.svd_sample_size,
                                  seed=ClusterConf.of(ctx.conf).seed)
            if lexicon is None:
                log.warning("lexical channel off for this run: no user has a word in their texts")
        users, feature_params, _ = build_user_vectors(
            embedded.texts, events, pooling=uc.pooling, half_life_days=uc.half_life_days,
            behaviour_weight=uc.behaviour_weight, n_categories=uc.top_categories, text_dim=embedded.dim, state=state,
            language_centring=uc.language_centring, language_min_users=uc.language_min_users, lexicon=lexicon,
            lexical_weight=lc.weight)
        users = ctx.keep(users)
        wm = state.agg(F.max("last_text_ts").alias("t"), F.max("last_event_ts").alias("e")).first()
        row = users.agg(F.count(F.lit(1)).alias("n"),
                        F.sum(F.when(F.col("n_events") == 0, 1).otherwise(0)).alias("text_only"),
                        F.sum(F.when(F.col("n_texts") == 0, 1).otherwise(0)).alias("events_only")).first()
        c = ctx.counts
        c["users"], c["users_text_only"], c["users_events_only"] = (
            int(row["n"]), int(row["text_only"] or 0), int(row["events_only"] or 0))
        facts["users"] = c["users"]
        if lc.weight > 0:
            facts["lexical terms"] = len(lexicon.terms) if lexicon else 0
        check_k(cc, c["users"])
    return Users(users, state, feature_params, {"texts_watermark": wm["t"], "events_watermark": wm["e"]}, lexicon)


def check_k(cc: ClusterConf, n_users: int) -> None:
    """A user's mistake, found as soon as users are counted (not after the clustering)."""
    if cc.k != "auto" and cc.k > n_users:
        raise config.ConfigError(f"--k / cluster.k is {cc.k}, more than the {n_users} users "
                                 f"in the input; use a smaller k or 'auto'")
    if cc.k == "auto" and cc.k_min > n_users - 1:
        raise config.ConfigError(f"--k auto sweeps k from cluster.k_min={cc.k_min}, which needs more than "
                                 f"the {n_users} users in the input; lower cluster.k_min or give --k")


@dataclass(frozen=True)
class Clusters:
    """The cluster stage: every user's segment, the saved model, how k was chosen, quality."""

    assigned: DataFrame
    model: object
    model_path: str
    k: int
    k_scores: list[dict]
    quality: dict
    cost: float
    centers: np.ndarray  # by model index
    lineage: dict  # bisecting: segment id -> path of node ids from the root (the leaf: the segment id)
    feature_params: dict  # privacy merges, the published ids and the drift reference, for the assign job
    ids: segment_ids.Matching  # model index -> published segment id, and the lineage rows
    guided: dict[int, str] = field(default_factory=dict)  # published id -> name (cluster.guided)

    @property
    def centroids(self) -> dict[int, np.ndarray]:
        """Published segment id -> centroid."""
        return {self.ids.ids[i]: c for i, c in enumerate(self.centers)}


def cluster_stage(ctx: RunContext, u: Users, cc: ClusterConf, pc: PrivacyConf) -> Clusters:
    n_users = ctx.counts["users"]
    with ctx.stage("cluster") as facts:
        fitted = fit_models(ctx, u, cc, facts)
        model, segment_groups = fitted.model, fitted.segment_groups
        k = len(model.clusterCenters())  # (MLlib may return fewer centroids than k for few distinct points)
        assigned = ctx.keep(cluster.assign(u.users, model, cc.distance, groups=segment_groups))
        assigned, privacy_note = min_segment_size(ctx, assigned, u.users, model, k, pc, cc.distance, segment_groups)
        centers = np.vstack(model.clusterCenters())
        pub = publish(ctx, assigned, centers, u, cc, fitted.noise_thresholds)
        assigned = pub.assigned
        facts["segment ids"] = pub.ids.note.removeprefix("segment ids ")  # (the key says it)
        # Quality over the segments' members: noise (segment -1) is left out, and its share reported.
        members = assigned.where(F.col("segment_id") >= 0) if pub.outlier_mode == "noise" else assigned
        quality = {"silhouette": cluster.silhouette(members, cc.distance) if members.limit(1).count() else float("nan"),
                   **metrics.quality(members),
                   **(stability(ctx, fitted.fits, cc) if cc.algorithm != "hdbscan" else {"stability_ari": None, "stable": None}),
                   **outlier_share(assigned, n_users, pub.outlier_mode)}
        cost = cluster.total_cost(assigned, cc.distance)  # every user's, not the fit sample's
        model_path = f"{ctx.lake.root}/models/{ctx.run_id}"
        model.write().overwrite().save(model_path)
        ids = pub.ids.ids
        lineage = ({ids[leaf]: path[:-1] + [ids[leaf]] for leaf, path in cluster.bisecting_tree(ctx.spark, model_path).items()}
                   if cc.algorithm == "bisecting" else {})
        facts["users assigned"] = n_users
    groups_note = {"segment_groups": segment_groups} if segment_groups else {}
    # Model indexes stay in what the assign job feeds back to the model (allowed, groups);
    # what readers see is in published ids.
    for key in ("suppressed_segments", "merged_segments"):
        if key in privacy_note:
            privacy_note[key] = segment_ids.published_list(privacy_note[key], ids)
    return Clusters(assigned, model, model_path, k, fitted.k_scores, quality, cost, centers, lineage,
                    {**privacy_note, **groups_note, **pub.params, "drift_reference": drift_reference(assigned)},
                    pub.ids, {ids[i]: name for i, name in fitted.guided_at.items()})


@dataclass(frozen=True)
class Fitted:
    """The cluster stage's models: one (per-language fits concatenated), how each was chosen,
    where the guided segments are (model index -> name), hdbscan's noise distances."""

    model: object
    segment_groups: dict | None
    fits: dict
    k_scores: list[dict]
    guided_at: dict[int, str]
    noise_thresholds: dict[int, float] | None = None


def fit_models(ctx: RunContext, u: Users, cc: ClusterConf, facts: dict) -> Fitted:
    """The fits: hdbscan on a sample, or KMeans / bisecting per language group (guided seeds
    first), concatenated into one model."""
    if cc.algorithm == "hdbscan":
        n = ctx.counts["users"]
        model, thresholds = cluster.fit_hdbscan(u.users, n, sample_size=cc.hdbscan_sample_size,
                                                min_cluster_size=cc.hdbscan_min_cluster_size, seed=cc.seed,
                                                distance=cc.distance)
        k = len(model.clusterCenters())
        return Fitted(model, None, {None: GroupFit(k, [], model, None, u.users, n)}, [], {}, thresholds)
    groups = language_groups(ctx, u, cc)
    seeds = guided_seeds(ctx, u, cc, list(groups))
    fits = {g: fit_group(ctx, u.users.where(cluster.language_group(list(groups)) == g) if g else u.users,
                         n, ks, cc, seeds.get(g, [])) for g, (n, ks) in groups.items()}
    if len(fits) == 1:
        model, segment_groups = next(iter(fits.values())).model, None
    else:  # one model, each user kept within their group's segments (cluster.assign)
        model, segment_groups = cluster.concat_models(ctx.spark, {g: f.model for g, f in fits.items()}, cc.distance)
        facts["segments by language"] = ", ".join(f"{g} {len(ids)}" for g, ids in segment_groups.items())
    # A group's guided seeds are its model's first centroids (jobs/cluster.fit, seeds).
    guided_at = {(segment_groups[g][0] if segment_groups else 0) + i: s.name
                 for g, group_seeds in seeds.items() for i, s in enumerate(group_seeds)}
    if guided_at:
        facts["guided segments"] = ", ".join(guided_at.values())
    return Fitted(model, segment_groups, fits, [{**s, "lang": g} for g, f in fits.items() for s in f.k_scores],
                  guided_at)


@dataclass(frozen=True)
class Published:
    """The assignment as readers see it: published ids, memberships, outliers; and what the
    assign job needs to publish its users the same way (`params`, into feature_params)."""

    assigned: DataFrame
    ids: segment_ids.Matching
    outlier_mode: str
    params: dict


def publish(ctx: RunContext, assigned: DataFrame, centers: np.ndarray, u: Users, cc: ClusterConf,
            noise_thresholds: dict[int, float] | None) -> Published:
    """Model indexes -> stable ids (matched to the previous run), soft memberships (a
    temperature fitted on this run's users), outlier flags: each segment's distance quantile,
    or hdbscan's noise distances (then outliers are noise)."""
    temperature = cluster.fit_temperature(assigned, centers, cc.distance, seed=cc.seed)
    ids = stable_ids(ctx, assigned, centers, u.feature_params, SegmentIdsConf.of(ctx.conf))
    out = cluster.memberships(segment_ids.relabel(assigned, ids.ids, "segment_id", "second_segment_id",
                                                  "third_segment_id"), temperature, cc.distance)
    if noise_thresholds is not None:
        mode, thresholds = "noise", {ids.ids[i]: t for i, t in noise_thresholds.items()}
    else:
        mode, thresholds = cc.outlier_mode, cluster.outlier_thresholds(out, cc.outlier_quantile)
    out = ctx.keep(cluster.flag_outliers(out, thresholds, mode))
    return Published(out, ids, mode, {
        "segment_ids": ids.ids, "next_segment_id": ids.next_id, "membership_temperature": temperature,
        "outlier_thresholds": {str(sid): t for sid, t in thresholds.items()}, "outlier_mode": mode})


def guided_seeds(ctx: RunContext, u: Users, cc: ClusterConf, groups: list[str | None]) -> dict:
    """cluster.guided's descriptions as seed centroids, by language group (jobs/guided.py)."""
    if not cc.guided:
        return {}
    ec = EmbedConf.of(ctx.conf)
    seeds = guided.seed_vectors(ctx.spark, cc.guided, model_path=ec.model_path, embed_settings=ec.settings,
                                params=u.feature_params, lexicon=u.lexicon,
                                max_tokens=ctx.conf["clean"]["max_tokens"], max_chars=ctx.conf["clean"]["max_chars"])
    params = u.feature_params
    dims = guided.described_dims(params)
    out = {}
    for g, group_seeds in guided.by_group(seeds, groups, cluster.OTHER).items():
        users = u.users.where(cluster.language_group([x for x in groups if x]) == g) if g else u.users
        out[g] = [guided.neighbour_mean(s, users, dims, cc.guided_neighbours) for s in group_seeds]
    return out


def outlier_share(assigned: DataFrame, n_users: int, mode: str) -> dict:
    """How many users are outliers, and in noise mode their share."""
    n = assigned.where(F.col("outlier")).count()
    return {"outliers": n, "noise_share": n / max(n_users, 1) if mode == "noise" else None}


def stable_ids(ctx: RunContext, assigned: DataFrame, centers: np.ndarray, params: dict,
               sc: SegmentIdsConf) -> segment_ids.Matching:
    """This run's published segment ids, matched to the previous succeeded run's
    (jobs/segment_ids.py); model indexes 0..k-1 on a first run."""
    signature = segment_ids.space_signature(embed_model_id(EmbedConf.of(ctx.conf)), params,
                                            ClusterConf.of(ctx.conf).distance)
    previous = segment_ids.previous_run(ctx.lake, ctx.run_id, signature)
    return segment_ids.match_run(assigned, centers, params, previous, sc)


def language_groups(ctx: RunContext, u: Users, cc: ClusterConf) -> dict[str | None, tuple[int, int | str]]:
    """{group: (users, k or "auto")}: {None: all users} unless cluster.per_language applies,
    else one group per main language with its own mean (user_vectors.language_means) plus
    cluster.OTHER for everyone else when they are at least user_vectors.language_min_users.
    An explicit k is shared among the groups in proportion to their users (cluster.split_k).

    Why per language: with a model trained mostly on one language even centred vectors
    separate the smaller language's topics less, and one k for everyone gives it too few
    segments; each language's own k sweep finds its own structure (on the sample: ARI among
    Chinese users 0.53 with one sweep, see README)."""
    n_users = ctx.counts["users"]
    whole = {None: (n_users, cc.k)}
    langs = sorted(u.feature_params.get("language_means") or {})
    if (cc.per_language == "off" or cc.algorithm != "kmeans" or not langs
            or (cc.per_language == "auto" and len(langs) < 2)):
        return whole
    rows = u.users.groupBy(cluster.language_group(langs).alias("g")).count().collect()
    sizes = {r["g"]: int(r["count"]) for r in sorted(rows, key=lambda r: (-r["count"], r["g"]))}  # largest first
    if sizes.get(cluster.OTHER, 0) < UserVectorsConf.of(ctx.conf).language_min_users:
        sizes.pop(cluster.OTHER, None)  # too few for segments of their own: they go to the nearest of any
    if len(sizes) < 2 or min(sizes.values()) < 2:  # (a KMeans model needs two centres, so two users)
        return whole
    if cc.k == "auto":
        return {g: (n, "auto" if n > cc.k_min else min(n, cc.k_min)) for g, n in sizes.items()}
    if cc.k < 2 * len(sizes):
        log.info("cluster.per_language: k=%d is less than 2 segments for each of the %d language groups; "
                 "one fit for all users", cc.k, len(sizes))
        return whole
    return {g: (sizes[g], kg) for g, kg in cluster.split_k(cc.k, sizes).items()}


@dataclass(frozen=True)
class GroupFit:
    """One group's fit: its k, the sweep's scores, the model, the sweep's sample, its users."""

    k: int
    k_scores: list[dict]
    model: object
    sample: DataFrame | None
    users: DataFrame
    n_users: int


def fit_group(ctx: RunContext, users: DataFrame, n_users: int, k: int | str, cc: ClusterConf,
              seeds: list | None = None) -> GroupFit:
    """k by the sweep's rule (k "auto") or as given, then the final fit of the group's users
    (`seeds`: guided segments, its first centroids; k is raised to leave one discovered)."""
    k_scores, model, sample = [], None, None
    if k == "auto":
        k, k_scores, model, sample = cluster.sweep_k(
            users, cc.k_min, cc.k_max, n_users=n_users, sample_size=cc.sample_size,
            tolerance=cc.k_tolerance, **cc.fit_settings)
        ctx.keep(sample)  # (already persisted by the sweep: released with the rest)
    if seeds and k <= len(seeds):
        log.info("cluster.guided: k=%d raised to %d (the %d guided segments and one discovered)", k, len(seeds) + 1,
                 len(seeds))
        k, model = len(seeds) + 1, None
    if model is None or seeds:  # the sweep's model is reused when it already saw every user (unguided)
        model = cluster.fit_on_sample(users, k, n_users=n_users, sample_size=cc.fit_sample_size,
                                      final_n_init=cc.final_n_init,
                                      seeds=np.vstack([s.vector for s in seeds]) if seeds else None,
                                      **cc.fit_settings)
    return GroupFit(k, k_scores, model, sample, users, n_users)


def stability(ctx: RunContext, fits: dict[str | None, GroupFit], cc: ClusterConf) -> dict:
    """cluster.stability_seeds >= 2: the mean pairwise ARI of refits with other seeds on the
    sample (per group, weighted by its users), and whether it passes cluster.stability_min_ari."""
    if cc.stability_seeds < 2:
        return {"stability_ari": None, "stable": None}
    seeds = [cc.seed + 1000 * (i + 1) for i in range(cc.stability_seeds)]
    settings = {name: value for name, value in cc.fit_settings.items() if name != "seed"}
    total, weighted = 0, 0.0
    for f in fits.values():
        if f.k < 2:
            continue
        sample = f.sample if f.sample is not None else ctx.keep(
            cluster.stratified_sample(f.users, f.n_users, cc.sample_size, cc.seed))
        weighted += f.n_users * cluster.stability(sample, f.k, seeds, **settings)
        total += f.n_users
    ari = weighted / total if total else 1.0
    if ari < cc.stability_min_ari:
        log.warning("unstable segmentation: mean pairwise ARI over %d seeds is %.3f (< %.2f); "
                    "segments depend on the seed, consider another k or more data", len(seeds), ari,
                    cc.stability_min_ari)
    return {"stability_ari": ari, "stable": ari >= cc.stability_min_ari}


def min_segment_size(ctx: RunContext, assigned: DataFrame, users: DataFrame, model, k: int, pc: PrivacyConf,
                     distance: str, groups: dict[str, list[int]] | None = None) -> tuple[DataFrame, dict]:
    """privacy.min_segment_size: segments with fewer users are merged into their nearest
    allowed neighbours (users re-assigned to the nearest centroid among the allowed ones), or
    kept with their profiles suppressed. Returns the assignment and what was done (saved in
    the run's feature_params, so seglake-assign applies the same rule)."""
    if not pc.min_segment_size:
        return assigned, {}
    sizes = {int(r["segment_id"]): int(r["count"]) for r in assigned.groupBy("segment_id").count().collect()}
    small = privacy.small_segments(sizes, k, pc.min_segment_size)
    note: dict = {"min_segment_size": pc.min_segment_size}
    if not small:
        return assigned, note
    if pc.small_segments == "suppress":
        log.info("privacy: profiles of %d segment(s) below %d users are suppressed: %s", len(small),
                 pc.min_segment_size, small)
        return assigned, {**note, "suppressed_segments": small}
    allowed = privacy.allowed_segments(sizes, k, pc.min_segment_size)
    log.info("privacy: %d segment(s) below %d users merged into their neighbours: %s", len(small),
             pc.min_segment_size, small)
    return ctx.keep(cluster.assign(users, model, distance, allowed=allowed, groups=groups)), {
        **note, "allowed_segments": allowed, "merged_segments": small}


@dataclass(frozen=True)
class Profiles:
    """The profile stage: each user's terms, the segment rows (table and plain dicts for the
    summary), the user_segments rows with their explanations, and the report's 2-D points."""

    terms: DataFrame
    segments: DataFrame
    rows: list[dict]
    user_segments: DataFrame
    projection: list[dict]


def profile_stage(ctx: RunContext, embedded: Embedded, events: DataFrame | None, u: Users, cl: Clusters,
                  prc: ProfileConf, pc: PrivacyConf) -> Profiles:
    with ctx.stage("profile", rate=False) as facts:
        terms = ctx.keep(segment_profile.user_terms(embedded.texts, prc.bigrams))
        # (noise, segment -1 with cluster.outlier_mode noise, is no segment: no profile row)
        segments = ctx.keep(segment_profile.profile_segments(
            cl.assigned.where(F.col("segment_id") >= 0), embedded.texts, terms, events, cl.centroids, text_dim=embedded.dim,
            top_terms_n=prc.top_terms, representative_n=prc.representative_texts,
            top_categories_n=prc.top_categories, typical_n=prc.typical_users))
        lex_terms = segment_profile.lexical_terms(cl.centroids, u.lexicon, u.feature_params, prc.top_terms)
        names = segment_profile.name_segments([{**r.asDict(recursive=True), "lexical_terms": lex_terms.get(r.segment_id)}
                                               for r in segments.drop("centroid").collect()])
        names.update({sid: name for sid, name in cl.guided.items() if sid in names})  # guided segments keep theirs
        lineage = cl.lineage
        extra = ctx.spark.createDataFrame(
            [(sid, names[sid], lineage[sid][-2] if len(lineage.get(sid, [])) > 1 else None, lineage.get(sid),
              lex_terms.get(sid, [])) for sid in names],
            "segment_id int, name string, parent_id int, lineage array<int>, lexical_terms array<string>")
        segments = segments.join(extra, "segment_id", "left").select(
            "segment_id", "name", "parent_id", "lineage", *[c for c in segments.columns if c != "segment_id"],
            "lexical_terms")
        segments = privacy.suppress_profiles(segments, cl.feature_params.get("suppressed_segments", []),
                                             pc.min_segment_size).orderBy("segment_id")
        # k rows: collected once and rebuilt as a plain frame, so the tables and joins built
        # from it (user_segments' explanations, the write) do not carry the profile stage's
        # plan, whose text reached tens of MB (Spark renders it for every query).
        collected = segments.collect()
        segments = ctx.keep(ctx.spark.createDataFrame(collected, segments.schema))
        rows = [{c: v for c, v in r.asDict(recursive=True).items() if c != "centroid"} for r in collected]
        facts["segments"] = len(rows)
        user_segments = segment_profile.explain_users(cl.assigned, terms, segments).select(
            F.lit(ctx.run_id).alias("run_id"), "user_id", F.col("segment_id").cast("int"), "distance",
            F.col("second_segment_id").cast("int"), "second_distance", "margin", "matched_terms",
            "n_texts", "n_events", "lang", "top_segment_ids", "memberships", "outlier",
            F.current_timestamp().alias("assigned_at"),
            F.lit(ctx.run_id).alias("assigned_by"))
        projection = project_2d(cl.assigned, ctx.conf["cluster"]["seed"])
    return Profiles(terms, segments, rows, user_segments, projection)


def project_2d(assigned: DataFrame, seed: int) -> list[dict]:
    """PCA (Spark ML) of a sample of user vectors to 2-D, for the report's scatter plot."""
    from pyspark.ml.feature import PCA
    from pyspark.ml.functions import vector_to_array

    n = assigned.count()
    sample = assigned.sample(fraction=min(1.0, PROJECTION_POINTS / max(n, 1)), seed=seed).select("features", "segment_id")
    if n < 3:
        return []
    pca = PCA(k=2, inputCol="features", outputCol="_p").fit(sample)
    rows = pca.transform(sample).select(vector_to_array("_p").alias("p"), "segment_id").limit(PROJECTION_POINTS).collect()
    return [{"x": float(r["p"][0]), "y": float(r["p"][1]), "segment_id": int(r["segment_id"])} for r in rows]


@dataclass(frozen=True)
class Recommendations:
    """The recommend stage: segment_recommendations and user_recommendations rows (None when
    not written: no events, or switched off) and each segment's first items."""

    segment: DataFrame | None = None
    user: DataFrame | None = None
    top_items: dict[int, list[str]] | None = None


def recommend_stage(ctx: RunContext, events: DataFrame | None, cl: Clusters, pr: Profiles, as_of,
                    rc: RecommendConf) -> Recommendations:
    """Per-segment item rankings from the events (jobs/recommend.py)."""
    if not rc.enabled or events is None:
        log.info("recommend: skipped (%s)", "no events" if rc.enabled else "recommend.enabled is false")
        return Recommendations()
    with ctx.stage("recommend", rate=False) as facts:
        inter = recommend.interactions(events, rc.event_weights, as_of=as_of, half_life_days=rc.half_life_days,
                                       rating_range=tuple(ctx.conf["input"]["rating_range"]))
        scores = ctx.keep(recommend.item_scores(
            inter, cl.assigned, lift_weight=rc.lift_weight, lift_prior=rc.lift_prior, min_users=rc.min_users,
            fallback_n=rc.top_n, exclude_segments=cl.feature_params.get("suppressed_segments")))
        reasons = recommend.reason_terms(pr.terms, cl.assigned, pr.segments, rc.reason_terms)
        recs = ctx.keep(recommend.segment_recommendations(scores, reasons, rc.top_n))
        top: dict[int, list[str]] = {}
        for r in recs.where(F.col("rank") <= 5).orderBy("segment_id", "rank").collect():
            top.setdefault(r["segment_id"], []).append(r["item_id"])
        facts["segments"] = len(top)
        # Everything a user interacted with counts as consumed (views too).
        for_users = recommend.recommend_blended if rc.blend_memberships else recommend.recommend_for_users
        user_recs = for_users(cl.assigned, scores, events, rc.top_n) if rc.user_table else None
    return Recommendations(recs, user_recs, top)


def write_stage(ctx: RunContext, ing: Ingested, u: Users, cl: Clusters, pr: Profiles,
                recs: Recommendations) -> dict[str, str]:
    """One Delta commit per table, in the commit order of the module docstring; a rerun of the
    run id replaces its partition (idempotent). Returns the tables written: name -> path."""
    lake, rid = ctx.lake, ctx.run_id
    with ctx.stage("write") as facts:
        k_rows = [{"run_id": rid, "lang": s.get("lang"), **{c: s.get(c) for c in K_COLUMNS}} for s in cl.k_scores]
        written = {
            "quarantine": lake.write_run("quarantine", ing.quarantine, rid),
            "user_segments": lake.write_run("user_segments", pr.user_segments, rid,
                                            properties=user_segments_properties(ctx.conf)),
        }
        ctx.crash_point("after_user_segments")
        written.update({
            "segments": lake.write_run("segments", pr.segments.select(F.lit(rid).alias("run_id"), "*"), rid),
            "segment_lineage": lake.write_run(
                "segment_lineage", lake.rows("segment_lineage", [{"run_id": rid, **r} for r in cl.ids.lineage]), rid),
            "k_selection": lake.write_run("k_selection", lake.rows("k_selection", k_rows), rid),
            "segment_history": lake.write_run(
                "segment_history", history_rows(pr.user_segments.select("user_id", "segment_id"), None, rid, rid), rid),
            # The user state is rebuilt from the full input: it replaces the table (older
            # versions stay readable through Delta time travel).
            "user_vectors": lake.replace("user_vectors", u.state.select(*STATE_COLUMNS)),
        })
        if u.lexicon is not None:  # the assign job's vocabulary, IDF and SVD
            written["lexical_terms"] = lake.write_run(
                "lexical_terms", ctx.spark.createDataFrame(u.lexicon.rows(rid), TABLES["lexical_terms"].schema), rid)
        ctx.crash_point("after_user_vectors")
        for name, rows in (("segment_recommendations", recs.segment), ("user_recommendations", recs.user)):
            if rows is not None:
                written[name] = ctx.counts[f"{name}_rows"] = lake.write_run(
                    name, rows.select(F.lit(rid).alias("run_id"), "*"), rid)
        facts["rows written"] = sum(written.values())
        reconcile(ctx.counts, written)
    return lake.paths([t.name for t in TABLES.values() if SEGMENT in t.written_by
                       and (t.name in written or t.name not in OPTIONAL_TABLES)])


def reconcile(counts: dict[str, int], written: dict[str, int]) -> None:
    """Rows in = rows out + rows quarantined, checked against what was actually written."""
    problems = []
    if written["quarantine"] != counts["quarantined"]:
        problems.append(f"quarantine table got {written['quarantine']} rows, expected {counts['quarantined']}")
    if counts["texts_embedded"] != counts["texts_kept"]:
        problems.append(f"{counts['texts_embedded']} texts embedded for {counts['texts_kept']} kept")
    for table in ("user_segments", "user_vectors", "segment_history"):
        if written[table] != counts["users"]:
            problems.append(f"{table} got {written[table]} rows for {counts['users']} users")
    if problems:
        raise RuntimeError("counts do not reconcile: " + "; ".join(problems))


# --------------------------------------------------------------------------------------------
# The run's record
# --------------------------------------------------------------------------------------------


def run_result(ctx: RunContext, tables: dict[str, str], embedded: Embedded, cl: Clusters, pr: Profiles,
               recs: Recommendations) -> RunResult:
    """The run as the summary, the runs row and MLflow see it; also registers the tables by
    name when output.catalog_schema says so."""
    schema = ctx.conf["output"]["catalog_schema"]
    segments = pr.rows if recs.top_items is None else [
        {**s, "top_items": recs.top_items.get(s["segment_id"], [])} for s in pr.rows]
    return RunResult(
        ctx.run_id, ctx.lake.root, tables, ctx.counts, ctx.reasons, k=cl.k, silhouette=cl.quality["silhouette"],
        cost=cl.cost, k_selection=cl.k_scores, stage_seconds=ctx.timings,
        # Texts/s through the model (cache hits are not counted: they cost no inference).
        embed_texts_per_s=ctx.counts["texts_embedded_new"] / max(ctx.timings["embed"], 1e-9),
        segments=segments, quality=cl.quality, model_path=cl.model_path, model=cl.model, changes=cl.ids.changes(),
        table_names=ctx.lake.register(schema, list(tables)) if schema else {})


def write_runs_row(ctx: RunContext, status: str, res: RunResult | None = None, watermarks: dict | None = None,
                   feature_params: dict | None = None, error: str | None = None) -> None:
    """The run's row in `runs`: running first, then succeeded or failed (same partition)."""
    res = res or RunResult(ctx.run_id, ctx.lake.root, {}, ctx.counts, ctx.reasons, stage_seconds=ctx.timings)
    row = {
        **summary.run_facts(ctx.conf, res, ctx.started), "status": status, "error": error,
        "conf": config.snapshot(ctx.conf),
        # (per language: the largest group's sweep; every group's is in the k_selection table)
        "k_selection": [{c: s.get(c) for c in K_COLUMNS} for s in res.k_selection
                        if s.get("lang") == res.k_selection[0].get("lang")],
        "model_path": res.model_path, "report_path": res.report_path,
        "feature_params": json.dumps(feature_params) if feature_params is not None else None,
        "embed_model_id": embed_model_id(EmbedConf.of(ctx.conf)) if status == "succeeded" else None,
        **(watermarks or {"texts_watermark": None, "events_watermark": None}),
    }
    ctx.lake.write_run("runs", ctx.lake.rows("runs", [row]), ctx.run_id)
