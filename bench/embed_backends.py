#!/usr/bin/env python
"""The embed backends on the CPU: ONNX Runtime fp32 and int8 against the bare torch fp32 loop.

Claims under test (issue 21), on the same cores and the same texts:
  * ONNX int8 reaches >= 2.0x the texts/s of the bare torch fp32 loop, with cosine >= 0.99 to
    the torch vectors;
  * ONNX fp32 reaches >= 1.2x;
  * the NMI of the public-data evaluation moves by <= 0.01 (int8 against torch);
and, inside Spark, the job's embed stage on `embed.backend: onnx` against the same bare loop.

Texts: three sets. short (~25 tokens) and long (~200 tokens) are generated from the model's
vocabulary exactly as bench/embed_throughput.py does (distinct texts); real is a seeded sample
of the Women's E-Commerce Clothing Reviews (bench/public_data.py).

Methods, each in a fresh child process on --threads threads (default: all cores):
  torch       bench/embed_throughput.run_bare: length-sorted batches of 64, tokenizer padding,
              AutoModel fp32, masked mean pooling, L2 normalisation.
  onnx-fp32   the same loop (same tokenizer calls, same batches) on an ONNX Runtime session of
  onnx-int8   the job's export (udfs/onnx_export.onnx_model: the encoder with pooling in the graph;
              int8 = dynamic per-channel quantisation). The export is made before the timed loop
              (its time, from an empty cache, is reported once); session creation and one warm-up
              batch are not timed, as the bare loop's model load.
  job-torch   bench/embed_throughput.run_job: `jobs.embed.embed_texts` in Spark (conf/local.yaml)
  job-int8    with embed.backend torch, or onnx + int8; session start and a warm-up job untimed.

Bare methods run --repeats times on every set (order rotated per repeat); the job methods once
on short and long. texts/s are best-of-runs; ratios are against the best torch run of the set.
Cosine: every text's vector against the torch loop's (mean, 1st percentile, min).

NMI: for each --nmi-case (bench/public_data.CASES), every text embedded in this process by the
job's encoder (udfs.embedding.load_encoder) with torch fp32, ONNX fp32 and ONNX int8; per-user
mean, re-normalised; scikit-learn KMeans(k = classes, n_init=10, seed) for --seeds seeds; NMI
and ARI against the labels, the mean over seeds; the difference int8 - torch.

    python bench/embed_backends.py [--short 3000] [--long 400] [--real 1500] [--repeats 2]
        [--nmi-cases clothing-light2 fortunes-light1] [--seeds 3] [--out bench/results/embed_backends.md]

About 15 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from jobs.session import local_env  # noqa: E402 - needs the repo on sys.path

local_env()

import numpy as np  # noqa: E402

import embed_throughput as et  # noqa: E402 - bench/
import public_data  # noqa: E402
from results_md import append_result, mem_total  # noqa: E402

BARE = ("torch", "onnx-fp32", "onnx-int8")
JOBS = {"job-torch": {"backend": "torch", "precision": "auto"},
        "job-int8": {"backend": "onnx", "precision": "int8"}}


def run_onnx(args) -> dict:
    """The bare loop of `et.run_bare` on an ONNX Runtime session of the job's export."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from udfs import onnx_export
    from udfs.embedding import content_digest

    hf_logging.set_verbosity_error()
    precision = args.point.split("-")[1]
    texts = et.read_texts(args.data)
    t = time.perf_counter()
    path = onnx_export.onnx_model(args.model_path, content_digest(args.model_path), precision, args.onnx_cache)
    export_s = time.perf_counter() - t
    tok = AutoTokenizer.from_pretrained(args.model_path, local_files_only=True)
    session = onnx_export.open_session(path, args.threads)

    def loop(items: list[str]) -> np.ndarray:
        order = np.argsort([len(x) for x in items], kind="stable")
        out = None
        for s in range(0, len(items), et.BARE_BATCH):
            idx = order[s:s + et.BARE_BATCH]
            enc = tok([items[i] for i in idx], padding=True, truncation=True, max_length=args.max_tokens,
                      return_tensors="np")
            vecs = session.run(None, {"input_ids": enc["input_ids"].astype(np.int64),
                                      "attention_mask": enc["attention_mask"].astype(np.int64)})[0]
            if out is None:
                out = np.zeros((len(items), vecs.shape[1]), dtype=np.float32)
            out[idx] = vecs
        return out

    loop(texts[:et.BARE_BATCH])
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    vecs = loop(texts)
    seconds = time.perf_counter() - t
    np.save(args.vectors_out, vecs)
    return {"seconds": seconds, "load_s": load_s, "export_s": export_s, "rows": len(texts), "threads": args.threads}


def run_point(args) -> dict:
    if args.point == "torch":
        args.parity_out, args.parity = args.vectors_out, 10 ** 9  # every vector, for the cosines
        return et.run_bare(args)
    if args.point.startswith("onnx-"):
        return run_onnx(args)
    args.embed_overrides = {**JOBS[args.point], "onnx_cache": args.onnx_cache}
    args.parity_out = None
    return et.run_job(args)


def spawn(args, method: str, data: Path, vectors_out: Path) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        path = fh.name
    cmd = [sys.executable, __file__, "--point", method, "--data", str(data), "--warmup-data",
           str(Path(args.work) / "warmup.parquet"), "--model-path", args.model_path, "--max-tokens",
           str(args.max_tokens), "--threads", str(args.threads), "--onnx-cache", args.onnx_cache,
           "--vectors-out", str(vectors_out), "--json", path]
    subprocess.run(cmd, check=True)
    res = json.loads(Path(path).read_text(encoding="utf-8"))
    os.unlink(path)
    print(f"   {method} {data.stem}: {res['rows']:,} texts in {res['seconds']:.1f} s = "
          f"{res['rows'] / res['seconds']:,.1f} texts/s", flush=True)
    return res


def cosines(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    c = (a * b).sum(1)
    return float(c.mean()), float(np.percentile(c, 1)), float(c.min())


def nmi_case(name: str, args, seeds: int) -> dict:
    """NMI / ARI of KMeans on per-user mean vectors from each backend (in this process)."""
    import pandas as pd
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from udfs.embedding import load_encoder

    df = public_data.CASES[name](args.cache)
    truth_by_user = df.drop_duplicates("user_id").set_index("user_id")["label"]
    out = {"users": int(df.user_id.nunique()), "texts": len(df), "classes": int(truth_by_user.nunique())}
    vectors = {}
    for backend, precision in (("torch", "fp32"), ("onnx", "fp32"), ("onnx", "int8")):
        enc = load_encoder(args.model_path, "cpu", precision, backend=backend, threads=args.threads,
                           onnx_cache=args.onnx_cache)
        t = time.perf_counter()
        vecs = enc.encode(df.text.tolist())
        key = f"{backend}-{precision}" if backend == "onnx" else "torch"
        out[f"{key} s"] = time.perf_counter() - t
        vectors[key] = vecs
        frame = pd.DataFrame(np.asarray(vecs, dtype=np.float64), index=df.user_id.to_numpy()).groupby(level=0).mean()
        x = frame.to_numpy()
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        truth = truth_by_user.loc[frame.index].to_numpy()
        nmi, ari = [], []
        for seed in range(seeds):
            pred = KMeans(n_clusters=out["classes"], n_init=10, random_state=seed).fit_predict(x)
            nmi.append(normalized_mutual_info_score(truth, pred))
            ari.append(adjusted_rand_score(truth, pred))
        out[f"{key} nmi"], out[f"{key} ari"] = float(np.mean(nmi)), float(np.mean(ari))
    out["cos int8"] = cosines(vectors["onnx-int8"], vectors["torch"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--short", type=int, default=3000)
    p.add_argument("--long", type=int, default=400)
    p.add_argument("--real", type=int, default=1500, help="clothing reviews in the real set")
    p.add_argument("--model", help="a local BERT model directory (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--nmi-cases", nargs="*", default=["clothing-light2", "fortunes-light1"],
                   choices=sorted(public_data.CASES))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--cache", default=public_data.DEFAULT_CACHE, help="public data download cache")
    p.add_argument("--work", default=os.path.expanduser("~/.cache/seglake-bench/embed-backends"))
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "embed_backends.md"))
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    # internal: one measurement in this (child) process
    p.add_argument("--point", choices=(*BARE, *JOBS), help=argparse.SUPPRESS)
    for name in ("--data", "--warmup-data", "--model-path", "--vectors-out", "--json", "--onnx-cache"):
        p.add_argument(name, help=argparse.SUPPRESS)
    p.add_argument("--max-tokens", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.point is not None:
        Path(args.json).write_text(json.dumps(run_point(args)), encoding="utf-8")
        return 0

    from udfs.embedding import model_max_tokens, resolve_model_path

    t0 = time.perf_counter()
    load_start = os.getloadavg()
    args.model_path = resolve_model_path(args.model)
    args.max_tokens = model_max_tokens(args.model_path)
    work = Path(args.work)
    # A fresh export cache: the first ONNX point's export time is the cold export.
    work.mkdir(parents=True, exist_ok=True)
    args.onnx_cache = tempfile.mkdtemp(prefix="onnx-", dir=str(work))
    words = et.vocab_words(args.model_path)
    texts = {"short": et.make_texts(words, args.short, et.SETS["short"], args.seed),
             "long": et.make_texts(words, args.long, et.SETS["long"], args.seed + 1),
             "real": public_data.clothing(args.cache)["text"].sample(args.real, random_state=args.seed).tolist()}
    data, lens = {}, {}
    for name, items in texts.items():
        data[name] = work / f"{name}.parquet"
        et.write_parquet(items, data[name])
        lens[name] = et.token_lengths(args.model_path, items, args.max_tokens)
        print(f"{name}: {len(items):,} texts, {lens[name].mean():.1f} tokens on average", flush=True)
    et.write_parquet(et.make_texts(words, et.WARMUP_TEXTS, et.SETS["short"], args.seed + 100), work / "warmup.parquet")

    runs: dict[tuple[str, str], list[dict]] = {}
    vec_files: dict[tuple[str, str], Path] = {}
    for rep in range(args.repeats):
        for name in data:
            order = BARE[rep % len(BARE):] + BARE[:rep % len(BARE)]
            for method in order:
                out = work / f"vectors-{name}-{method}.npy"
                vec_files[(name, method)] = out
                runs.setdefault((name, method), []).append(spawn(args, method, data[name], out))
    for name in ("short", "long"):
        for method in JOBS:
            runs[(name, method)] = [spawn(args, method, data[name], work / "unused.npy")]
    nmi = {case: nmi_case(case, args, args.seeds) for case in args.nmi_cases}
    total = time.perf_counter() - t0
    load_end = os.getloadavg()
    write_report(args, argv, runs, vec_files, lens, nmi, total, load_start, load_end)
    shutil.rmtree(args.onnx_cache, ignore_errors=True)  # (~150 MB of exports per run)
    return 0


def write_report(args, argv, runs, vec_files, lens, nmi, total, load_start, load_end) -> None:
    import onnxruntime
    import torch

    cmd = " ".join(["python bench/embed_backends.py",
                    *(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))])
    first = {m: runs[(next(iter(lens)), m)][0]["export_s"] for m in ("onnx-fp32", "onnx-int8")}
    cached = min(r["export_s"] for (_, m), rs in runs.items() if m.startswith("onnx") for r in rs)
    lines = [
        f"## all-MiniLM-L6-v2, {args.threads} threads ({datetime.now(timezone.utc):%Y-%m-%d})", "",
        f"`{cmd}` — {platform.machine()}, {os.cpu_count()} cores, {mem_total() / 2**30:.1f} GiB RAM, load average "
        f"{'/'.join(f'{x:.1f}' for x in load_start)} at start, {'/'.join(f'{x:.1f}' for x in load_end)} at end; "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}. Total {total / 60:.1f} min. "
        f"Export into an empty cache: fp32 {first['onnx-fp32']:.1f} s, int8 (quantising the fp32 export) "
        f"{first['onnx-int8']:.1f} s; found in the cache: {cached:.2f} s.", "",
        "| set | texts | mean tokens | torch texts/s | onnx fp32 texts/s (× torch) | onnx int8 texts/s (× torch) "
        "| job torch (×) | job onnx int8 (×) | fp32 cosine mean / p1 / min | int8 cosine mean / p1 / min |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for name in lens:
        rate = {m: max(r["rows"] / r["seconds"] for r in rs) for (n, m), rs in runs.items() if n == name}
        base = rate["torch"]
        ref = np.load(vec_files[(name, "torch")])
        cos = {m: cosines(np.load(vec_files[(name, m)]), ref) for m in ("onnx-fp32", "onnx-int8")}

        def cell(m: str) -> str:
            return f"{rate[m]:,.1f} ({rate[m] / base:.2f}×)" if m in rate else "–"

        lines.append(f"| {name} | {len(lens[name]):,} | {lens[name].mean():.1f} | {base:,.1f} | {cell('onnx-fp32')} "
                     f"| {cell('onnx-int8')} | {cell('job-torch')} | {cell('job-int8')} "
                     f"| {' / '.join(f'{x:.4f}' for x in cos['onnx-fp32'])} "
                     f"| {' / '.join(f'{x:.4f}' for x in cos['onnx-int8'])} |")
    lines += ["", "texts/s: best of the runs (bare: " + str(args.repeats) + " each; job: 1). Runs, texts/s: "
              + "; ".join(f"{n} {m} " + " / ".join(f"{r['rows'] / r['seconds']:,.1f}" for r in rs)
                          for (n, m), rs in runs.items()) + ".", ""]
    if nmi:
        lines += ["| case | users | texts | k | torch NMI / ARI | onnx fp32 NMI / ARI | onnx int8 NMI / ARI "
                  "| int8 − torch NMI | int8 cosine mean / p1 / min | encode s torch / fp32 / int8 |",
                  "| --- | ---: | ---: | ---: | --- | --- | --- | ---: | --- | --- |"]
        for case, r in nmi.items():
            lines.append(
                f"| {case} | {r['users']:,} | {r['texts']:,} | {r['classes']} | {r['torch nmi']:.4f} / {r['torch ari']:.4f} "
                f"| {r['onnx-fp32 nmi']:.4f} / {r['onnx-fp32 ari']:.4f} | {r['onnx-int8 nmi']:.4f} / "
                f"{r['onnx-int8 ari']:.4f} | {r['onnx-int8 nmi'] - r['torch nmi']:+.4f} "
                f"| {' / '.join(f'{x:.4f}' for x in r['cos int8'])} "
                f"| {r['torch s']:.0f} / {r['onnx-fp32 s']:.0f} / {r['onnx-int8 s']:.0f} |")
        lines += ["", f"NMI / ARI: the mean over {args.seeds} KMeans seeds (n_init=10) on per-user mean vectors.", ""]
    append_result(args.out, "Embed backends on the CPU: ONNX Runtime fp32 / int8 against the torch loop",
                  "embed_backends.py", lines)


if __name__ == "__main__":
    sys.exit(main())
