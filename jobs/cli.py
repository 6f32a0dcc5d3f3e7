"""The command line of both jobs: flags, checks before Spark starts, and user errors as one
line on stderr with their exit code (2 configuration, 3 input, 4 output in use), never a
traceback.

    seglake-segment ...            (console script; also `python -m jobs.cli segment ...`)
    seglake-assign ...             (console script; also `python -m jobs.cli assign ...`)
    seglake-finetune ...           (console script; also `python -m jobs.cli finetune ...`)
    spark-submit jobs/cli.py segment|assign|finetune ...   (what spark-submit.sh runs)
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:
    # Run as a file (spark-submit jobs/cli.py): Python put this folder first on sys.path, where
    # config.py / profile modules would shadow top-level ones. Import the package from the repo
    # root (or the --py-files zip) instead.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    sys.path.insert(0, os.path.dirname(_here))

import argparse
import logging
from typing import Callable

from jobs import assign, config, delta_io, ingest, privacy, segment_users, summary, tracking
from jobs.lock import LockError
from jobs.session import LOG_LEVELS, DeltaUnavailable, build_session, setup_logging
from udfs.embedding import resolve_model_path

log = logging.getLogger("seglake")
CONF_ERROR, INPUT_ERROR, OUTPUT_IN_USE = 2, 3, 4


def _shared_flags(p: argparse.ArgumentParser, inputs_help: dict[str, str]) -> None:
    """The flags both jobs take."""
    for name in ("texts", "events"):
        p.add_argument(f"--{name}", help=inputs_help[name])
        p.add_argument(f"--{name}-format", choices=config.FORMATS, help=f"{name} format (default csv)")
    p.add_argument("--model-path", help="local BERT model directory (default: packaged all-MiniLM-L6-v2)")
    p.add_argument("--run-id", help="run id; rerunning with the same id replaces that run's rows")
    p.add_argument("--engine", choices=delta_io.ENGINES, help="Delta writer (default auto)")
    p.add_argument("--catalog-schema", help="also register the tables by name in this catalog schema "
                                            "(e.g. main.seglake; native Delta only)")
    p.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                   help="logging level (default INFO)")


def segment_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seglake-segment",
        description="Segment users by what they write (BERT embeddings) and what they do (events); "
                    "write Delta tables user_segments, segments, quarantine and runs under --output.")
    _shared_flags(p, {"texts": "texts input path (columns user_id, text, optional ts, item_id, lang)",
                      "events": "optional events input path (user_id, item_id, event_type, rating, category, ts)"})
    p.add_argument("--no-events", action="store_true", help="run on texts only, ignoring the conf's events input")
    p.add_argument("--output", help="output root for the Delta tables (default lakehouse)")
    p.add_argument("--conf", help="YAML conf profile (conf/local.yaml, conf/cluster.yaml, conf/databricks.yaml)")
    p.add_argument("--k", help="number of segments, or 'auto' to pick by silhouette over cluster.k_min..k_max")
    p.add_argument("--algorithm", choices=("kmeans", "bisecting", "hdbscan"),
                   help="clustering algorithm (hdbscan: density-based, on a sample)")
    return p


def assign_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seglake-assign",
        description="Assign new and changed users to the segments of a saved model run, incrementally: "
                    "updates user_vectors, MERGEs user_segments, records segment_history, drift and assign_runs.")
    _shared_flags(p, {"texts": "new texts: a file or folder (default assign.texts.path)",
                      "events": "new events: a file or folder (default assign.events.path)"})
    p.add_argument("--conf", help="YAML conf profile (the same as the full job's)")
    p.add_argument("--output", help="output root holding the full job's tables (default lakehouse)")
    p.add_argument("--model-run", help="full run whose model assigns (default: the latest succeeded one)")
    p.add_argument("--no-watermark", action="store_true", help="apply every input row, ignoring the last watermark")
    p.add_argument("--reassign-all", action="store_true", help="re-assign every user in user_vectors (no new input)")
    p.add_argument("--refit-if-drifted", action="store_true",
                   help="when drift passes the drift.* thresholds, run the full job on input.* afterwards")
    p.add_argument("--stream", action="store_true", help="Structured Streaming over the input folders")
    p.add_argument("--checkpoint", help="streaming checkpoint location (default <output>/_checkpoints/assign)")
    p.add_argument("--trigger", help="streaming trigger: available-now (default) or an interval like '60 seconds'")
    p.add_argument("--max-files-per-trigger", type=int, help="streaming: files per micro-batch")
    return p


def flag_overrides(args: argparse.Namespace, section: str) -> dict:
    """The flags both jobs share, as a nested conf override: input paths and formats (under
    `section`: input for the full job, assign for seglake-assign), output root, Delta engine,
    model directory and run id. Flags not given are left out."""
    o: dict = {}
    for name in ("texts", "events"):
        config.put(o, f"{section}.{name}.path", getattr(args, name))
        config.put(o, f"{section}.{name}.format", getattr(args, f"{name}_format"))
    for key, value in (("output.root", args.output), ("output.engine", args.engine),
                       ("output.catalog_schema", args.catalog_schema or None),  # "": not set (bundle default)
                       ("embed.model_path", args.model_path), ("run_id", args.run_id)):
        config.put(o, key, value)
    return o


def segment_overrides(args: argparse.Namespace) -> dict:
    """seglake-segment's flags -> a nested conf override (only the flags that were given)."""
    o = flag_overrides(args, "input")
    if args.no_events:
        o.setdefault("input", {}).setdefault("events", {})["path"] = None
    config.put(o, "cluster.algorithm", args.algorithm)
    if args.k is not None:
        if args.k != "auto" and not args.k.isdigit():
            raise config.ConfigError(f"--k must be an integer or 'auto', got {args.k!r}")
        config.put(o, "cluster.k", "auto" if args.k == "auto" else int(args.k))
    return o


def assign_overrides(args: argparse.Namespace) -> dict:
    """seglake-assign's flags -> a nested conf override (only the flags that were given)."""
    o = flag_overrides(args, "assign")
    for key, value in (("assign.model_run", args.model_run), ("assign.checkpoint", args.checkpoint),
                       ("assign.trigger", args.trigger), ("assign.max_files_per_trigger", args.max_files_per_trigger),
                       ("assign.watermark", False if args.no_watermark else None)):
        config.put(o, key, value)
    return o


def preflight(conf: dict) -> None:
    """Checks that need no Spark, run before the session starts: the model directory is
    usable, the output root is not a file and, with pseudonymous ids, the key can be read (a
    Databricks secret scope is read later, on the driver, as it needs the session)."""
    resolve_model_path(conf["embed"]["model_path"])
    root = conf["output"]["root"]
    if ingest.is_local_path(root) and os.path.exists(root) and not os.path.isdir(root):
        raise config.ConfigError(f"--output / output.root {root} is a file; it must name a folder for the tables")
    tracking.check(conf)
    pv = conf["privacy"]
    if pv["pseudonymize_user_ids"] and pv["key_source"].startswith("env:"):
        privacy.user_id_key(pv["key_source"])


def run_cli(prog: str, job: Callable[[], object]) -> tuple[object, int]:
    """(job's result, 0), or (None, exit code) after one line on stderr for the errors a user
    can act on: input problems (3) and an output root in use by another run (4). Anything
    else is a bug or an infrastructure failure and keeps its traceback."""
    try:
        return job(), 0
    except ingest.InputError as exc:
        print(f"{prog}: input error: {exc}", file=sys.stderr)
        return None, INPUT_ERROR
    except (LockError, delta_io.DeltaConflict) as exc:  # the output is in use by another writer
        print(f"{prog}: {exc}", file=sys.stderr)
        return None, OUTPUT_IN_USE
    except config.ConfigError as exc:  # (the checks that need the session: engine, models' run)
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        return None, CONF_ERROR


def _start(prog: str, load: Callable[[], dict], app_name: str | None = None):
    """(conf, session) or (None, exit code) after a one-line configuration error."""
    try:
        conf = load()
        preflight(conf)
        spark_conf = {**conf["spark"], **({"app_name": app_name} if app_name else {})}
        return conf, build_session(spark_conf, conf["output"]["engine"])
    except (config.ConfigError, ValueError, DeltaUnavailable) as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        return None, CONF_ERROR


def segment_main(argv: list[str] | None = None) -> int:
    args = segment_parser().parse_args(argv)
    setup_logging(args.log_level)
    conf, spark = _start("seglake-segment", lambda: config.load(args.conf, segment_overrides(args)))
    if conf is None:
        return spark
    result, code = run_cli("seglake-segment", lambda: segment_users.run(spark, conf))
    if not code:
        print(summary.render(result))
    return code


def _assign_conf(args: argparse.Namespace) -> dict:
    conf = config.load(args.conf, assign_overrides(args), job="assign")
    if not (args.reassign_all or conf["assign"]["texts"]["path"] or conf["assign"]["events"]["path"]):
        raise config.ConfigError("assign.texts.path: give --texts and/or --events (or --reassign-all)")
    if args.refit_if_drifted and not conf["input"]["texts"]["path"]:
        raise config.ConfigError("input.texts.path: --refit-if-drifted runs the full job, which needs the full "
                                 "history under input.texts (and input.events)")
    return conf


def assign_main(argv: list[str] | None = None) -> int:
    args = assign_parser().parse_args(argv)
    setup_logging(args.log_level)
    conf, spark = _start("seglake-assign", lambda: _assign_conf(args), "seglake-assign")
    if conf is None:
        return spark
    results, code = run_cli("seglake-assign", lambda: assign.run_stream(spark, conf) if args.stream
                            else [assign.run(spark, conf, reassign_all=args.reassign_all)])
    if code:
        return code
    for res in results:
        print(assign.render(res))
    if args.refit_if_drifted and any(r.refit_reasons for r in results):
        log.warning("drift past the thresholds: running the full job on %s", conf["input"]["texts"]["path"])
        result, code = run_cli("seglake-segment", lambda: segment_users.run(spark, {**conf, "run_id": None}))
        if not code:
            print(summary.render(result))
    return code


def finetune_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="seglake-finetune",
        description="Fine-tune the encoder on pairs mined from the input (two texts of a user, a text and its "
                    "item's category, your own pairs): contrastive, distributed with TorchDistributor; writes a "
                    "new model directory for embed.model_path.")
    for name in ("texts", "events"):
        p.add_argument(f"--{name}", help=f"{name} input path (default input.{name}.path)")
        p.add_argument(f"--{name}-format", choices=config.FORMATS, help=f"{name} format (default csv)")
    p.add_argument("--conf", help="YAML conf profile (finetune.* and the inputs)")
    p.add_argument("--model-path", help="the base model directory (default finetune.base_model, else embed.model_path)")
    p.add_argument("--out", help="the new model directory (default finetune.output)")
    p.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    p.add_argument("--max-pairs", type=int, help="training pairs (default finetune.max_pairs)")
    p.add_argument("--epochs", type=int, help="epochs (default finetune.epochs)")
    p.add_argument("--processes", type=int, help="training processes (default finetune.processes)")
    p.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS, help="logging level")
    return p


def finetune_main(argv: list[str] | None = None) -> int:
    from jobs import finetune

    args = finetune_parser().parse_args(argv)
    setup_logging(args.log_level)
    o: dict = {}
    for name in ("texts", "events"):
        config.put(o, f"input.{name}.path", getattr(args, name))
        config.put(o, f"input.{name}.format", getattr(args, f"{name}_format"))
    for key, value in (("finetune.base_model", args.model_path), ("finetune.output", args.out),
                       ("finetune.max_pairs", args.max_pairs), ("finetune.epochs", args.epochs),
                       ("finetune.processes", args.processes)):
        config.put(o, key, value)

    def load() -> dict:
        conf = config.load(args.conf, o)
        fc = config.FinetuneConf.of(conf)
        if not fc.output:
            raise config.ConfigError("--out / finetune.output is required: the directory for the new model")
        resolve_model_path(fc.base_model or conf["embed"]["model_path"])
        finetune.check_output(fc.output, args.overwrite)
        return conf

    try:
        conf = load()
        spark = build_session(conf["spark"], "delta-rs")  # (reads only: no Delta writer needed)
    except (config.ConfigError, ValueError, DeltaUnavailable) as exc:
        print(f"seglake-finetune: configuration error: {exc}", file=sys.stderr)
        return CONF_ERROR
    out = conf["finetune"]["output"]
    meta, code = run_cli("seglake-finetune", lambda: finetune.finetune(spark, conf, out, args.overwrite))
    if not code:
        print(finetune.render(meta, out))
    return code


JOBS = {"segment": segment_main, "assign": assign_main, "finetune": finetune_main}


def main(argv: list[str] | None = None) -> int:
    """`jobs/cli.py segment|assign [flags]`: the job named first (spark-submit.sh runs this)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in JOBS:
        print(f"usage: jobs/cli.py {{{'|'.join(JOBS)}}} [flags]   (--help after the job name)", file=sys.stderr)
        return CONF_ERROR
    return JOBS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
