"""Job configuration: one dataclass per conf section (its defaults and its checks), YAML
profiles, command-line overrides.

Config is read on the driver only. The conf travels as a plain nested dict (YAML in, the
JSON snapshot in the runs table out); stages take their section as a frozen dataclass
(`EmbedConf.of(conf)`), so a stage's settings are typed and documented in one place. Every
key has a default here, a profile file overrides some, flags override the file. Unknown keys
are errors (a typo must not silently fall back to a default).
"""
from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

import yaml

FORMATS = ("csv", "json", "parquet", "delta", "table")  # table: a catalog table name (Unity Catalog)
EVENT_TYPES = ("view", "click", "cart", "purchase", "rating")
TEXT_COLUMNS = {"required": ("user_id", "text"), "optional": ("ts", "item_id", "lang")}
EVENT_COLUMNS = {"required": ("user_id", "item_id", "event_type"), "optional": ("rating", "category", "ts")}
RUN_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"


class ConfigError(ValueError):
    """A configuration problem, with the offending key in the message."""


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


S = TypeVar("S", bound="Section")


@dataclass(frozen=True)
class Section:
    """A conf section: its fields are the keys, with their defaults; `check` raises
    ConfigError naming the first invalid key."""

    KEY: ClassVar[str] = ""

    @classmethod
    def of(cls: type[S], conf: dict) -> S:
        """This section of a loaded conf, typed."""
        return _build(cls, get(conf, cls.KEY))

    def check(self) -> None:
        """Nothing to check unless the section says so."""

    def _key(self, name: str) -> str:
        return f"{self.KEY}.{name}"

    def _int(self, name: str, lo: int, hi: int | None = None, *, optional: bool = False) -> None:
        value = getattr(self, name)
        if optional and value is None:
            return
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= lo and (hi is None or value <= hi)
        _check(ok, self._key(name), f"must be an integer >= {lo}" + (f" and <= {hi}" if hi else "") + f", got {value!r}")

    def _choice(self, name: str, choices: tuple) -> None:
        value = getattr(self, name)
        _check(value in choices, self._key(name), f"must be one of {', '.join(map(str, choices))}; got {value!r}")

    def _bool(self, *names: str) -> None:
        for name in names:
            _check(isinstance(getattr(self, name), bool), self._key(name), "must be true or false")

    def _share(self, *names: str) -> None:
        for name in names:
            v = getattr(self, name)
            _check(_number(v) and 0 <= v <= 1, self._key(name), f"must be a number in [0, 1], got {v!r}")

    def _nonneg(self, *names: str) -> None:
        for name in names:
            v = getattr(self, name)
            _check(_number(v) and v >= 0, self._key(name), f"must be a number >= 0, got {v!r}")


def _build(cls: type[S], values: dict) -> S:
    """cls(**values), nested sections (a field whose default is a dataclass) built too."""
    kwargs = {}
    for f in fields(cls):
        v = values[f.name]
        sub = f.metadata.get("section")
        kwargs[f.name] = _build(sub, v) if sub is not None else v
    return cls(**kwargs)


def _sub(cls: type[S], **defaults: Any) -> Any:
    """A nested section field (input.texts, assign.events, ...)."""
    return field(default_factory=lambda: cls(**defaults), metadata={"section": cls})


@dataclass(frozen=True)
class Source(Section):
    """An input: a path (file, folder or, with format `table`, a catalog table name), its
    format and reader options."""

    path: str | None = None
    format: str = "csv"
    options: dict = field(default_factory=dict)

    def check_at(self, key: str) -> None:
        _check(self.format in FORMATS, f"{key}.format", f"must be one of {', '.join(FORMATS)}; got {self.format!r}")
        _check(isinstance(self.options, dict), f"{key}.options", "must be a mapping")


@dataclass(frozen=True)
class SparkConf(Section):
    KEY = "spark"
    master: str = "local[2]"  # ignored when spark-submit or a cluster already set one
    app_name: str = "seglake-segment"
    conf: dict = field(default_factory=dict)
    # Inputs with at most this many kept rows (texts + events) run the rest of the job without
    # adaptive execution and with one shuffle partition per core (jobs/pipeline.fit_to_input):
    # for small data the re-planning and the extra tasks cost more than they save. 0: off.
    small_input_rows: int = 200_000

    def check(self) -> None:
        self._int("small_input_rows", 0)


@dataclass(frozen=True)
class InputConf(Section):
    KEY = "input"
    texts: Source = _sub(Source)
    events: Source = _sub(Source)
    # logical name -> column name in the file
    columns: dict = field(default_factory=lambda: {
        "texts": {c: c for c in TEXT_COLUMNS["required"] + TEXT_COLUMNS["optional"]},
        "events": {c: c for c in EVENT_COLUMNS["required"] + EVENT_COLUMNS["optional"]},
    })
    timestamp_format: str | None = None  # None: ISO-8601 / Spark's default timestamp parsing
    rating_range: list = field(default_factory=lambda: [1.0, 5.0])

    def check(self) -> None:
        self.texts.check_at("input.texts")
        self.events.check_at("input.events")
        for name, spec in (("texts", TEXT_COLUMNS), ("events", EVENT_COLUMNS)):
            mapping = self.columns[name]
            for logical in spec["required"]:
                _check(isinstance(mapping.get(logical), str) and mapping[logical], f"input.columns.{name}.{logical}",
                       "required column needs a non-empty column name")
            for logical, column in mapping.items():
                _check(column is None or isinstance(column, str), f"input.columns.{name}.{logical}",
                       "must be a column name or null")
        lo, hi = (list(self.rating_range) + [None, None])[:2]
        _check(isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo < hi, "input.rating_range",
               f"must be [min, max] with min < max, got {self.rating_range!r}")


@dataclass(frozen=True)
class IngestConf(Section):
    """Row rules applied after validation (bad rows go to quarantine with the reason)."""

    KEY = "ingest"
    dedupe_rows: bool = True  # identical rows of a user: one is kept, the others are duplicate_row
    max_texts_per_user: int | None = 1000  # the most recent N texts per user; older ones: over_user_cap
    max_events_per_user: int | None = None  # None: no cap (events are aggregated, not embedded)

    def check(self) -> None:
        self._bool("dedupe_rows")
        self._int("max_texts_per_user", 1, optional=True)
        self._int("max_events_per_user", 1, optional=True)


@dataclass(frozen=True)
class CleanConf(Section):
    KEY = "clean"
    max_tokens: int = 256
    max_chars: int | None = 100000

    def check(self) -> None:
        self._int("max_tokens", 1)
        self._int("max_chars", 100, optional=True)


@dataclass(frozen=True)
class EmbedConf(Section):
    KEY = "embed"
    model_path: str | None = None  # None: the packaged all-MiniLM-L6-v2
    batch_size: int = 64
    token_budget: int = 8192
    max_tokens: int | None = None  # None: the model's max_seq_length
    device: str = "auto"
    precision: str = "auto"  # torch: fp32 / fp16 / bf16 (auto: fp32 on CPU, half on GPU); onnx: fp32 / int8
    backend: str = "torch"  # or onnx: ONNX Runtime on the CPU (udfs/onnx_export.py)
    onnx_cache: str | None = None  # where each node keeps its exports (None: ~/.cache/seglake/onnx)
    threads_per_task: int | None = None  # None: spark.task.cpus
    partitions: int | None = None  # None: 2 x default parallelism
    dedupe: bool = True
    cache: bool = True  # reuse vectors from <output>/text_embeddings for the same model id

    def check(self) -> None:
        self._int("batch_size", 1)
        self._int("token_budget", 16)
        self._int("max_tokens", 1, 8192, optional=True)
        self._int("threads_per_task", 1, optional=True)
        self._int("partitions", 1, optional=True)
        _check(self.model_path is None or isinstance(self.model_path, str), "embed.model_path",
               "must be a directory path or null")
        self._choice("device", ("auto", "cpu", "cuda"))
        self._bool("cache")
        self._choice("precision", ("auto", "fp32", "fp16", "bf16", "int8"))
        self._choice("backend", ("torch", "onnx"))
        _check(self.onnx_cache is None or isinstance(self.onnx_cache, str), "embed.onnx_cache",
               "must be a directory path or null")
        if self.backend == "onnx":
            _check(self.precision in ("auto", "fp32", "int8"), "embed.precision",
                   f"must be auto, fp32 or int8 with embed.backend onnx, got {self.precision!r}")
            _check(self.device != "cuda", "embed.device",
                   "cuda needs embed.backend torch (the onnx backend runs on the CPU)")
        else:
            _check(self.precision != "int8", "embed.precision", "int8 needs embed.backend onnx")

    @property
    def settings(self) -> dict:
        """The UDF's batching, device and backend settings."""
        return {k: getattr(self, k) for k in ("batch_size", "token_budget", "max_tokens", "device", "precision",
                                              "backend", "onnx_cache")}


@dataclass(frozen=True)
class UserVectorsConf(Section):
    KEY = "user_vectors"
    pooling: str = "mean"
    half_life_days: float = 30.0
    behaviour_weight: float = 0.3
    top_categories: int = 10
    # Each main language's mean text direction removed (jobs/user_vectors.language_means):
    # auto = for mixed-language input (2+ languages with language_min_users text users each).
    language_centring: str = "auto"
    language_min_users: int = 30

    def check(self) -> None:
        self._choice("pooling", ("mean", "recency"))
        self._choice("language_centring", ("auto", "on", "off"))
        self._int("language_min_users", 1)
        hl = self.half_life_days
        _check(isinstance(hl, (int, float)) and hl > 0, "user_vectors.half_life_days", f"must be > 0, got {hl!r}")
        w = self.behaviour_weight
        _check(isinstance(w, (int, float)) and 0 <= w < 1, "user_vectors.behaviour_weight",
               f"must be in [0, 1), got {w!r}")
        self._int("top_categories", 0, 1000)


@dataclass(frozen=True)
class LexicalConf(Section):
    """The lexical channel (jobs/lexical.py): TF-IDF of users' words, truncated SVD."""

    KEY = "lexical"
    weight: float = 0.2  # share of squared distance (0: off, vectors exactly as without the channel; 1: lexical only)
    dim: int = 64  # SVD dimensions
    min_df: int = 2  # a term is in at least this many sampled users...
    max_df: float = 0.5  # ...and at most this share of them
    max_terms: int = 20000  # the most frequent terms left are the vocabulary
    sample_size: int = 200000  # users whose term counts fit the vocabulary and IDF
    svd_sample_size: int = 20000  # users (from that sample) whose rows fit the SVD on the driver

    def check(self) -> None:
        w = self.weight
        _check(_number(w) and 0 <= w <= 1, self._key("weight"), f"must be in [0, 1], got {w!r}")
        self._int("dim", 1, 1024)
        self._int("min_df", 1)
        m = self.max_df
        _check(_number(m) and 0 < m <= 1, self._key("max_df"), f"must be in (0, 1], got {m!r}")
        self._int("max_terms", 1)
        self._int("sample_size", 1)
        self._int("svd_sample_size", 1)


@dataclass(frozen=True)
class ClusterConf(Section):
    KEY = "cluster"
    algorithm: str = "kmeans"
    k: int | str = "auto"
    k_min: int = 2
    k_max: int = 12
    sample_size: int = 20000
    fit_sample_size: int | None = 100000  # the final model is fitted on at most this many users (null: all)
    seed: int = 42
    max_iter: int = 40
    n_init: int = 3  # restarts per fit; the lowest cost wins
    init_steps: int = 2  # k-means|| rounds (MLlib's default; the large-data profiles use 1, see bench/cluster_scale.py)
    k_tolerance: float = 0.01  # k auto: smallest k with silhouette >= best - tolerance
    stability_seeds: int = 0  # >= 2: refit with this many seeds on the sample, report mean pairwise ARI
    stability_min_ari: float = 0.8  # below it the run is flagged unstable
    distance: str = "euclidean"
    # KMeans fits on at most this many users run on the driver (k-means++, driver_n_init
    # restarts: scikit-learn's algorithm, lower costs than MLlib's k-means|| at these sizes);
    # larger fit samples go to MLlib. Memory: users x dims x 8 bytes (50k x 384: 154 MB). 0: always MLlib.
    driver_fit_max_users: int = 50000
    driver_n_init: int = 10  # restarts of each driver fit of the k sweep and the stability check
    final_n_init: int = 40  # restarts of the final driver fit, while small (jobs.cluster.driver_restarts)
    # Segments within each main language (its own k sweep, or its share of an explicit k), for
    # the languages user_vectors centres; auto = when there are two or more. KMeans only.
    per_language: str = "auto"
    # Users farther from their centroid than this quantile of their segment's distances are
    # `outlier`s; outlier_mode flag keeps them in their nearest segment, noise gives them segment -1.
    outlier_quantile: float = 0.99
    outlier_mode: str = "flag"
    # Guided segments: [{name: new parents, describe: "baby, diapers, stroller, newborn", lang: en}]
    # (lang optional). Each description is embedded through the run's channels and seeds one
    # centroid of the final fit; the segment keeps the name; the other k - g are discovered.
    guided: list = field(default_factory=list)
    guided_neighbours: int = 20  # a guided seed is the mean of the users nearest its description
    # algorithm hdbscan: scikit-learn's HDBSCAN fits at most this many users (<= 50000) on the
    # driver; everyone goes to the nearest cluster's centroid, or to noise (segment -1) when
    # farther than that cluster's farthest sample member. k and the k sweep do not apply.
    hdbscan_sample_size: int = 50000
    hdbscan_min_cluster_size: int = 15

    def check(self) -> None:
        self._choice("algorithm", ("kmeans", "bisecting", "hdbscan"))
        self._int("hdbscan_sample_size", 100, 50000)
        self._int("hdbscan_min_cluster_size", 2)
        self._int("guided_neighbours", 1)
        self._share("outlier_quantile")
        self._choice("outlier_mode", ("flag", "noise"))
        _check(isinstance(self.guided, list), "cluster.guided", "must be a list of {name, describe[, lang]}")
        names = []
        for i, g in enumerate(self.guided):
            ok = (isinstance(g, dict) and set(g) <= {"name", "describe", "lang"}
                  and all(isinstance(g.get(key), str) and g[key].strip() for key in ("name", "describe")))
            _check(ok, f"cluster.guided[{i}]", f"must be {{name: ..., describe: ...[, lang: ...]}} with non-empty "
                   f"strings; got {g!r}")
            names.append(g["name"].strip())
        _check(len(set(names)) == len(names), "cluster.guided", f"names must be unique; got {names}")
        _check(not self.guided or self.algorithm == "kmeans", "cluster.guided", "needs cluster.algorithm kmeans")
        self._choice("distance", ("euclidean", "cosine"))
        self._choice("per_language", ("auto", "on", "off"))
        _check(not (self.per_language == "on" and self.algorithm != "kmeans"), "cluster.per_language",
               "on needs cluster.algorithm kmeans (a bisecting tree cannot be split by language)")
        if self.k != "auto":
            self._int("k", 2)
        self._int("k_min", 2)
        self._int("k_max", 2)
        _check(self.k_min <= self.k_max, "cluster.k_min", "must be <= cluster.k_max")
        self._int("sample_size", 10)
        self._int("fit_sample_size", 10, optional=True)
        self._int("seed", 0)
        self._int("max_iter", 1)
        self._int("n_init", 1, 50)
        self._int("init_steps", 1, 20)
        self._int("stability_seeds", 0, 20)
        self._int("driver_fit_max_users", 0)
        self._int("driver_n_init", 1, 100)
        self._int("final_n_init", 1, 200)
        self._share("k_tolerance", "stability_min_ari")

    @property
    def fit_settings(self) -> dict:
        """What every MLlib fit of the run takes."""
        return {k: getattr(self, k) for k in ("algorithm", "seed", "max_iter", "distance", "n_init", "init_steps",
                                              "driver_fit_max_users", "driver_n_init")}


@dataclass(frozen=True)
class SegmentIdsConf(Section):
    """How a full run's segments keep the ids of the previous run's (jobs/segment_ids.py)."""

    KEY = "segment_ids"
    stable: bool = True  # false: every run numbers its segments afresh (ids still never reused)
    min_overlap: float = 0.3  # a match needs this Jaccard index of members (users in both runs)...
    min_common_users: int = 20  # ...or, for a segment with fewer users in both runs,
    min_similarity: float = 0.9  # this cosine similarity of the centroids' text blocks
    similarity_weight: float = 0.25  # the similarity's weight beside the Jaccard index in the assignment
    lineage_share: float = 0.1  # a previous segment is named in previous_ids from this share of members

    def check(self) -> None:
        self._bool("stable")
        self._share("min_overlap", "min_similarity", "lineage_share")
        self._int("min_common_users", 0)
        self._nonneg("similarity_weight")


@dataclass(frozen=True)
class PrivacyConf(Section):
    KEY = "privacy"
    pseudonymize_user_ids: bool = False  # replace user ids by HMAC-SHA256 pseudonyms at ingest
    key_source: str = "env:SEGLAKE_USER_ID_KEY"  # where the key lives (env:NAME | databricks-secret:SCOPE/KEY)
    min_segment_size: int = 0  # segments with fewer users are merged or have their profiles suppressed
    small_segments: str = "merge"  # merge | suppress

    def check(self) -> None:
        self._bool("pseudonymize_user_ids")
        ks = self.key_source
        _check(isinstance(ks, str) and re.fullmatch(r"env:\w+|databricks-secret:[\w.-]+/[\w.-]+", ks) is not None,
               "privacy.key_source", f"must be 'env:NAME' or 'databricks-secret:SCOPE/KEY' (the key itself never "
               f"goes in the conf); got {ks!r}")
        self._int("min_segment_size", 0)
        self._choice("small_segments", ("merge", "suppress"))


@dataclass(frozen=True)
class ProfileConf(Section):
    KEY = "profile"
    top_terms: int = 10
    representative_texts: int = 5
    top_categories: int = 3
    typical_users: int = 5
    bigrams: bool = True

    def check(self) -> None:
        self._int("top_terms", 1)
        for name in ("representative_texts", "top_categories", "typical_users"):
            self._int(name, 0)


@dataclass(frozen=True)
class RecommendConf(Section):
    """Per-segment item rankings from the events (jobs/recommend.py); skipped without events."""

    KEY = "recommend"
    enabled: bool = True
    top_n: int = 50  # items per segment in segment_recommendations (and per user)
    event_weights: dict = field(default_factory=lambda: {
        "view": 1.0, "click": 2.0, "cart": 4.0, "purchase": 8.0, "rating": 4.0})
    half_life_days: float | None = 90.0  # time decay of an event's weight (null: none), from the events watermark
    lift_weight: float = 0.5  # 0: popularity inside the segment; 1: what sets the segment apart
    lift_prior: float = 20.0  # pseudo-interactions pulling small segments toward overall shares
    min_users: int = 2  # an item counts for a segment once this many of its users interacted with it
    reason_terms: int = 3  # segment terms its users wrote about the item
    user_table: bool = False  # also write user_recommendations (n rows per user: can be large)
    # user_recommendations mixes the lists of the user's top segments by membership
    # (user_segments.memberships) instead of taking the own segment's list only.
    blend_memberships: bool = False

    def check(self) -> None:
        self._bool("enabled", "user_table", "blend_memberships")
        self._int("top_n", 1, 10000)
        self._int("min_users", 1)
        self._int("reason_terms", 0, 100)
        for etype, v in self.event_weights.items():
            _check(_number(v) and v >= 0, f"recommend.event_weights.{etype}", f"must be a number >= 0, got {v!r}")
        _check(any(v > 0 for v in self.event_weights.values()), "recommend.event_weights",
               "at least one weight must be > 0 (or no event would count)")
        hl = self.half_life_days
        _check(hl is None or (_number(hl) and hl > 0), "recommend.half_life_days", f"must be > 0 or null, got {hl!r}")
        self._nonneg("lift_weight", "lift_prior")


@dataclass(frozen=True)
class OutputConf(Section):
    """lock: one run at a time per output root (a second one fails, or waits lock_wait_s
    seconds). catalog_schema: also name the tables in this catalog schema (e.g. Unity Catalog
    main.seglake); needs the native engine. change_data_feed: Delta's Change Data Feed on
    user_segments, so downstream readers can read only the rows that changed since a version."""

    KEY = "output"
    root: str = "lakehouse"
    engine: str = "auto"
    report: bool = True
    lock: bool = True
    lock_wait_s: float = 0
    catalog_schema: str | None = None
    change_data_feed: bool = False

    def check(self) -> None:
        self._bool("report", "lock", "change_data_feed")
        lw = self.lock_wait_s
        _check(isinstance(lw, (int, float)) and not isinstance(lw, bool) and lw >= 0, "output.lock_wait_s",
               f"must be a number of seconds >= 0, got {lw!r}")
        _check(bool(self.root), "output.root", "is required")
        self._choice("engine", ("auto", "native", "delta-rs"))
        cs = self.catalog_schema
        _check(cs is None or (isinstance(cs, str) and re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)?", cs) is not None),
               "output.catalog_schema", f"must be 'schema' or 'catalog.schema' (letters, digits, _); got {cs!r}")


@dataclass(frozen=True)
class AssignConf(Section):
    """seglake-assign: new texts/events since the last watermark, assigned with a saved model."""

    KEY = "assign"
    texts: Source = _sub(Source)
    events: Source = _sub(Source)
    model_run: str | None = None  # None: the latest succeeded full run
    watermark: bool = True  # skip (quarantine as before_watermark) rows not newer than the last run's
    checkpoint: str | None = None  # streaming: checkpoint location (default <output>/_checkpoints/assign)
    trigger: str = "available-now"  # streaming: available-now, or a processing-time interval like "60 seconds"
    max_files_per_trigger: int | None = None

    def check(self) -> None:
        self.texts.check_at("assign.texts")
        self.events.check_at("assign.events")
        self._bool("watermark")
        self._int("max_files_per_trigger", 1, optional=True)
        trig = self.trigger
        _check(isinstance(trig, str) and (trig == "available-now" or re.fullmatch(r"\d+ (second|minute|hour)s?", trig)),
               "assign.trigger", f"must be 'available-now' or an interval like '60 seconds'; got {trig!r}")


@dataclass(frozen=True)
class TrackingConf(Section):
    """MLflow (jobs/tracking.py): auto tracks when mlflow is installed; true requires it; false: off."""

    KEY = "tracking"
    mlflow: bool | str = "auto"
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, the workspace on Databricks, else <output>/_mlflow (SQLite)
    experiment: str | None = None  # None: $MLFLOW_EXPERIMENT_NAME or "seglake" (Databricks: a workspace path)
    log_model: bool = True  # the fitted MLlib model in MLflow's spark flavour

    def check(self) -> None:
        _check(self.mlflow in ("auto", True, False), "tracking.mlflow",
               f"must be auto, true or false; got {self.mlflow!r}")
        for name in ("uri", "experiment"):
            v = getattr(self, name)
            _check(v is None or (isinstance(v, str) and v), f"tracking.{name}",
                   f"must be a non-empty string or null, got {v!r}")
        self._bool("log_model")


@dataclass(frozen=True)
class DriftConf(Section):
    """Past any of these an assign run sets refit_recommended in the drift table."""

    KEY = "drift"
    max_far_share: float = 0.15
    max_psi: float = 0.25
    max_mean_shift: float = 0.25
    min_users: int = 100

    def check(self) -> None:
        self._nonneg("max_far_share", "max_psi", "max_mean_shift")
        self._int("min_users", 0)


@dataclass(frozen=True)
class FinetuneConf(Section):
    """seglake-finetune (jobs/finetune.py): pairs mined from the input, contrastive training."""

    KEY = "finetune"
    base_model: str | None = None  # the model to start from (null: embed.model_path)
    output: str | None = None  # the new model directory (--out)
    same_user_pairs: bool = True  # two texts of the same user (consecutive by ts)
    category_pairs: bool = True  # a text and the category of the item it is about (needs events)
    pairs_path: str | None = None  # your own pairs: a CSV with columns anchor, positive (training only)
    max_pairs: int = 10000  # training pairs (a random sample of the mined ones)
    min_pairs: int = 200  # fewer training pairs than this stop the job
    eval_share: float = 0.5  # the users held out: none of their texts is trained on
    max_eval_pairs: int = 1000
    epochs: int = 1
    batch_size: int = 32  # pairs per step and process (the in-batch negatives)
    learning_rate: float = 2e-5
    scale: float = 20.0  # the similarity scale of the ranking loss (sentence-transformers' default)
    max_tokens: int = 128
    processes: int = 2  # TorchDistributor processes (local mode: CPU processes; on a cluster: one per GPU)
    eval_every: int = 50  # steps between validations; training stops after `patience` without a gain
    patience: int = 3
    seed: int = 42

    def check(self) -> None:
        self._bool("same_user_pairs", "category_pairs")
        for name in ("max_pairs", "min_pairs", "max_eval_pairs", "epochs", "batch_size", "max_tokens", "processes",
                     "eval_every", "patience"):
            self._int(name, 1)
        self._int("seed", 0)
        _check(_number(self.eval_share) and 0 < self.eval_share < 1, "finetune.eval_share", "must be in (0, 1)")
        self._nonneg("learning_rate", "scale")
        _check(self.same_user_pairs or self.category_pairs or bool(self.pairs_path), "finetune",
               "no kind of pairs is on (same_user_pairs, category_pairs, pairs_path)")


SECTIONS: tuple[type[Section], ...] = (
    SparkConf, InputConf, IngestConf, CleanConf, EmbedConf, UserVectorsConf, LexicalConf, ClusterConf, SegmentIdsConf,
    PrivacyConf, ProfileConf, RecommendConf, OutputConf, AssignConf, TrackingConf, DriftConf, FinetuneConf)
DEFAULTS: dict[str, Any] = {**{cls.KEY: asdict(cls()) for cls in SECTIONS}, "run_id": None}
# Keys whose mapping takes any keys (Spark settings, reader options).
FREE_FORM = ("spark.conf", "input.texts.options", "input.events.options", "assign.texts.options",
             "assign.events.options")


def _merge(base: dict, override: dict, path: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        where = f"{path}{key}"
        if key not in base:
            raise ConfigError(f"unknown config key '{where}' (known: {', '.join(sorted(base))})")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{where}' must be a mapping, got {value!r}")
            if where in FREE_FORM:
                # Any keys (Spark settings, reader options); a later layer adds or replaces keys.
                out[key] = {**out[key], **copy.deepcopy(value)}
            else:
                out[key] = _merge(base[key], value, where + ".")
        else:
            out[key] = copy.deepcopy(value)
    return out


def load(path: str | None = None, overrides: dict | None = None, job: str = "segment") -> dict:
    """Defaults <- YAML file <- overrides (a nested dict, e.g. from flags); validated for
    `job` ('segment' needs input.texts, 'assign' needs assign.texts or assign.events)."""
    conf = copy.deepcopy(DEFAULTS)
    if path:
        if not os.path.exists(path):
            raise ConfigError(f"config file not found: {path}")
        with open(path, encoding="utf-8") as fh:
            try:
                data = yaml.safe_load(fh) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        conf = _merge(conf, data)
    if overrides:
        conf = _merge(conf, overrides)
    validate(conf, job)
    return conf


def validate(conf: dict, job: str = "segment") -> None:
    """Raise ConfigError naming the first invalid key: each section's own checks, then the
    ones across sections."""
    if job == "segment":
        _check(bool(conf["input"]["texts"]["path"]), "input.texts.path", "is required (--texts PATH)")
    for cls in SECTIONS:
        cls.of(conf).check()
    _check(not (conf["cluster"]["per_language"] == "on" and conf["user_vectors"]["language_centring"] == "off"),
           "cluster.per_language", "on needs user_vectors.language_centring auto or on (its languages are the groups)")
    w_lex, w_b = conf["lexical"]["weight"], conf["user_vectors"]["behaviour_weight"]
    _check(w_lex + w_b <= 1, "lexical.weight",
           f"plus user_vectors.behaviour_weight must be <= 1 (the BERT text share is what is left); got {w_lex} + {w_b}")
    rid = conf["run_id"]
    if rid is not None:
        _check(isinstance(rid, str) and re.fullmatch(RUN_ID_PATTERN, rid) is not None,
               "run_id", f"must match [A-Za-z0-9][A-Za-z0-9_.-]* (it names a table partition); got {rid!r}")


def put(tree: dict, key: str, value: Any) -> None:
    """tree["a"]["b"]["c"] = value for key "a.b.c", creating the levels; None is skipped (a
    command-line flag that was not given)."""
    if value is None:
        return
    *parents, last = key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value


def get(conf: dict, key: str) -> Any:
    node = conf
    for part in key.split("."):
        node = node[part]
    return node


def require_catalog_engine(conf: dict, engine: str) -> None:
    """output.catalog_schema names tables through the session's catalog: native Delta only."""
    if conf["output"]["catalog_schema"] and engine != "native":
        raise ConfigError(f"output.catalog_schema ({conf['output']['catalog_schema']}) registers the tables in the "
                          f"session's catalog, which needs native Delta; this session writes with {engine} "
                          "(configure Delta in Spark, or leave catalog_schema unset and read the tables by path)")


def snapshot(conf: dict) -> str:
    """The resolved conf as JSON for the runs table (no secrets are ever kept in conf)."""
    return json.dumps(conf, sort_keys=True, default=str)

