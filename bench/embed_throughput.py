#!/usr/bin/env python
"""Embed stage throughput on CPU: the job's Spark path against a bare transformers loop.

Claim under test: on the same cores and the same texts, the job's embed stage
(`jobs.embed.embed_texts`: repartition by text + distinct + the iterator pandas UDF of
`udfs.embedding` + join back) reaches >= 0.9x the texts/s of a plain transformers loop, for
short texts (~25 tokens) and long texts (~200 tokens).

Model: the packaged all-MiniLM-L6-v2 (`udfs.embedding.resolve_model_path(None)`), or --model DIR.
Truncation at `udfs.embedding.model_max_tokens` (256 for MiniLM) on both sides.

Texts: generated from the model's vocab.txt (alphabetic ASCII words of 3+ letters, as
bench/gpu_embed.make_texts), seeded, every text DISTINCT (so the job's dedupe cannot save any
work). Each vocab word is one WordPiece token, so a text of w words is w + 2 tokens
([CLS], [SEP]): short = 23 words +-30 % (~25 tokens), long = 198 words +-30 % (~200 tokens;
the longest are truncated at 256). The mean token count per set is measured with the
tokenizer (after truncation) and reported. Each set is written to one Parquet file under
--work (idx bigint, text_clean string): the job reads files.

Methods, each run in a fresh child process (this script with --point; result as JSON):

  bare  torch.set_num_threads(<all cores>) (2 here = local[2]'s cores); AutoTokenizer /
        AutoModel from the model dir (fp32, eval); the texts read from the Parquet in idx order,
        sorted by character length, batches of 64: tok(batch, padding=True, truncation=True,
        max_length=<max tokens>, return_tensors="pt"), model forward under
        torch.inference_mode, masked mean pooling, L2 normalisation, vectors into a numpy array
        in input order. Model load and one warm-up batch are not timed; the full loop is.
  job   `jobs.session.build_session` with the `spark` section of conf/local.yaml loaded by
        `jobs.config.load` (master local[2], its Arrow batch size etc., worker reuse from
        BASE_CONF) plus spark.ui.showConsoleProgress=false; spark.read.parquet, then
        `jobs.embed.embed_texts(df, model_path, **<conf embed section>)` (batch_size,
        token_budget, max_tokens, device, precision, threads_per_task, partitions, dedupe),
        consumed by an aggregate (count, sum of embedding[0], count of null vectors): nothing
        per text reaches the driver. Untimed first: the session start and a warm-up job (the
        same plan over 128 other texts) that starts the Python workers and loads the model in
        each (worker reuse keeps them), the counterpart of the bare loop's untimed load. Its
        time is reported as "job cold" (first job: worker start + model load + 128 texts). The
        workers (pyspark.daemon's children, found in /proc with bench/embed_memory's Sampler)
        are counted after the warm-up and after the timed job: a worker started during the
        timed job would put a model load into the timing, and is reported.

Noise: every (set, method) runs --repeats times; within a repeat the sets run in turn and the
two methods alternate (bare first in odd repeats, job first in even ones). The table shows
every run and the ratio of the best job run to the best bare run (texts/s); target >= 0.9.
The machine's load average at start and end is recorded: other work on the cores shows
there.

Checks: (1) parity: in the first repeat, the first --parity texts (by idx) of each set: the
bare loop's vectors (from its full timed pass) against the job's (the same `embed_texts` on
the Parquet filtered to idx < --parity, collected), min cosine (expected > 0.999);
(2) every timed job run: rows = texts, no null vector, and its sum of embedding[0] over the
set against the bare loop's (a checksum of the timed output itself).

    python bench/embed_throughput.py [--short 6000] [--long 800] [--model DIR] [--repeats 2]
        [--parity 200] [--seed 7] [--work DIR] [--out bench/results/embed_throughput.md]

Defaults take about 5-8 minutes on 2 cores (bare loop: ~220 short texts/s, ~25 long texts/s).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
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

from results_md import append_result, mem_total  # noqa: E402 - bench/ is on sys.path

import numpy as np  # noqa: E402

SETS = {"short": 25, "long": 200}  # target mean tokens, [CLS] and [SEP] included
SPREAD = 0.3  # words per text vary +-30 %
BARE_BATCH = 64
WARMUP_TEXTS = 128
CONF = REPO / "conf" / "local.yaml"
EMBED_KEYS = ("batch_size", "token_budget", "max_tokens", "device", "precision", "threads_per_task", "partitions",
              "dedupe")


# ---------------------------------------------------------------- data

def vocab_words(model_path: str) -> list[str]:
    return [w for w in (Path(model_path) / "vocab.txt").read_text(encoding="utf-8").split("\n")
            if w.isalpha() and w.isascii() and len(w) > 2]


def make_texts(words: list[str], n: int, tokens: int, seed: int) -> list[str]:
    """n distinct texts of (tokens - 2) words +-SPREAD, seeded."""
    rng = np.random.default_rng(seed)
    mean_words = max(tokens - 2, 1)
    lo, hi = max(int(mean_words * (1 - SPREAD)), 1), int(mean_words * (1 + SPREAD)) + 1
    vocab = np.asarray(words, dtype=object)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        text = " ".join(rng.choice(vocab, size=int(rng.integers(lo, hi))))
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def write_parquet(texts: list[str], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"idx": pa.array(np.arange(len(texts), dtype=np.int64)),
                             "text_clean": pa.array(texts, pa.string())}), path)


def read_texts(path: str) -> list[str]:
    import pyarrow.parquet as pq

    table = pq.read_table(path).sort_by("idx")
    return table.column("text_clean").to_pylist()


def token_lengths(model_path: str, texts: list[str], max_tokens: int) -> np.ndarray:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    ids = tok(texts, truncation=True, max_length=max_tokens)["input_ids"]
    return np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))


def slash(values, spec: str = ".1f") -> str:
    return " / ".join(format(v, spec) for v in values)


# ---------------------------------------------------------------- one point (child process)

def run_bare(args) -> dict:
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    texts = read_texts(args.data)
    t = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(args.model_path, local_files_only=True)
    model = AutoModel.from_pretrained(args.model_path, local_files_only=True, use_safetensors=True).eval()

    def loop(items: list[str]) -> np.ndarray:
        order = np.argsort([len(x) for x in items], kind="stable")
        out = np.zeros((len(items), model.config.hidden_size), dtype=np.float32)
        with torch.inference_mode():
            for s in range(0, len(items), BARE_BATCH):
                idx = order[s:s + BARE_BATCH]
                enc = tok([items[i] for i in idx], padding=True, truncation=True, max_length=args.max_tokens,
                          return_tensors="pt")
                hid = model(**enc).last_hidden_state
                m = enc["attention_mask"].unsqueeze(-1).to(hid.dtype)
                v = (hid * m).sum(1) / m.sum(1).clamp(min=1e-9)
                out[idx] = torch.nn.functional.normalize(v, p=2, dim=1).numpy()
        return out

    loop(texts[:BARE_BATCH])  # warm-up batch (not timed)
    load_s = time.perf_counter() - t
    t = time.perf_counter()
    vecs = loop(texts)
    seconds = time.perf_counter() - t
    if args.parity_out:
        np.save(args.parity_out, vecs[:args.parity])
    return {"seconds": seconds, "load_s": load_s, "rows": len(texts), "nulls": 0,
            "sum0": float(vecs[:, 0].astype(np.float64).sum()), "threads": torch.get_num_threads()}


def _workers() -> set[int]:
    """Pids of the Python workers (pyspark.daemon's children) under this process."""
    from embed_memory import Sampler

    return {pid for pid, (role, _) in Sampler()._roles().items() if role == "worker"}


def run_job(args) -> dict:
    from pyspark.sql import functions as F

    from jobs.config import load
    from jobs.embed import embed_texts
    from jobs.session import build_session

    conf = load(str(CONF))
    spark_conf = dict(conf["spark"])
    spark_conf["app_name"] = "embed-throughput"
    spark_conf["conf"] = {**spark_conf["conf"], "spark.ui.showConsoleProgress": "false"}
    settings = {k: conf["embed"][k] for k in EMBED_KEYS}
    settings.update(getattr(args, "embed_overrides", None) or {})  # (bench/embed_backends.py: backend, precision)
    t = time.perf_counter()
    spark = build_session(spark_conf)
    spark.sparkContext.setLogLevel("ERROR")
    session_s = time.perf_counter() - t

    def job(path: str) -> dict:
        out = embed_texts(spark.read.parquet(path), args.model_path, **settings)
        row = out.agg(F.count(F.lit(1)).alias("rows"),
                      F.sum(F.when(F.col("embedding").isNull(), 1).otherwise(0)).alias("nulls"),
                      F.sum(F.col("embedding")[0].cast("double")).alias("sum0")).first()
        return row.asDict()

    # Warm-up: starts the Python workers and loads the model in each (worker reuse keeps them).
    expected = min(spark.sparkContext.defaultParallelism,
                   settings["partitions"] or 2 * spark.sparkContext.defaultParallelism)
    warmups, cold_s = 0, None
    while True:
        t = time.perf_counter()
        job(args.warmup_data)
        warmups += 1
        cold_s = cold_s if cold_s is not None else time.perf_counter() - t
        warm = _workers()
        if len(warm) >= expected or warmups >= 3:
            break
    t = time.perf_counter()
    stats = job(args.data)
    seconds = time.perf_counter() - t
    after = _workers()
    res = {"seconds": seconds, "session_s": session_s, "cold_s": cold_s, "warmups": warmups,
           "workers_warm": len(warm), "workers_after": len(after), "new_workers": len(after - warm),
           "expected_workers": expected, "master": spark.sparkContext.master,
           "arrow_batch": spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch"),
           "partitions": settings["partitions"] or 2 * spark.sparkContext.defaultParallelism,
           "settings": settings, **stats}
    if args.parity_out:
        df = spark.read.parquet(args.data).where(F.col("idx") < args.parity)
        rows = embed_texts(df, args.model_path, **settings).select("idx", "embedding").collect()
        rows.sort(key=lambda r: r["idx"])
        np.save(args.parity_out, np.asarray([r["embedding"] for r in rows], dtype=np.float32))
    spark.stop()
    return res


# ---------------------------------------------------------------- driver

def spawn(args, method: str, name: str, data: Path, parity_out: Path | None) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        path = fh.name
    cmd = [sys.executable, __file__, "--point", method, "--data", str(data), "--warmup-data",
           str(Path(args.work) / "warmup.parquet"), "--model-path", args.model_path, "--max-tokens",
           str(args.max_tokens), "--threads", str(args.threads), "--parity", str(args.parity), "--json", path]
    if parity_out:
        cmd += ["--parity-out", str(parity_out)]
    print(f"== {name} {method}", flush=True)
    subprocess.run(cmd, check=True)
    res = json.loads(Path(path).read_text(encoding="utf-8"))
    os.unlink(path)
    rate = res["rows"] / res["seconds"]
    print(f"   {res['rows']:,} texts in {res['seconds']:.1f} s: {rate:,.1f} texts/s", flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--short", type=int, default=6000, help="texts in the short set (~25 tokens)")
    p.add_argument("--long", type=int, default=800, help="texts in the long set (~200 tokens)")
    p.add_argument("--model", help="a local BERT model directory (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--parity", type=int, default=200, help="texts per set compared job vs bare")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--work", default=os.path.expanduser("~/.cache/seglake-bench/embed-throughput"))
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "embed_throughput.md"))
    # internal: one measurement in this (child) process
    p.add_argument("--point", choices=("bare", "job"), help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--warmup-data", help=argparse.SUPPRESS)
    p.add_argument("--model-path", help=argparse.SUPPRESS)
    p.add_argument("--max-tokens", type=int, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help=argparse.SUPPRESS)
    p.add_argument("--parity-out", help=argparse.SUPPRESS)
    p.add_argument("--json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.point is not None:
        res = run_bare(args) if args.point == "bare" else run_job(args)
        Path(args.json).write_text(json.dumps(res), encoding="utf-8")
        return 0

    from udfs.embedding import model_max_tokens, resolve_model_path

    t0 = time.perf_counter()
    load_start = os.getloadavg()
    args.model_path = resolve_model_path(args.model)
    args.max_tokens = model_max_tokens(args.model_path)
    work = Path(args.work)
    words = vocab_words(args.model_path)
    sizes = {"short": args.short, "long": args.long}
    data, lens = {}, {}
    for i, (name, tokens) in enumerate(SETS.items()):
        if sizes[name] <= 0:
            continue
        texts = make_texts(words, sizes[name], tokens, args.seed + i)
        data[name] = work / f"{name}.parquet"
        write_parquet(texts, data[name])
        lens[name] = token_lengths(args.model_path, texts, args.max_tokens)
        print(f"{name}: {len(texts):,} distinct texts, {lens[name].mean():.1f} tokens on average "
              f"({lens[name].min()}-{lens[name].max()}) -> {data[name]}", flush=True)
    write_parquet(make_texts(words, WARMUP_TEXTS, SETS["short"], args.seed + 100), work / "warmup.parquet")

    runs: dict[tuple[str, str], list[dict]] = {}
    parity_files: dict[str, dict[str, Path]] = {}
    for rep in range(args.repeats):
        for name in data:
            methods = ("bare", "job") if rep % 2 == 0 else ("job", "bare")
            for method in methods:
                out = None
                if rep == 0 and args.parity > 0:
                    out = work / f"parity-{name}-{method}.npy"
                    parity_files.setdefault(name, {})[method] = out
                runs.setdefault((name, method), []).append(spawn(args, method, f"[{rep + 1}] {name}", data[name], out))
    total = time.perf_counter() - t0
    load_end = os.getloadavg()

    cosines = {}
    for name, files in parity_files.items():
        a, b = np.load(files["bare"]), np.load(files["job"])
        assert a.shape == b.shape, (name, a.shape, b.shape)
        cosines[name] = float((a * b).sum(1).min()) if len(a) else float("nan")

    import pyspark
    import torch
    import transformers

    job0 = runs[(next(iter(data)), "job")][0]
    settings = job0["settings"]
    cmd = " ".join(["python bench/embed_throughput.py",
                    *(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))])
    model_name = os.path.basename(os.path.normpath(args.model_path))
    if model_name == "model":
        model_name = os.path.basename(os.path.dirname(os.path.normpath(args.model_path)))
    lines = [
        f"## {model_name}, short {args.short:,} / long {args.long:,} texts ({datetime.now(timezone.utc):%Y-%m-%d})",
        "",
        f"`{cmd}` — {platform.machine()}, {os.cpu_count()} cores, {mem_total() / 2**30:.1f} GiB RAM, load average "
        f"(1/5/15 min) {'/'.join(f'{x:.1f}' for x in load_start)} at start, "
        f"{'/'.join(f'{x:.1f}' for x in load_end)} at end; Python {platform.python_version()}, pyspark "
        f"{pyspark.__version__}, torch {torch.__version__}, transformers {transformers.__version__}. "
        f"Total {total / 60:.1f} min.",
        "",
        f"bare: one process, torch threads {runs[(next(iter(data)), 'bare')][0]['threads']}, batches of {BARE_BATCH} "
        f"length-sorted texts, tokenizer padding, max {args.max_tokens} tokens, fp32. job: conf/local.yaml "
        f"(master {job0['master']}, Arrow batch {job0['arrow_batch']}, worker reuse on), `embed_texts` with "
        + ", ".join(f"{k}={v}" for k, v in settings.items())
        + f" ({job0['partitions']} tasks). Each run is a fresh process; model load (bare) and session start + "
        f"a {WARMUP_TEXTS}-text warm-up job (job) are not timed. Best of {args.repeats} per method.",
        "",
        "| set | texts | mean tokens | bare texts/s (runs) | job texts/s (runs) | ratio (best/best) "
        "| tokens/s bare / job | target met (≥ 0.9) | min cosine | job cold s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    notes = []
    for name in data:
        bare, job = runs[(name, "bare")], runs[(name, "job")]
        n, tokens = sizes[name], float(lens[name].sum())
        b_rates = [r["rows"] / r["seconds"] for r in bare]
        j_rates = [r["rows"] / r["seconds"] for r in job]
        ratio = max(j_rates) / max(b_rates)
        cos = cosines.get(name, float("nan"))
        lines.append(
            f"| {name} | {n:,} | {lens[name].mean():.1f} | {slash(b_rates, ',.1f')} "
            f"| {slash(j_rates, ',.1f')} | {ratio:.2f} "
            f"| {tokens * max(b_rates) / n:,.0f} / {tokens * max(j_rates) / n:,.0f} | {'yes' if ratio >= 0.9 else 'no'} "
            f"| {cos:.6f} | {slash(r['cold_s'] for r in job)} |")
        for i, r in enumerate(job):
            if r["rows"] != n or r["nulls"]:
                notes.append(f"{name} job run {i + 1}: {r['rows']:,} rows, {r['nulls']} null vectors (expected {n:,}, 0)")
            if r["new_workers"] or r["workers_warm"] < r["expected_workers"]:
                notes.append(f"{name} job run {i + 1}: {r['workers_warm']} Python workers after the warm-up "
                             f"({r['expected_workers']} expected), {r['new_workers']} started during the timed job")
        diffs = [abs(j["sum0"] - b["sum0"]) for j in job for b in bare]
        notes.append(f"{name}: Σ embedding[0] over the set, job vs bare: max |difference| {max(diffs):.2e} "
                     f"(sum ≈ {bare[0]['sum0']:.4f}); token lengths {lens[name].min()}-{lens[name].max()}, "
                     f"{int((lens[name] >= args.max_tokens).sum()):,} at the {args.max_tokens}-token limit.")
    lines += [
        "",
        f"texts/s: texts in the set / seconds of the timed pass (runs in order). Ratio: best job / best bare. "
        f"tokens/s: real (unpadded, truncated) tokens at the best run. Min cosine: the first {args.parity} texts of "
        f"the set, job vectors against bare-loop vectors. Job cold: the first job of each job process (Python "
        f"workers start + model load + {WARMUP_TEXTS} texts; session start not included), not in texts/s. "
        f"Bare load (model + one warm-up batch), s: "
        + "; ".join(f"{name} {slash(r['load_s'] for r in runs[(name, 'bare')])}" for name in data)
        + ". Job session start, s: "
        + "; ".join(f"{name} {slash(r['session_s'] for r in runs[(name, 'job')])}" for name in data)
        + ".",
        "",
        *(f"- {x}" for x in notes),
        "",
    ]
    append_result(args.out, "Embed stage throughput: the job against a bare transformers loop",
                  "embed_throughput.py", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
