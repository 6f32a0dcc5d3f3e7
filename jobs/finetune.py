"""seglake-finetune: the encoder fine-tuned on the platform's own signals.

    seglake-finetune --conf conf/local.yaml --texts T --events E --out models/shop-v1 [--overwrite]
    ./spark-submit.sh --job finetune ...   (the same flags)

1. **Pairs** mined from the input tables with Spark (`mine_pairs`), each kind a conf switch:
   two consecutive texts of the same user (`same_user_pairs`); a text and the category of the
   item it is about, from the events (`category_pairs`); your own (anchor, positive) rows
   (`pairs_path`, training only). The texts are read, validated and cleaned as the jobs do it.
2. **Honest split** (`split_users`): users are hashed into a training and an evaluation part
   (`eval_share`); every pair belongs to its user's part, so no evaluated user's text is
   trained on. A category is a label shared by both parts, not a user's text.
3. **Training** (`train`, in each TorchDistributor process; local mode: `processes` CPU
   processes, on a cluster one per GPU with bf16/fp16 autocast): multiple-negatives ranking
   loss (in-batch negatives, sentence-transformers' MultipleNegativesRankingLoss) on the mean
   pooled, L2-normalised embeddings the jobs use, DDP over the processes. Every `eval_every`
   steps rank 0 measures recall@1 of the evaluation pairs (each anchor against all their
   positives); training stops after `patience` validations without a gain, and the best
   weights are kept (the base model's own score is the first validation).
4. **Output**: a model directory (config, tokenizer, safetensors weights, the base model's
   pooling files, `seglake_finetune.json` and a model card README.md with the data window, the
   pairs, the loss curve and the metrics), written to a temporary directory beside `--out` and
   renamed into place, so a crash leaves no half-written model. Its model id differs from the
   base model's, so the embedding cache never mixes their vectors; the segmentation job uses it
   through `embed.model_path`.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from jobs import config
from jobs.config import FinetuneConf
from jobs.ingest import REASON, InputError

log = logging.getLogger("seglake")
RESULT_FILE = "_seglake_train_result.json"  # rank 0's curve and metrics, read back by the driver
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")


class FinetuneError(InputError):
    """Too little to train on (an input problem: exit 3)."""


def mine_pairs(texts: DataFrame, events: DataFrame | None, *, same_user: bool = True, category: bool = True,
               supplied: DataFrame | None = None) -> DataFrame:
    """user_id, anchor, positive, kind (same_user, category, supplied) from the kept, cleaned
    texts (`text_clean`, `ts`, `item_id`) and events (`item_id`, `category`)."""
    parts = []
    if same_user:
        w = Window.partitionBy("user_id").orderBy(F.col("ts").asc_nulls_last(), "text_clean")
        nxt = texts.select("user_id", "text_clean", F.lead("text_clean").over(w).alias("_next"))
        parts.append(nxt.where(F.col("_next").isNotNull() & (F.col("_next") != F.col("text_clean")))
                     .select("user_id", F.col("text_clean").alias("anchor"), F.col("_next").alias("positive"),
                             F.lit("same_user").alias("kind")))
    if category and events is not None:
        # The item's most frequent category (ties: the first by name).
        counts = events.where(F.col("category").isNotNull() & F.col("item_id").isNotNull()).groupBy(
            "item_id", "category").count()
        top = counts.withColumn("_r", F.row_number().over(
            Window.partitionBy("item_id").orderBy(F.desc("count"), "category"))).where("_r = 1")
        parts.append(texts.where(F.col("item_id").isNotNull()).join(top.select("item_id", "category"), "item_id")
                     .select("user_id", F.col("text_clean").alias("anchor"), F.col("category").alias("positive"),
                             F.lit("category").alias("kind")))
    if supplied is not None:
        parts.append(supplied.select(F.lit(None).cast("string").alias("user_id"), "anchor", "positive",
                                     F.lit("supplied").alias("kind")))
    if not parts:
        raise ValueError("no kind of pairs to mine")
    out = parts[0]
    for p in parts[1:]:
        out = out.unionByName(p)
    return out


def split_users(pairs: DataFrame, eval_share: float, seed: int) -> DataFrame:
    """`part`: train or eval, by a salted hash of the user id (supplied pairs: train)."""
    bucket = F.abs(F.xxhash64(F.lit(str(seed)), F.col("user_id"))) % 10000
    return pairs.withColumn("part", F.when(F.col("user_id").isNull() | (bucket >= int(eval_share * 10000)),
                                           F.lit("train")).otherwise(F.lit("eval")))


@dataclass(frozen=True)
class Mined:
    train: list[dict]
    eval: list[dict]
    kinds: dict[str, int]
    window: tuple[str | None, str | None]
    users: dict[str, int]


def collect_pairs(pairs: DataFrame, texts: DataFrame, fc: FinetuneConf) -> Mined:
    """The training sample (at most max_pairs) and the evaluation pairs on the driver (both
    bounded), with what the model card records."""
    pairs = split_users(pairs, fc.eval_share, fc.seed).persist()
    try:
        kinds = {f"{r['part']}:{r['kind']}": int(r["count"]) for r in pairs.groupBy("part", "kind").count().collect()}
        users = {r["part"]: int(r["n"]) for r in pairs.where(F.col("user_id").isNotNull()).groupBy("part")
                 .agg(F.countDistinct("user_id").alias("n")).collect()}

        def sample(part: str, n: int) -> list[dict]:
            rows = (pairs.where(F.col("part") == part).orderBy(F.rand(fc.seed)).limit(n)
                    .select("anchor", "positive", "kind", "user_id").collect())
            return [r.asDict() for r in rows]

        train, evals = sample("train", fc.max_pairs), sample("eval", fc.max_eval_pairs)
    finally:
        pairs.unpersist()
    row = texts.agg(F.min("ts").alias("a"), F.max("ts").alias("b")).first()
    return Mined(train, evals, kinds, (str(row["a"]) if row["a"] else None, str(row["b"]) if row["b"] else None), users)


def check_output(out: str, overwrite: bool) -> None:
    """An output directory that holds a model is refused unless --overwrite."""
    if os.path.isfile(out):
        raise config.ConfigError(f"--out {out} is a file; it must name a directory for the new model")
    if os.path.isdir(out) and set(os.listdir(out)) & {"config.json", *WEIGHT_FILES} and not overwrite:
        raise config.ConfigError(f"--out {out} already holds a model; pass --overwrite to replace it")


# --------------------------------------------------------------------------------------------
# Training: one function, run by every TorchDistributor process (and directly for one process)
# --------------------------------------------------------------------------------------------


@dataclass
class _Worker:
    """One training process: its rank, device, tokenizer, model (and DDP wrapper), settings."""

    rank: int
    world: int
    device: object
    tok: object
    model: object
    net: object
    amp: object
    settings: dict

    @classmethod
    def start(cls, base_model: str, settings: dict) -> "_Worker":
        import torch
        import torch.distributed as dist
        from transformers import AutoModel, AutoTokenizer

        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        cuda = torch.cuda.is_available() and settings.get("use_gpu", False)
        if world > 1:
            dist.init_process_group("nccl" if cuda else "gloo")
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if cuda else "cpu")
        if not cuda:
            torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
        torch.manual_seed(settings["seed"])
        model = AutoModel.from_pretrained(base_model, use_safetensors=True).to(device)
        # The jobs mean-pool the last hidden states: BERT's pooler gets no gradient (DDP would
        # stop on it) and stays as it was.
        if getattr(model, "pooler", None) is not None:
            model.pooler.requires_grad_(False)
        net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
        return cls(rank, world, device, AutoTokenizer.from_pretrained(base_model), model, net, amp, settings)

    def embed(self, texts: list[str], module=None):
        """(mean-pooled, L2-normalised embeddings, tokens) through `module` (default the DDP net)."""
        import torch

        enc = self.tok(texts, padding=True, truncation=True, max_length=self.settings["max_tokens"],
                       return_tensors="pt").to(self.device)
        with self.amp:
            hidden = (module or self.net)(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled.float(), dim=-1), int(enc["attention_mask"].sum())

    def validate(self, evals) -> dict:
        """recall@1 of each held-out anchor against all held-out positives, and the loss."""
        import torch

        self.model.eval()
        with torch.no_grad():
            a = torch.cat([self.embed(list(evals.anchor[i:i + 64]), self.model)[0] for i in range(0, len(evals), 64)])
            p = torch.cat([self.embed(list(evals.positive[i:i + 64]), self.model)[0] for i in range(0, len(evals), 64)])
        self.model.train()
        sim = a @ p.T
        # Positives may repeat (a category is many anchors' positive): a hit is any equal positive.
        same = torch.tensor((evals.positive.to_numpy()[:, None] == evals.positive.to_numpy()[None, :]))
        hit = same[torch.arange(len(evals)), sim.argmax(1)].float().mean().item()
        loss = torch.nn.functional.cross_entropy(sim * self.settings["scale"], torch.arange(len(evals))).item()
        return {"recall_at_1": hit, "loss": loss}


def train(base_model: str, pairs_file: str, eval_file: str, out_dir: str, settings: dict) -> dict:
    """Contrastive fine-tuning (see the module docstring); rank 0 saves the best weights to
    `out_dir` (and its curve and metrics beside them, RESULT_FILE)."""
    import numpy as np
    import pandas as pd
    import torch
    import torch.distributed as dist

    w = _Worker.start(base_model, settings)
    rank, world, model, device = w.rank, w.world, w.model, w.device
    pairs, evals = pd.read_parquet(pairs_file), pd.read_parquet(eval_file)
    rng = np.random.default_rng(settings["seed"])
    opt = torch.optim.AdamW(model.parameters(), lr=settings["learning_rate"])
    bs, scale = settings["batch_size"], settings["scale"]
    curve, evals_log, best, best_state, stale, step, tokens = [], [], None, None, 0, 0, 0
    started = time.perf_counter()

    def check(at: int) -> bool:
        """Validation on rank 0; True when training should stop (shared with every rank)."""
        nonlocal best, best_state, stale
        stop = torch.zeros(1)
        if rank == 0:
            m = {"step": at, **w.validate(evals)}
            evals_log.append(m)
            if best is None or m["recall_at_1"] > best["recall_at_1"] + 1e-9:
                best, stale = m, 0
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
            stop[0] = float(stale >= settings["patience"])
        if world > 1:
            dist.broadcast(stop, 0)
        return bool(stop[0])

    stopped = check(0)
    for _ in range(settings["epochs"]):
        if stopped:
            break
        # Each process its equal share of one common shuffle: DDP needs the same steps everywhere.
        per = len(pairs) // world
        order = rng.permutation(len(pairs))[rank * per:(rank + 1) * per]
        for i in range(0, per - bs + 1, bs):
            batch = pairs.iloc[order[i:i + bs]]
            both, n_tokens = w.embed(list(batch.anchor) + list(batch.positive))  # (one forward for DDP)
            a, p = both[:len(batch)], both[len(batch):]
            loss = torch.nn.functional.cross_entropy(a @ p.T * scale, torch.arange(len(batch), device=device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step, tokens = step + 1, tokens + n_tokens
            curve.append({"step": step, "loss": float(loss.item())})
            if step % settings["eval_every"] == 0 and check(step):
                stopped = True
                break
    if not stopped:
        check(step)
    seconds = time.perf_counter() - started
    result = {"loss_curve": curve, "validations": evals_log, "best": best, "steps": step, "seconds": seconds,
              "tokens_per_s_per_process": tokens / max(seconds, 1e-9), "processes": world, "device": device.type}
    if rank == 0:
        model.load_state_dict(best_state)
        model.save_pretrained(out_dir, safe_serialization=True)
        w.tok.save_pretrained(out_dir)
        # (which process's return value TorchDistributor hands back is not rank 0's for sure)
        with open(os.path.join(out_dir, RESULT_FILE), "w", encoding="utf-8") as fh:
            json.dump(result, fh)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return result


def run_training(spark: SparkSession, base_model: str, mined: Mined, out_dir: str, fc: FinetuneConf) -> dict:
    """`train` in fc.processes processes through TorchDistributor (local mode), or directly
    for one process."""
    import pandas as pd
    import torch

    use_gpu = torch.cuda.is_available()
    settings = {**{k: getattr(fc, k) for k in ("batch_size", "learning_rate", "scale", "max_tokens", "epochs",
                                               "eval_every", "patience", "seed")}, "use_gpu": use_gpu}
    with tempfile.TemporaryDirectory(prefix="seglake-pairs-") as tmp:
        pairs_file, eval_file = os.path.join(tmp, "train.parquet"), os.path.join(tmp, "eval.parquet")
        pd.DataFrame(mined.train)[["anchor", "positive"]].to_parquet(pairs_file)
        pd.DataFrame(mined.eval)[["anchor", "positive"]].to_parquet(eval_file)
        if fc.processes == 1:
            train(base_model, pairs_file, eval_file, out_dir, settings)
        else:
            from pyspark.ml.torch.distributor import TorchDistributor

            TorchDistributor(num_processes=fc.processes, local_mode=True, use_gpu=use_gpu).run(
                train, base_model, pairs_file, eval_file, out_dir, settings)
    path = os.path.join(out_dir, RESULT_FILE)
    if not os.path.exists(path):
        raise RuntimeError("training ended without saving a model")
    with open(path, encoding="utf-8") as fh:
        result = json.load(fh)
    os.remove(path)
    return result


def write_model(base_model: str, out: str, fc: FinetuneConf, mined: Mined, spark: SparkSession,
                overwrite: bool) -> dict:
    """Train into a temporary directory beside `out`, add the card, and rename it into place."""
    parent = os.path.dirname(os.path.abspath(out)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.tmp-", dir=parent)
    try:
        # The base model's other files (pooling and sentence-transformers settings, which hold
        # the truncation length the jobs read); weights and tokenizer come from the training.
        for name in os.listdir(base_model):
            src = os.path.join(base_model, name)
            if name not in WEIGHT_FILES and not name.lower().startswith("readme"):
                (shutil.copytree if os.path.isdir(src) else shutil.copy2)(src, os.path.join(tmp, name))
        result = run_training(spark, base_model, mined, tmp, fc)
        if not result or not os.path.exists(os.path.join(tmp, "model.safetensors")):
            raise RuntimeError("training ended without saving a model")
        from udfs.embedding import model_id

        meta = {"base_model": base_model, "base_model_id": model_id(base_model),
                "created_at": datetime.now(timezone.utc).isoformat(), "data_window": list(mined.window),
                "pairs": mined.kinds, "users": mined.users, "train_pairs": len(mined.train),
                "eval_pairs": len(mined.eval), "conf": asdict(fc), **result}
        with open(os.path.join(tmp, "seglake_finetune.json"), "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=1, default=str)
        with open(os.path.join(tmp, "README.md"), "w", encoding="utf-8") as fh:
            fh.write(model_card(meta))
        if os.path.exists(out):
            old = f"{out}.replaced-{os.getpid()}"
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
        return meta
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def model_card(meta: dict) -> str:
    """The model card: what it was trained on, how, and how well."""
    first, best = meta["validations"][0], meta["best"]
    curve = meta["loss_curve"]
    every = max(1, len(curve) // 20)
    points = ", ".join(f"{c['step']}: {c['loss']:.3f}" for c in curve[::every])
    return "\n".join([
        "# SegLake fine-tuned encoder", "",
        f"Base model: `{meta['base_model']}` (model id `{meta['base_model_id']}`). Created {meta['created_at']} "
        "by `seglake-finetune`.", "",
        f"- Data window (text timestamps): {meta['data_window'][0]} to {meta['data_window'][1]}",
        f"- Pairs mined (part:kind): {json.dumps(meta['pairs'])}; users {json.dumps(meta['users'])}",
        f"- Trained on {meta['train_pairs']} pairs, evaluated on {meta['eval_pairs']} pairs of held-out users",
        "- Objective: multiple-negatives ranking loss, in-batch negatives, mean pooling, L2 normalised "
        f"(scale {meta['conf']['scale']}, batch {meta['conf']['batch_size']} per process, lr "
        f"{meta['conf']['learning_rate']})",
        f"- {meta['processes']} process(es) on {meta['device']}, {meta['steps']} steps in {meta['seconds']:.0f} s, "
        f"{meta['tokens_per_s_per_process']:.0f} tokens/s per process", "",
        "| validation | step | recall@1 | loss |", "|---|---:|---:|---:|",
        f"| base model | {first['step']} | {first['recall_at_1']:.3f} | {first['loss']:.3f} |",
        f"| kept (best) | {best['step']} | {best['recall_at_1']:.3f} | {best['loss']:.3f} |", "",
        f"Training loss (step: loss): {points}", ""])


def finetune(spark: SparkSession, conf: dict, out: str, overwrite: bool = False) -> dict:
    """The whole job on a session: read, mine, split, train, write. Returns the model's metadata."""
    from jobs.pipeline import read_input
    from udfs.embedding import resolve_model_path

    fc = FinetuneConf.of(conf)
    base = resolve_model_path(fc.base_model or conf["embed"]["model_path"])
    check_output(out, overwrite)
    texts = read_input(spark, conf, "texts").where(F.col(REASON).isNull())
    events = None
    if fc.category_pairs and conf["input"]["events"]["path"]:
        events = read_input(spark, conf, "events").where(F.col(REASON).isNull())
    supplied = None
    if fc.pairs_path:
        supplied = spark.read.option("header", True).csv(fc.pairs_path)
        if not {"anchor", "positive"} <= set(supplied.columns):
            raise FinetuneError(f"finetune.pairs_path {fc.pairs_path} needs columns anchor, positive; "
                                f"found {supplied.columns}")
    pairs = mine_pairs(texts, events, same_user=fc.same_user_pairs, category=fc.category_pairs, supplied=supplied)
    mined = collect_pairs(pairs, texts, fc)
    log.info("finetune: %d training pairs, %d evaluation pairs (%s)", len(mined.train), len(mined.eval), mined.kinds)
    if len(mined.train) < fc.min_pairs:
        raise FinetuneError(f"only {len(mined.train)} training pairs were mined ({mined.kinds}); at least "
                            f"finetune.min_pairs={fc.min_pairs} are needed: more texts per user, events with "
                            f"categories, or finetune.pairs_path")
    if len(mined.eval) < 2:
        raise FinetuneError(f"only {len(mined.eval)} evaluation pairs were mined ({mined.kinds}); the held-out users "
                            f"(finetune.eval_share={fc.eval_share}) need texts too")
    return write_model(base, out, fc, mined, spark, overwrite)


def render(meta: dict, out: str) -> str:
    from udfs.embedding import model_id

    first, best = meta["validations"][0], meta["best"]
    return "\n".join([
        f"seglake-finetune: wrote {out} (model id {model_id(out)}; base {meta['base_model_id']})",
        f"  pairs: {meta['train_pairs']} training, {meta['eval_pairs']} evaluation ({json.dumps(meta['pairs'])})",
        f"  recall@1 on held-out users: {first['recall_at_1']:.3f} (base) -> {best['recall_at_1']:.3f} (step {best['step']})",
        f"  {meta['steps']} steps in {meta['seconds']:.0f} s on {meta['processes']} {meta['device']} process(es), "
        f"{meta['tokens_per_s_per_process']:.0f} tokens/s each",
        f"  use it: embed.model_path: {out}"])
