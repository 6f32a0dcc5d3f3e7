"""The ONNX Runtime embed backend's models: a BERT directory exported once, fp32 and int8.

The exported graph is the whole sentence encoder: the transformer, masked mean pooling and L2
normalisation (inputs input_ids and attention_mask, output `embedding`), so ONNX Runtime
returns the vectors themselves. int8 is ONNX Runtime's dynamic quantisation of the weight
MatMuls, per output channel (per-tensor scales cost 0.05 of cosine on MiniLM; per-channel
keeps it at ~0.99). The word embeddings stay fp32: they are a lookup, not compute.

Exports are cached on each node's local disk under the model directory's content digest, one
directory per model: `model-fp32.onnx`, `model-int8.onnx` and `export.json` (the versions and
each file's SHA-256). The same model, torch and opset give byte-identical files (tested), so an
export is reproducible. Spark workers that start together take a file lock: one exports, the
others wait and then load the same files. Files are written under a temporary name and
renamed, so a killed export never leaves a half file behind.

Heavy imports (torch, onnx, onnxruntime) stay inside functions.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import warnings
from typing import Iterator

OPSET = 17
PRECISIONS = ("fp32", "int8")
DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "seglake", "onnx")


def cache_root(cache_dir: str | None) -> str:
    """`embed.onnx_cache`, else $SEGLAKE_ONNX_CACHE, else ~/.cache/seglake/onnx."""
    return cache_dir or os.environ.get("SEGLAKE_ONNX_CACHE") or DEFAULT_CACHE


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
    """An exclusive lock on `path` (a lock file) for processes on this node."""
    import fcntl

    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def export_fp32(model_path: str, out: str) -> None:
    """The sentence encoder of `model_path` as one ONNX graph (dynamic batch and length axes)."""
    import torch
    from transformers import AutoModel

    # Eager attention: the traced graph then has plain MatMul/Softmax nodes, which ONNX Runtime
    # fuses and quantises; the vectors equal the torch backend's (SDPA) to 1e-6.
    model = AutoModel.from_pretrained(model_path, local_files_only=True, use_safetensors=True,
                                      trust_remote_code=False, attn_implementation="eager").eval()

    class Pooled(torch.nn.Module):
        def __init__(self, bert: torch.nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    ids = torch.ones((2, 8), dtype=torch.long)
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
            "embedding": {0: "batch"}}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        # The TorchScript exporter (dynamo=False): deterministic bytes, no onnxscript dependency.
        torch.onnx.export(Pooled(model), (ids, torch.ones_like(ids)), out, dynamo=False, opset_version=OPSET,
                          input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                          dynamic_axes=axes, do_constant_folding=True)


def quantize_int8(src: str, out: str) -> None:
    """Dynamic int8 quantisation of the weight MatMuls, per channel (activations quantised per batch)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # its "consider pre-processing" notice, once per export
    try:
        quantize_dynamic(src, out, weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"],
                         extra_options={"MatMulConstBOnly": True})
    finally:
        logging.getLogger().setLevel(level)


def onnx_model(model_path: str, digest: str, precision: str, cache_dir: str | None = None) -> str:
    """The path of `model_path`'s exported model at `precision` (fp32 or int8), exported into the
    node's cache first when it is not there. `digest` is the model directory's content digest."""
    if precision not in PRECISIONS:
        raise ValueError(f"ONNX precision must be one of {PRECISIONS}, got {precision!r}")
    name = os.path.basename(os.path.normpath(model_path)) or "model"
    folder = os.path.join(cache_root(cache_dir), f"{name}-{digest}-opset{OPSET}")
    target = os.path.join(folder, f"model-{precision}.onnx")
    if os.path.exists(target):
        return target
    os.makedirs(folder, exist_ok=True)
    with file_lock(folder + ".lock"):
        if not os.path.exists(target):  # else another worker exported it while this one waited
            fp32 = os.path.join(folder, "model-fp32.onnx")
            if not os.path.exists(fp32):
                _write_atomic(fp32, lambda tmp: export_fp32(model_path, tmp))
            if precision == "int8":
                _write_atomic(target, lambda tmp: quantize_int8(fp32, tmp))
            _write_manifest(folder, model_path, digest)
    return target


def _write_atomic(target: str, write) -> None:
    """`write(tmp)`, then rename tmp to `target`: readers never see a half-written file."""
    tmp = f"{target}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_manifest(folder: str, model_path: str, digest: str) -> None:
    """export.json: what produced the files (to reproduce an export) and their SHA-256."""
    import onnxruntime
    import torch

    files = {f: _sha256(os.path.join(folder, f)) for f in sorted(os.listdir(folder)) if f.endswith(".onnx")}
    meta = {"model_path": model_path, "model_digest": digest, "opset": OPSET, "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "exporter": "torch.onnx.export(dynamo=False)",
            "int8": "quantize_dynamic(QInt8, per_channel, MatMul, MatMulConstBOnly)", "files": files}
    tmp = os.path.join(folder, f"export.json.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=2, sort_keys=True)
    os.replace(tmp, os.path.join(folder, "export.json"))


def open_session(path: str, threads: int):
    """An ONNX Runtime CPU session on `threads` intra-op threads (one inter-op thread: Spark runs
    tasks side by side, each with its share of the cores)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
