#!/usr/bin/env python
"""GPU embedding: parity with CPU and throughput of the job's encoder against a bare loop.

Runs where a CUDA GPU is (no Spark needed: it drives `udfs.embedding.Encoder`, the code the
embed UDF runs in every task). Models are random-weight BERTs with the shapes of
all-MiniLM-L6-v2 (6 layers, hidden 384) and BERT-base (12 layers, hidden 768), built from a
tokenizer directory (the packaged MiniLM's files; weights are not needed for speed).

  1. parity  - the same texts on cuda (fp32 and the auto half precision) vs cpu fp32:
               max abs difference and min cosine of the unit embeddings;
  2. speed   - texts/s and tokens/s (real, unpadded tokens) of Encoder.encode and of a bare
               loop (length-sorted batches, tokenizer(padding=True), model, mean pooling) on
               the same texts, side by side; achieved TFLOP/s counted on real tokens and the
               fraction of the GPU's peak (spec peak and a measured bf16 GEMM).

    python bench/gpu_embed.py --tokenizer DIR [--out bench/results/gpu_embed.md]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

SHAPES = {"MiniLM-L6 (384)": dict(num_hidden_layers=6, hidden_size=384, num_attention_heads=12,
                                  intermediate_size=1536),
          "BERT-base (768)": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12,
                                  intermediate_size=3072)}
SPEC_PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12}  # dense bf16 tensor-core peak, SXM


def make_model(tok_dir: Path, shape: dict, out: Path) -> str:
    from transformers import BertConfig, BertModel

    out.mkdir(parents=True, exist_ok=True)
    for f in tok_dir.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".bin")) and f.name != "config.json":
            shutil.copy(f, out / f.name)
    cfg = BertConfig(vocab_size=30522, max_position_embeddings=512, **shape)
    torch.manual_seed(0)
    BertModel(cfg).eval().save_pretrained(out)
    return str(out)


def make_texts(tok_dir: Path, n: int, words: int, seed: int) -> list[str]:
    vocab = [w for w in (tok_dir / "vocab.txt").read_text(encoding="utf-8").split("\n")
             if w.isalpha() and w.isascii() and len(w) > 2]
    rng = np.random.default_rng(seed)
    lens = rng.integers(int(words * 0.7), int(words * 1.3) + 1, size=n)
    return [" ".join(rng.choice(vocab, size=k)) for k in lens]


def flops_per_token(cfg, seq_len: float) -> float:
    """Forward FLOPs per token: projections 8h^2, FFN 4hi, attention 4Lh, per layer."""
    h, i, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    return layers * (8 * h * h + 4 * h * i + 4 * seq_len * h)


def bare_loop(tok, model, texts: list[str], batch: int) -> np.ndarray:
    """Length-sorted batches, tokenizer padding, model, masked mean pooling: the baseline."""
    order = np.argsort([len(t) for t in texts])
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for s in range(0, len(texts), batch):
            idx = order[s:s + batch]
            enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=256,
                      return_tensors="pt").to("cuda")
            hid = model(**enc).last_hidden_state.float()
            m = enc["attention_mask"].unsqueeze(-1).float()
            v = torch.nn.functional.normalize((hid * m).sum(1) / m.sum(1), dim=1)
            out[idx] = v.cpu().numpy()
    return out


def timed(fn, repeats: int = 2) -> float:
    fn()  # warm-up: kernels, allocator, tokenizer caches
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def gemm_tflops() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * 8192 ** 3 / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", required=True, help="a BERT tokenizer directory (vocab.txt, tokenizer.json)")
    p.add_argument("--n", type=int, default=20000, help="texts per speed run")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "gpu_embed.md"))
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA GPU here", file=sys.stderr)
        return 2
    from udfs.embedding import load_encoder

    tok_dir = Path(args.tokenizer)
    work = Path(tempfile.mkdtemp(prefix="gpu-embed-"))
    gpu = torch.cuda.get_device_name(0)
    spec = next((v for k, v in SPEC_PEAK_BF16.items() if k in gpu), None)
    measured_peak = gemm_tflops()
    lines = [f"## {gpu} ({datetime.now(timezone.utc):%Y-%m-%d})", "",
             f"`python bench/gpu_embed.py` — torch {torch.__version__}, Python {platform.python_version()}, "
             f"{os.cpu_count()} CPU cores. bf16 GEMM 8192³ measured {measured_peak / 1e12:.0f} TFLOP/s"
             + (f"; spec dense bf16 peak {spec / 1e12:.0f} TFLOP/s." if spec else "."), ""]

    # 1. parity on MiniLM-shaped random weights
    mini = make_model(tok_dir, SHAPES["MiniLM-L6 (384)"], work / "mini")
    texts = make_texts(tok_dir, 2000, 20, 1)
    cpu = load_encoder(mini, "cpu", "fp32").encode(texts)
    rows = []
    for prec in ("fp32", "auto"):
        enc = load_encoder(mini, "cuda", prec)
        g = enc.encode(texts, 256, 65536)
        cos = (g * cpu).sum(1)
        rows.append(f"| cuda {prec} ({str(enc.dtype).replace('torch.', '')}) vs cpu fp32 | "
                    f"{np.abs(g - cpu).max():.2e} | {cos.min():.6f} |")
    lines += ["### Parity (2,000 texts, MiniLM shape)", "", "| | max abs diff | min cosine |", "| --- | ---: | ---: |",
              *rows, ""]

    # 2. speed
    lines += ["### Throughput (bf16, length-sorted token-budget batches)", "",
              "| model | texts | words/text | encoder texts/s | tokens/s | TFLOP/s | % spec peak | % GEMM | "
              "bare loop texts/s | encoder / bare | peak GPU mem |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, shape in SHAPES.items():
        path = make_model(tok_dir, shape, work / name.split()[0])
        enc = load_encoder(path, "cuda", "bf16")
        for words, n in ((20, args.n), (100, args.n // 2)):
            texts = make_texts(tok_dir, n, words, 2)
            lens = [len(x) for x in enc.tokenizer(texts, truncation=True, max_length=enc.max_tokens)["input_ids"]]
            tokens, mean_len = float(sum(lens)), float(np.mean(lens))
            torch.cuda.reset_peak_memory_stats()
            t_enc = timed(lambda: enc.encode(texts, 1024, 131072))
            mem = torch.cuda.max_memory_allocated() / 2 ** 30
            t_bare = timed(lambda: bare_loop(enc.tokenizer, enc.model, texts, 512), repeats=1)
            fl = flops_per_token(enc.model.config, mean_len) * tokens / t_enc
            lines.append(
                f"| {name} | {n:,} | {words} (≈{mean_len:.0f} tokens) | {n / t_enc:,.0f} | {tokens / t_enc:,.0f} | "
                f"{fl / 1e12:.1f} | {100 * fl / (spec or float('nan')):.1f} | {100 * fl / measured_peak:.1f} | "
                f"{n / t_bare:,.0f} | {t_bare / t_enc:.2f} | {mem:.1f} GiB |")
            print(lines[-1], flush=True)
    lines.append("")
    text = "\n".join(lines)
    print(text)
    out = Path(os.environ.get("OUT", "")) / "gpu_embed.md" if os.environ.get("OUT") else Path(args.out)
    out.write_text(text + "\n", encoding="utf-8")
    print(json.dumps({"written": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
