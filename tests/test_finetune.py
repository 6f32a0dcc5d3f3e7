"""seglake-finetune: pairs mined right and split without leakage, the loss falls, the output
is a model the jobs accept under another model id, and bad input is refused (tiny model)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from jobs import cli, finetune
from jobs.config import FinetuneConf
from tests.conftest import local_conf
from udfs.embedding import check_model_dir, model_id

TOPICS = {"tech": "phone laptop battery screen camera", "food": "pizza noodles taste recipe food",
          "trip": "hotel flight beach trip", "kids": "baby kids stroller diaper toy"}


def _inputs(tmp: Path, users: int = 40, per_user: int = 4) -> tuple[str, str]:
    """Users of four topics, `per_user` texts each about items of their topic's category."""
    texts, events = ["user_id,text,ts,item_id,lang"], ["user_id,item_id,event_type,rating,category,ts"]
    names = list(TOPICS)
    for u in range(users):
        topic = names[u % len(names)]
        words = TOPICS[topic].split()
        for t in range(per_user):
            item = f"{topic}-{t % 3}"
            # (each user's texts their own: the leakage check below compares texts)
            texts.append(f"u{u},{words[t % len(words)]} {words[(t + u) % len(words)]} good u{u},"
                         f"2026-01-{t + 1:02d}T00:00:00Z,{item},en")
            events.append(f"u{u},{item},purchase,,{topic},2026-01-{t + 1:02d}T00:00:00Z")
    (tmp / "texts.csv").write_text("\n".join(texts) + "\n", encoding="utf-8")
    (tmp / "events.csv").write_text("\n".join(events) + "\n", encoding="utf-8")
    return str(tmp / "texts.csv"), str(tmp / "events.csv")


def _conf(tmp: Path, tiny_model: str, **over) -> dict:
    texts, events = _inputs(tmp)
    return local_conf({"input": {"texts": {"path": texts}, "events": {"path": events}},
                       "embed": {"model_path": tiny_model}}, **over)


def test_pairs_are_mined_and_split_without_leakage(spark, tiny_model, tmp_path):
    from jobs.pipeline import read_input

    conf = _conf(tmp_path, tiny_model)
    texts = read_input(spark, conf, "texts").where("reason is null")
    events = read_input(spark, conf, "events").where("reason is null")
    pairs = finetune.split_users(finetune.mine_pairs(texts, events), 0.5, 42).toPandas()
    same = pairs[pairs.kind == "same_user"]
    # Consecutive texts of one user (4 texts: 3 pairs each, none with itself).
    assert same.groupby("user_id").size().eq(3).all() and (same.anchor != same.positive).all()
    by_user = texts.toPandas().groupby("user_id").text_clean.apply(set)
    assert all({a, p} <= by_user[u] for u, a, p in same[["user_id", "anchor", "positive"]].itertuples(index=False))
    cat = pairs[pairs.kind == "category"]
    assert len(cat) == 160 and set(cat.positive) == set(TOPICS)
    assert all(p.split("-")[0] == p for p in cat.positive)  # (the category, not the item id)
    # Every user is in one part; no evaluated user's text is in a training pair.
    parts = pairs.groupby("user_id").part.nunique()
    assert parts.eq(1).all() and set(pairs.part) == {"train", "eval"}
    eval_texts = set().union(*by_user[pairs[pairs.part == "eval"].user_id.unique()])
    train = pairs[pairs.part == "train"]
    assert not (set(train.anchor) | set(train[train.kind == "same_user"].positive)) & eval_texts


@pytest.fixture(scope="module")
def tuned(spark, tiny_model, tmp_path_factory):
    """One fine-tuning run of the tiny model, two processes through TorchDistributor."""
    tmp = tmp_path_factory.mktemp("finetune")
    conf = _conf(tmp, tiny_model, finetune__learning_rate=1e-3, finetune__epochs=6, finetune__batch_size=8,
                 finetune__eval_every=5, finetune__patience=100, finetune__min_pairs=20, finetune__processes=2)
    out = str(tmp / "tuned")
    meta = finetune.finetune(spark, conf, out)
    return out, meta, conf, tmp


def test_loss_falls_and_the_model_is_one_the_jobs_take(tiny_model, tuned):
    out, meta, _, tmp = tuned
    curve = [c["loss"] for c in meta["loss_curve"]]
    assert len(curve) >= 20 and sum(curve[-5:]) / 5 < 0.8 * sum(curve[:5]) / 5
    assert meta["processes"] == 2 and meta["best"]["recall_at_1"] >= meta["validations"][0]["recall_at_1"]
    check_model_dir(out)  # config, tokenizer, safetensors
    assert os.path.exists(os.path.join(out, "model.safetensors")) and not os.path.exists(os.path.join(out, "pytorch_model.bin"))
    assert model_id(out) != model_id(tiny_model)
    card = Path(out, "README.md").read_text(encoding="utf-8")
    assert "Data window" in card and "recall@1" in card and "Training loss" in card
    saved = json.loads(Path(out, "seglake_finetune.json").read_text(encoding="utf-8"))
    assert saved["train_pairs"] == meta["train_pairs"] > 0 and saved["data_window"][0].startswith("2026-01-01")
    assert not [p for p in os.listdir(tmp) if ".tmp-" in p]  # no temporary directory left


def test_the_segmentation_job_embeds_with_it(spark, tuned):
    from jobs.embed import embed_texts

    out, *_ = tuned
    df = spark.createDataFrame([("a", "phone battery"), ("b", "pizza taste")], "user_id string, text_clean string")
    rows = embed_texts(df, out).collect()
    assert all(len(r.embedding) == 32 for r in rows)


def test_bad_input_is_refused(spark, tiny_model, tuned, tmp_path, capsys, monkeypatch):
    out, _, conf, tmp = tuned
    texts, events = conf["input"]["texts"]["path"], conf["input"]["events"]["path"]
    # An output directory holding a model: refused (exit 2) unless --overwrite.
    rc = cli.finetune_main(["--texts", texts, "--events", events, "--model-path", tiny_model, "--out", out])
    assert rc == 2 and "already holds a model; pass --overwrite" in capsys.readouterr().err
    # A base model without safetensors weights: refused as the jobs refuse it.
    bad = tmp_path / "pickle-model"
    bad.mkdir()
    for name in os.listdir(tiny_model):
        if name != "model.safetensors":
            Path(bad, name).write_bytes(Path(tiny_model, name).read_bytes())
    Path(bad, "pytorch_model.bin").write_bytes(b"not loaded")
    rc = cli.finetune_main(["--texts", texts, "--model-path", str(bad), "--out", str(tmp_path / "o")])
    assert rc == 2 and "safetensors" in capsys.readouterr().err
    # Too few pairs: how many were found, how many are needed (exit 3).
    one = tmp_path / "one.csv"
    one.write_text("user_id,text,ts,item_id,lang\nu1,phone battery,2026-01-01T00:00:00Z,,en\n"
                   "u1,laptop screen,2026-01-02T00:00:00Z,,en\n", encoding="utf-8")
    rc = cli.finetune_main(["--texts", str(one), "--model-path", tiny_model, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 3 and "training pairs were mined" in err and "finetune.min_pairs=200" in err
    # A crash mid-training leaves no model and no half-written directory.
    def boom(*_a, **_k):
        raise RuntimeError("killed mid-training")

    monkeypatch.setattr(finetune, "run_training", boom)
    with pytest.raises(RuntimeError, match="mid-training"):
        finetune.finetune(spark, {**conf, "finetune": {**conf["finetune"], "processes": 1}}, str(tmp_path / "crashed"))
    assert not (tmp_path / "crashed").exists() and not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_conf_checks():
    from jobs import config

    with pytest.raises(config.ConfigError, match="finetune.eval_share"):
        config.load(None, {"input": {"texts": {"path": "t"}}, "finetune": {"eval_share": 1.0}})
    with pytest.raises(config.ConfigError, match="no kind of pairs"):
        config.load(None, {"input": {"texts": {"path": "t"}}, "finetune": {"same_user_pairs": False,
                                                                           "category_pairs": False}})
    assert FinetuneConf().processes == 2
