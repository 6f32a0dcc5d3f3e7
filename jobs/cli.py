"""The CLI layer both jobs share: checks before Spark starts, and user errors as one line on
stderr with their exit code (2 configuration, 3 input, 4 output in use), never a traceback."""
from __future__ import annotations

import os
import sys
from typing import Callable

from jobs import config, delta_io, ingest, privacy, tracking
from jobs.lock import LockError
from udfs.embedding import resolve_model_path


def preflight(conf: dict) -> None:
    """Checks that need no Spark, run before the session starts: the model directory is
    usable and, with pseudonymous ids, the key can be read (a Databricks secret scope is
    read later, on the driver, as it needs the session)."""
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
        return None, 3
    except (LockError, delta_io.DeltaConflict) as exc:  # the output is in use by another writer
        print(f"{prog}: {exc}", file=sys.stderr)
        return None, 4
    except config.ConfigError as exc:  # (the checks that need the session: engine, models' run)
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        return None, 2
