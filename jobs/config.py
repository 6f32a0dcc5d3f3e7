"""Job configuration: defaults, YAML profiles, command-line overrides and validation.

Config is read on the driver only; stages receive plain values. Every key has a default
here, a profile file overrides some, flags override the file. Unknown keys are errors
(a typo must not silently fall back to a default).
"""
from __future__ import annotations

import copy
import json
import os
import re
from typing import Any

import yaml

FORMATS = ("csv", "json", "parquet", "delta", "table")  # table: a catalog table name (Unity Catalog)
EVENT_TYPES = ("view", "click", "cart", "purchase", "rating")
TEXT_COLUMNS = {"required": ("user_id", "text"), "optional": ("ts", "item_id", "lang")}
EVENT_COLUMNS = {"required": ("user_id", "item_id", "event_type"), "optional": ("rating", "category", "ts")}

DEFAULTS: dict[str, Any] = {
    "spark": {
        "master": "local[2]",  # ignored when spark-submit or a cluster already set one
        "app_name": "seglake-segment",
        "conf": {},
    },
    "input": {
        "texts": {"path": None, "format": "csv", "options": {}},
        "events": {"path": None, "format": "csv", "options": {}},
        # logical name -> column name in the file
        "columns": {
            "texts": {c: c for c in TEXT_COLUMNS["required"] + TEXT_COLUMNS["optional"]},
            "events": {c: c for c in EVENT_COLUMNS["required"] + EVENT_COLUMNS["optional"]},
        },
        "timestamp_format": None,  # None: ISO-8601 / Spark's default timestamp parsing
        "rating_range": [1.0, 5.0],
    },
    # Row rules applied after validation (bad rows go to quarantine with the reason).
    "ingest": {
        "dedupe_rows": True,  # identical rows of a user: one is kept, the others are duplicate_row
        "max_texts_per_user": 1000,  # the most recent N texts per user; older ones: over_user_cap
        "max_events_per_user": None,  # None: no cap (events are aggregated, not embedded)
    },
    "clean": {"max_tokens": 256, "max_chars": 100000},
    "embed": {
        "model_path": None,  # None: the packaged all-MiniLM-L6-v2
        "batch_size": 64,
        "token_budget": 8192,
        "max_tokens": None,  # None: the model's max_seq_length
        "device": "auto",
        "precision": "auto",
        "threads_per_task": None,  # None: spark.task.cpus
        "partitions": None,  # None: 2 x default parallelism
        "dedupe": True,
        "cache": True,  # reuse vectors from <output>/text_embeddings for the same model id
    },
    "user_vectors": {
        "pooling": "mean",
        "half_life_days": 30.0,
        "behaviour_weight": 0.3,
        "top_categories": 10,
    },
    "cluster": {
        "algorithm": "kmeans",
        "k": "auto",
        "k_min": 2,
        "k_max": 12,
        "sample_size": 20000,
        "fit_sample_size": 100000,  # the final model is fitted on at most this many users (null: all)
        "seed": 42,
        "max_iter": 40,
        "n_init": 3,  # restarts per fit; the lowest cost wins
        "init_steps": 2,  # k-means|| rounds (MLlib's default; the large-data profiles use 1, see bench/cluster_scale.py)
        "k_tolerance": 0.01,  # k auto: smallest k with silhouette >= best - tolerance
        "stability_seeds": 0,  # >= 2: refit with this many seeds on the sample, report mean pairwise ARI
        "stability_min_ari": 0.8,  # below it the run is flagged unstable
        "distance": "euclidean",
    },
    "privacy": {
        "pseudonymize_user_ids": False,  # replace user ids by HMAC-SHA256 pseudonyms at ingest
        "key_source": "env:SEGLAKE_USER_ID_KEY",  # where the key lives (env:NAME | databricks-secret:SCOPE/KEY)
        "min_segment_size": 0,  # segments with fewer users are merged or have their profiles suppressed
        "small_segments": "merge",  # merge | suppress
    },
    "profile": {"top_terms": 10, "representative_texts": 5, "top_categories": 3, "typical_users": 5, "bigrams": True},
    # Per-segment item rankings from the events (jobs/recommend.py); skipped without events.
    "recommend": {
        "enabled": True,
        "top_n": 50,  # items per segment in segment_recommendations (and per user)
        "event_weights": {"view": 1.0, "click": 2.0, "cart": 4.0, "purchase": 8.0, "rating": 4.0},
        "half_life_days": 90.0,  # time decay of an event's weight (null: none), from the events watermark
        "lift_weight": 0.5,  # 0: popularity inside the segment; 1: what sets the segment apart
        "lift_prior": 20.0,  # pseudo-interactions pulling small segments toward overall shares
        "min_users": 2,  # an item counts for a segment once this many of its users interacted with it
        "reason_terms": 3,  # segment terms its users wrote about the item
        "user_table": False,  # also write user_recommendations (n rows per user: can be large)
    },
    # lock: one run at a time per output root (a second one fails, or waits lock_wait_s seconds).
    # catalog_schema: also name the tables in this catalog schema (e.g. Unity Catalog main.seglake);
    # needs the native engine. change_data_feed: Delta's Change Data Feed on user_segments, so
    # downstream readers can read only the rows that changed since a version.
    "output": {"root": "lakehouse", "engine": "auto", "report": True, "lock": True, "lock_wait_s": 0,
               "catalog_schema": None, "change_data_feed": False},
    # seglake-assign: new texts/events since the last watermark, assigned with a saved model.
    "assign": {
        "texts": {"path": None, "format": "csv", "options": {}},
        "events": {"path": None, "format": "csv", "options": {}},
        "model_run": None,  # None: the latest succeeded full run
        "watermark": True,  # skip (quarantine as before_watermark) rows not newer than the last run's
        "checkpoint": None,  # streaming: checkpoint location (default <output>/_checkpoints/assign)
        "trigger": "available-now",  # streaming: available-now, or a processing-time interval like "60 seconds"
        "max_files_per_trigger": None,
    },
    # MLflow (jobs/tracking.py): auto tracks when mlflow is installed; true requires it; false: off.
    "tracking": {
        "mlflow": "auto",
        "uri": None,  # None: $MLFLOW_TRACKING_URI, the workspace on Databricks, else <output>/_mlflow (SQLite)
        "experiment": None,  # None: $MLFLOW_EXPERIMENT_NAME or "seglake" (Databricks: a workspace path)
        "log_model": True,  # the fitted MLlib model in MLflow's spark flavour
    },
    # Past any of these an assign run sets refit_recommended in the drift table.
    "drift": {"max_far_share": 0.15, "max_psi": 0.25, "max_mean_shift": 0.25, "min_users": 100},
    "run_id": None,
}


FREE_FORM = ("spark.conf", "input.texts.options", "input.events.options", "assign.texts.options",
             "assign.events.options")


class ConfigError(ValueError):
    """A configuration problem, with the offending key in the message."""


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


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and abs(v) != float("inf")


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


def _int(conf: dict, key: str, lo: int, hi: int | None = None) -> None:
    value = get(conf, key)
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= lo and (hi is None or value <= hi)
    _check(ok, key, f"must be an integer >= {lo}" + (f" and <= {hi}" if hi else "") + f", got {value!r}")


def _choice(conf: dict, key: str, choices: tuple) -> None:
    value = get(conf, key)
    _check(value in choices, key, f"must be one of {', '.join(map(str, choices))}; got {value!r}")


def put(tree: dict, key: str, value: Any) -> None:
    """tree["a"]["b"]["c"] = value for key "a.b.c", creating the levels; None is skipped (a
    command-line flag that was not given)."""
    if value is None:
        return
    *parents, last = key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value


def flag_overrides(args: Any, section: str) -> dict:
    """The command-line flags both jobs share, as a nested override: input paths and formats
    (under `section`: input for the full job, assign for seglake-assign), output root,
    Delta engine, model directory and run id. Flags not given are left out."""
    o: dict = {}
    for name in ("texts", "events"):
        put(o, f"{section}.{name}.path", getattr(args, name))
        put(o, f"{section}.{name}.format", getattr(args, f"{name}_format"))
    for key, value in (("output.root", args.output), ("output.engine", args.engine),
                       ("output.catalog_schema", args.catalog_schema or None),  # "": not set (bundle default)
                       ("embed.model_path", args.model_path), ("run_id", args.run_id)):
        put(o, key, value)
    return o


def get(conf: dict, key: str) -> Any:
    node = conf
    for part in key.split("."):
        node = node[part]
    return node


def validate(conf: dict, job: str = "segment") -> None:
    """Raise ConfigError naming the first invalid key."""
    texts = conf["input"]["texts"]
    if job == "segment":
        _check(bool(texts["path"]), "input.texts.path", "is required (--texts PATH)")
    for section in ("input", "assign"):
        for name in ("texts", "events"):
            _choice(conf, f"{section}.{name}.format", FORMATS)
            _check(isinstance(conf[section][name]["options"], dict), f"{section}.{name}.options", "must be a mapping")
    a = conf["assign"]
    _check(isinstance(a["watermark"], bool), "assign.watermark", "must be true or false")
    if a["max_files_per_trigger"] is not None:
        _int(conf, "assign.max_files_per_trigger", 1)
    trig = a["trigger"]
    _check(isinstance(trig, str) and (trig == "available-now" or re.fullmatch(r"\d+ (second|minute|hour)s?", trig)),
           "assign.trigger", f"must be 'available-now' or an interval like '60 seconds'; got {trig!r}")
    for key in ("drift.max_far_share", "drift.max_psi", "drift.max_mean_shift"):
        v = get(conf, key)
        _check(_number(v) and v >= 0, key, f"must be a number >= 0, got {v!r}")
    _int(conf, "drift.min_users", 0)
    for name, spec in (("texts", TEXT_COLUMNS), ("events", EVENT_COLUMNS)):
        mapping = conf["input"]["columns"][name]
        for logical in spec["required"]:
            _check(isinstance(mapping.get(logical), str) and mapping[logical], f"input.columns.{name}.{logical}",
                   "required column needs a non-empty column name")
        for logical, column in mapping.items():
            _check(column is None or isinstance(column, str), f"input.columns.{name}.{logical}",
                   "must be a column name or null")
    lo, hi = (conf["input"]["rating_range"] + [None, None])[:2]
    _check(isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo < hi, "input.rating_range",
           f"must be [min, max] with min < max, got {conf['input']['rating_range']!r}")
    _int(conf, "clean.max_tokens", 1)
    if conf["clean"]["max_chars"] is not None:
        _int(conf, "clean.max_chars", 100)
    _check(isinstance(conf["ingest"]["dedupe_rows"], bool), "ingest.dedupe_rows", "must be true or false")
    for key in ("ingest.max_texts_per_user", "ingest.max_events_per_user"):
        if get(conf, key) is not None:
            _int(conf, key, 1)
    _int(conf, "embed.batch_size", 1)
    _int(conf, "embed.token_budget", 16)
    if conf["embed"]["max_tokens"] is not None:
        _int(conf, "embed.max_tokens", 1, 8192)
    if conf["embed"]["threads_per_task"] is not None:
        _int(conf, "embed.threads_per_task", 1)
    if conf["embed"]["partitions"] is not None:
        _int(conf, "embed.partitions", 1)
    mp = conf["embed"]["model_path"]
    _check(mp is None or isinstance(mp, str), "embed.model_path", "must be a directory path or null")
    _choice(conf, "embed.device", ("auto", "cpu", "cuda"))
    _check(isinstance(conf["embed"]["cache"], bool), "embed.cache", "must be true or false")
    _choice(conf, "embed.precision", ("auto", "fp32", "fp16", "bf16"))
    _choice(conf, "user_vectors.pooling", ("mean", "recency"))
    hl = conf["user_vectors"]["half_life_days"]
    _check(isinstance(hl, (int, float)) and hl > 0, "user_vectors.half_life_days", f"must be > 0, got {hl!r}")
    w = conf["user_vectors"]["behaviour_weight"]
    _check(isinstance(w, (int, float)) and 0 <= w < 1, "user_vectors.behaviour_weight",
           f"must be in [0, 1), got {w!r}")
    _int(conf, "user_vectors.top_categories", 0, 1000)
    _choice(conf, "cluster.algorithm", ("kmeans", "bisecting"))
    _choice(conf, "cluster.distance", ("euclidean", "cosine"))
    k = conf["cluster"]["k"]
    if k != "auto":
        _int(conf, "cluster.k", 2)
    _int(conf, "cluster.k_min", 2)
    _int(conf, "cluster.k_max", 2)
    _check(conf["cluster"]["k_min"] <= conf["cluster"]["k_max"], "cluster.k_min", "must be <= cluster.k_max")
    _int(conf, "cluster.sample_size", 10)
    if conf["cluster"]["fit_sample_size"] is not None:
        _int(conf, "cluster.fit_sample_size", 10)
    _int(conf, "cluster.seed", 0)
    _int(conf, "cluster.max_iter", 1)
    _int(conf, "cluster.n_init", 1, 50)
    _int(conf, "cluster.init_steps", 1, 20)
    _int(conf, "cluster.stability_seeds", 0, 20)
    for key in ("cluster.k_tolerance", "cluster.stability_min_ari"):
        v = get(conf, key)
        _check(_number(v) and 0 <= v <= 1, key,
               f"must be a number in [0, 1], got {v!r}")
    pv = conf["privacy"]
    _check(isinstance(pv["pseudonymize_user_ids"], bool), "privacy.pseudonymize_user_ids", "must be true or false")
    _check(isinstance(pv["key_source"], str) and re.fullmatch(r"env:\w+|databricks-secret:[\w.-]+/[\w.-]+",
                                                               pv["key_source"]) is not None,
           "privacy.key_source", f"must be 'env:NAME' or 'databricks-secret:SCOPE/KEY' (the key itself never "
           f"goes in the conf); got {pv['key_source']!r}")
    _int(conf, "privacy.min_segment_size", 0)
    _choice(conf, "privacy.small_segments", ("merge", "suppress"))
    _int(conf, "profile.top_terms", 1)
    _int(conf, "profile.representative_texts", 0)
    _int(conf, "profile.top_categories", 0)
    _int(conf, "profile.typical_users", 0)
    rc = conf["recommend"]
    for key in ("enabled", "user_table"):
        _check(isinstance(rc[key], bool), f"recommend.{key}", "must be true or false")
    _int(conf, "recommend.top_n", 1, 10000)
    _int(conf, "recommend.min_users", 1)
    _int(conf, "recommend.reason_terms", 0, 100)
    for etype, v in rc["event_weights"].items():
        _check(_number(v) and v >= 0, f"recommend.event_weights.{etype}", f"must be a number >= 0, got {v!r}")
    _check(any(v > 0 for v in rc["event_weights"].values()), "recommend.event_weights",
           "at least one weight must be > 0 (or no event would count)")
    hl = rc["half_life_days"]
    _check(hl is None or (_number(hl) and hl > 0), "recommend.half_life_days", f"must be > 0 or null, got {hl!r}")
    for key in ("lift_weight", "lift_prior"):
        v = rc[key]
        _check(_number(v) and v >= 0, f"recommend.{key}", f"must be a number >= 0, got {v!r}")
    tc = conf["tracking"]
    _check(tc["mlflow"] in ("auto", True, False), "tracking.mlflow", f"must be auto, true or false; got {tc['mlflow']!r}")
    for key in ("uri", "experiment"):
        _check(tc[key] is None or (isinstance(tc[key], str) and tc[key]), f"tracking.{key}",
               f"must be a non-empty string or null, got {tc[key]!r}")
    _check(isinstance(tc["log_model"], bool), "tracking.log_model", "must be true or false")
    _check(isinstance(conf["output"]["report"], bool), "output.report", "must be true or false")
    _check(isinstance(conf["output"]["lock"], bool), "output.lock", "must be true or false")
    _check(isinstance(conf["output"]["change_data_feed"], bool), "output.change_data_feed", "must be true or false")
    lw = conf["output"]["lock_wait_s"]
    _check(isinstance(lw, (int, float)) and not isinstance(lw, bool) and lw >= 0, "output.lock_wait_s",
           f"must be a number of seconds >= 0, got {lw!r}")
    _check(bool(conf["output"]["root"]), "output.root", "is required")
    _choice(conf, "output.engine", ("auto", "native", "delta-rs"))
    cs = conf["output"]["catalog_schema"]
    _check(cs is None or (isinstance(cs, str) and re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)?", cs) is not None),
           "output.catalog_schema", f"must be 'schema' or 'catalog.schema' (letters, digits, _); got {cs!r}")
    rid = conf["run_id"]
    if rid is not None:
        _check(isinstance(rid, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", rid) is not None,
               "run_id", f"must match [A-Za-z0-9][A-Za-z0-9_.-]* (it names a table partition); got {rid!r}")


def require_catalog_engine(conf: dict, engine: str) -> None:
    """output.catalog_schema names tables through the session's catalog: native Delta only."""
    if conf["output"]["catalog_schema"] and engine != "native":
        raise ConfigError(f"output.catalog_schema ({conf['output']['catalog_schema']}) registers the tables in the "
                          f"session's catalog, which needs native Delta; this session writes with {engine} "
                          "(configure Delta in Spark, or leave catalog_schema unset and read the tables by path)")


def snapshot(conf: dict) -> str:
    """The resolved conf as JSON for the runs table (no secrets are ever kept in conf)."""
    return json.dumps(conf, sort_keys=True, default=str)
