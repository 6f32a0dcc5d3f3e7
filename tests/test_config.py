"""Conf loading, overrides and validation errors."""
import pytest

from jobs import config
from jobs.cli import segment_overrides as overrides_from_args, segment_parser

parse_args = segment_parser().parse_args

BASE = {"input": {"texts": {"path": "t.csv"}}}


def test_profiles_load():
    for name in ("local", "cluster", "cluster-gpu", "databricks"):
        conf = config.load(f"conf/{name}.yaml", {**BASE, "output": {"root": "out"}})
        assert conf["input"]["texts"]["path"] == "t.csv"


def test_flags_override_file():
    args = parse_args(["--texts", "x.json", "--texts-format", "json", "--k", "7", "--algorithm", "bisecting",
                       "--run-id", "r1", "--model-path", "/m", "--output", "o"])
    conf = config.load("conf/local.yaml", overrides_from_args(args))
    assert conf["input"]["texts"] == {"path": "x.json", "format": "json", "options": {}}
    assert conf["cluster"]["k"] == 7 and conf["cluster"]["algorithm"] == "bisecting"
    assert conf["embed"]["model_path"] == "/m" and conf["run_id"] == "r1" and conf["output"]["root"] == "o"
    # Unset flags leave the file's values alone.
    assert conf["input"]["events"]["path"] == "data/sample/events.csv"


def test_free_form_sections_merge_by_key():
    """A layer adds to spark.conf and reader options instead of replacing the profile's."""
    conf = config.load("conf/local.yaml", {**BASE, "spark": {"conf": {"spark.sql.shuffle.partitions": 4,
                                                                        "spark.executor.cores": 1}},
                                           "assign": {"texts": {"options": {"sep": ";"}}}})
    assert conf["spark"]["conf"]["spark.sql.shuffle.partitions"] == 4  # replaced
    assert conf["spark"]["conf"]["spark.driver.memory"] == "4g"  # kept from conf/local.yaml
    assert conf["spark"]["conf"]["spark.executor.cores"] == 1 and conf["assign"]["texts"]["options"] == {"sep": ";"}
    with pytest.raises(config.ConfigError, match="spark.conf"):
        config.load(None, {**BASE, "spark": {"conf": "x"}})


@pytest.mark.parametrize("override, key", [
    ({"cluster": {"k": 1}}, "cluster.k"),
    ({"cluster": {"k": "many"}}, "cluster.k"),
    ({"cluster": {"algorithm": "dbscan"}}, "cluster.algorithm"),
    ({"cluster": {"k_min": 9, "k_max": 3}}, "cluster.k_min"),
    ({"input": {"texts": {"path": "t.csv", "format": "xml"}}}, "input.texts.format"),
    ({"input": {"rating_range": [5, 1]}}, "input.rating_range"),
    ({"input": {"columns": {"texts": {"text": ""}}}}, "input.columns.texts.text"),
    ({"user_vectors": {"behaviour_weight": 1.5}}, "user_vectors.behaviour_weight"),
    ({"embed": {"device": "tpu"}}, "embed.device"),
    ({"run_id": "../etc"}, "run_id"),
    ({"clusterr": {}}, "clusterr"),
    ({"cluster": {"kk": 3}}, "cluster.kk"),
    ({"privacy": {"small_segments": "drop"}}, "privacy.small_segments"),
    ({"privacy": {"key_source": "s3cr3t-key-in-the-conf"}}, "privacy.key_source"),
    ({"privacy": {"min_segment_size": -1}}, "privacy.min_segment_size"),
    ({"privacy": {"pseudonymize_user_ids": "yes"}}, "privacy.pseudonymize_user_ids"),
    ({"output": {"lock_wait_s": -1}}, "output.lock_wait_s"),
    ({"output": {"lock": "on"}}, "output.lock"),
    ({"ingest": {"max_texts_per_user": 0}}, "ingest.max_texts_per_user"),
    ({"ingest": {"dedupe_rows": 1}}, "ingest.dedupe_rows"),
    ({"clean": {"max_chars": "lots"}}, "clean.max_chars"),
    ({"recommend": {"top_n": 0}}, "recommend.top_n"),
    ({"recommend": {"event_weights": {"purchase": -1}}}, "recommend.event_weights.purchase"),
    ({"recommend": {"event_weights": {"like": 1}}}, "recommend.event_weights.like"),  # not an event type
    ({"recommend": {"event_weights": {t: 0 for t in config.EVENT_TYPES}}}, "recommend.event_weights"),
    ({"recommend": {"half_life_days": 0}}, "recommend.half_life_days"),
    ({"recommend": {"lift_weight": float("nan")}}, "recommend.lift_weight"),
    ({"recommend": {"user_table": "yes"}}, "recommend.user_table"),
])
def test_invalid_values_name_the_key(override, key):
    with pytest.raises(config.ConfigError, match=key.replace(".", r"\.")):
        config.load(None, {**BASE, **override} if "input" not in override else
                    {"input": {**BASE["input"], **override["input"]}})


def test_errors_list_the_allowed_values():
    with pytest.raises(config.ConfigError, match="privacy.small_segments: must be one of merge, suppress; got 'drop'"):
        config.load(None, {**BASE, "privacy": {"small_segments": "drop"}})
    with pytest.raises(config.ConfigError, match=r"unknown config key 'privacy\.salt' \(known: key_source, "):
        config.load(None, {**BASE, "privacy": {"salt": "x"}})


def test_texts_path_required():
    with pytest.raises(config.ConfigError, match="input.texts.path"):
        config.load(None, {})


def test_missing_conf_file_and_bad_yaml(tmp_path):
    with pytest.raises(config.ConfigError, match="not found"):
        config.load(str(tmp_path / "nope.yaml"), BASE)
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster: [unclosed")
    with pytest.raises(config.ConfigError, match="not valid YAML"):
        config.load(str(bad), BASE)


def test_bad_k_flag():
    with pytest.raises(config.ConfigError, match="--k"):
        overrides_from_args(parse_args(["--texts", "x", "--k", "ten"]))
