"""Embedding: encoder behaviour on a tiny model, the Spark UDF, and parity with sentence-transformers."""
from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import functions as F

from jobs.embed import embed_texts
from udfs.embedding import ModelDirError, load_encoder, resolve_model_path

TEXTS = ["great dress fit", "phone battery is bad", "这件连衣裙面料很舒服", "ok", "great dress fit",
         "the movie plot was very good and the actor was great " * 8]


def test_encoder_unit_vectors_order_and_dedupe(tiny_model):
    enc = load_encoder(tiny_model)
    assert load_encoder(tiny_model) is enc  # cached per process
    out = enc.encode(TEXTS, batch_size=2, token_budget=64)
    assert out.shape == (len(TEXTS), 32) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out[0], out[4])
    # Batching (sizes, budgets, order) must not change any vector.
    one_by_one = np.vstack([enc.encode([t])[0] for t in TEXTS])
    np.testing.assert_allclose(out, one_by_one, atol=1e-5)
    assert enc.encode([]).shape == (0, 32)


def test_threaded_tokenisation_matches_the_tokenizer(tiny_model, monkeypatch):
    """Chunks on several threads give exactly the ids of one tokenizer(...) call, in order."""
    import udfs.embedding as emb

    enc = load_encoder(tiny_model, max_tokens=16)
    monkeypatch.setattr(emb, "TOKENIZE_CHUNK", 3)
    texts = [f"{t} {i}" for i, t in enumerate(TEXTS * 5)]
    want = enc.tokenizer(texts, truncation=True, max_length=16, padding=False)["input_ids"]
    assert enc.tokenize(texts, threads=4) == want == enc.tokenize(texts, threads=1)
    np.testing.assert_array_equal(enc.encode(texts, threads=4), enc.encode(texts, threads=1))
    enc.tokenizer(texts, padding=True)  # another use of the tokenizer object must not leak into ours
    assert enc.tokenize(texts, threads=4) == want


def test_max_tokens_truncates(tiny_model):
    enc = load_encoder(tiny_model, max_tokens=8)
    long = "great dress fit " * 20
    np.testing.assert_allclose(enc.encode([long])[0], enc.encode([long + " phone battery bad"])[0], atol=1e-6)


def test_missing_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(ModelDirError, match="model_path .* is not a directory"):
        resolve_model_path(str(tmp_path / "missing"))
    with pytest.raises(ModelDirError, match="hub id"):
        resolve_model_path("bert-base/chinese")
    with pytest.raises(ModelDirError, match="local directory"):
        resolve_model_path("s3://bucket/models/bert")


def test_model_dir_needs_config_tokenizer_and_safetensors(tmp_path, tiny_model):
    import shutil

    d = tmp_path / "m"
    shutil.copytree(tiny_model, d)
    (d / "config.json").rename(d / "config.bak")
    with pytest.raises(ModelDirError, match="lacks config.json"):
        resolve_model_path(str(d))
    (d / "config.bak").rename(d / "config.json")
    for f in ("tokenizer.json", "vocab.txt"):
        (d / f).unlink()
    with pytest.raises(ModelDirError, match="lacks a tokenizer"):
        resolve_model_path(str(d))
    shutil.copy(Path(tiny_model) / "vocab.txt", d / "vocab.txt")
    # Pickle weights only: refused (unpickling can run code), with the way to convert.
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    with pytest.raises(ModelDirError, match="safetensors only"):
        resolve_model_path(str(d))
    (d / "pytorch_model.bin").rename(d / "model.safetensors")
    assert resolve_model_path(str(d)) == str(d)


def test_bad_model_dir_fails_before_spark_starts(tmp_path, capsys, monkeypatch):
    from jobs import cli

    # build_session must never be reached: the check runs right after the conf is loaded.
    monkeypatch.setattr(cli, "build_session", lambda *a, **k: pytest.fail("Spark was started"))
    code = cli.segment_main(["--texts", str(tmp_path), "--model-path", str(tmp_path / "nope")])
    assert code == 2 and "is not a directory" in capsys.readouterr().err


def test_spark_stage_matches_direct_encoding(spark, tiny_model):
    df = spark.createDataFrame([(f"u{i}", t) for i, t in enumerate(TEXTS)], "user_id string, text_clean string")
    for dedupe in (True, False):
        out = embed_texts(df, tiny_model, batch_size=4, partitions=3, dedupe=dedupe).orderBy("user_id").collect()
        assert [r.user_id for r in out] == [f"u{i}" for i in range(len(TEXTS))]
        got = np.array([r.embedding for r in out], dtype=np.float32)
        np.testing.assert_allclose(got, load_encoder(tiny_model).encode(TEXTS), atol=1e-5)


@pytest.mark.slow
def test_parity_with_sentence_transformers_real_model():
    """The packaged all-MiniLM-L6-v2 through our encoder equals sentence-transformers within 1e-5."""
    from sentence_transformers import SentenceTransformer

    texts = TEXTS + ["Battery life on this laptop is amazing, the screen is sharp.",
                     "孩子很喜欢这个玩具", "word " * 400, "Ｆｕｌｌ width ＡＢＣ"]
    path = resolve_model_path(None)
    ours = load_encoder(path).encode(texts, batch_size=3, token_budget=512)
    ref = SentenceTransformer(path, device="cpu").encode(texts, normalize_embeddings=True, batch_size=3)
    assert ours.shape == ref.shape == (len(texts), 384)
    assert np.abs(ours - ref).max() < 1e-5


def test_model_id_follows_content_and_settings(tiny_model, tmp_path):
    import shutil

    from udfs.embedding import model_id

    base = model_id(tiny_model)
    assert base == model_id(tiny_model) and base != model_id(tiny_model, max_tokens=16)
    assert base != model_id(tiny_model, precision="fp16")
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    (copy / "README.md").write_text("docs do not change vectors")
    assert model_id(str(copy)).split("-")[-3] == base.split("-")[-3]  # same content, same id
    cfg = (copy / "config.json").read_text()
    (copy / "config.json").write_text(cfg.replace('"hidden_act"', '"layer_norm_eps": 1e-6, "hidden_act"', 1))
    assert model_id(str(copy)).split("-")[-3] != base.split("-")[-3]  # a new revision, a new id


def test_embed_with_cache_embeds_only_missing(spark, tiny_model):

    from jobs.embed import embed_with_cache

    df = spark.createDataFrame([(t,) for t in TEXTS], "text_clean string")
    hits, new = embed_with_cache(df, None, tiny_model, partitions=2)
    assert hits.count() == 0 and new.count() == len(set(TEXTS))
    cache = new.select("text_hash", "embedding").where(F.col("text_clean") != "ok")
    hits, new = embed_with_cache(df, cache, tiny_model, partitions=2)
    assert [r.text_clean for r in new.collect()] == ["ok"] and hits.count() == len(set(TEXTS)) - 1


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1)


def test_onnx_backend_matches_torch_and_exports_once(tiny_model, tmp_path):
    """fp32 on ONNX Runtime gives the torch vectors; int8 stays close; each export is made once
    per cache and is byte-for-byte reproducible."""
    import json

    torch_vecs = load_encoder(tiny_model).encode(TEXTS)
    fp32 = load_encoder(tiny_model, backend="onnx", precision="fp32", onnx_cache=str(tmp_path / "a"))
    np.testing.assert_allclose(fp32.encode(TEXTS, batch_size=2, token_budget=64), torch_vecs, atol=1e-5)
    int8 = load_encoder(tiny_model, backend="onnx", precision="int8", onnx_cache=str(tmp_path / "a"))
    got = int8.encode(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert _cos(got, torch_vecs).min() > 0.95 and not np.allclose(got, torch_vecs, atol=1e-5)
    np.testing.assert_array_equal(got[0], got[4])  # (one text, embedded once)

    (folder,) = [p for p in (tmp_path / "a").iterdir() if p.is_dir()]
    manifest = json.loads((folder / "export.json").read_text())
    assert sorted(manifest["files"]) == ["model-fp32.onnx", "model-int8.onnx"]
    stamp = (folder / "model-int8.onnx").stat().st_mtime_ns
    from udfs import onnx_export
    from udfs.embedding import content_digest

    digest = content_digest(tiny_model)
    assert onnx_export.onnx_model(tiny_model, digest, "int8", str(tmp_path / "a")) == str(folder / "model-int8.onnx")
    assert (folder / "model-int8.onnx").stat().st_mtime_ns == stamp  # cached: not exported again
    onnx_export.onnx_model(tiny_model, digest, "int8", str(tmp_path / "b"))  # a second, independent export
    again = json.loads(next(p for p in (tmp_path / "b").iterdir() if p.is_dir()).joinpath("export.json").read_text())
    assert again["files"] == manifest["files"]  # the same bytes: the export is reproducible
    assert not list(folder.glob("*.tmp-*"))


def test_onnx_spark_stage_and_model_ids(spark, tiny_model, tmp_path):
    """The job's embed stage on the onnx backend gives the encoder's vectors; the cache key
    (model id) separates backends and precisions, and torch ids read as before."""
    from udfs.embedding import model_id

    df = spark.createDataFrame([(f"u{i}", t) for i, t in enumerate(TEXTS)], "user_id string, text_clean string")
    cache = str(tmp_path / "onnx")
    out = embed_texts(df, tiny_model, batch_size=4, partitions=2, backend="onnx", precision="int8",
                      onnx_cache=cache).orderBy("user_id").collect()
    got = np.array([r.embedding for r in out], dtype=np.float32)
    want = load_encoder(tiny_model, backend="onnx", precision="int8", onnx_cache=cache).encode(TEXTS)
    # int8 quantises each batch's activations with the batch's own range, so a text's vector
    # moves slightly with the texts batched beside it (measured here: <= 1e-4 per component).
    np.testing.assert_allclose(got, want, atol=5e-4)
    assert _cos(got, want).min() > 0.9999
    ids = {model_id(tiny_model), model_id(tiny_model, precision="fp32"),
           model_id(tiny_model, backend="onnx"), model_id(tiny_model, precision="int8", backend="onnx")}
    assert len(ids) == 4 and model_id(tiny_model, backend="onnx") == model_id(tiny_model, precision="fp32", backend="onnx")
    assert model_id(tiny_model).endswith("-auto") and model_id(tiny_model, backend="onnx").endswith("-onnx_fp32")


@pytest.mark.parametrize("embed, message", [
    ({"precision": "int8"}, "int8 needs embed.backend onnx"),
    ({"backend": "onnx", "precision": "bf16"}, "must be auto, fp32 or int8"),
    ({"backend": "onnx", "device": "cuda"}, "runs on the CPU"),
    ({"backend": "tensorrt"}, "embed.backend"),
])
def test_backend_settings_are_checked(embed, message):
    from jobs.config import ConfigError

    from tests.conftest import local_conf

    with pytest.raises(ConfigError, match=message):
        local_conf({"embed": embed})
