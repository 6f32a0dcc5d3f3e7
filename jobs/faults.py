"""Fault injection for the fault-tolerance tests; every hook is inert unless a test sets its
environment variable.

- SEGLAKE_TEST_CRASH_AT=<point>:<run id>: at that crash point the driver kills itself with
  SIGKILL (no cleanup, no finally blocks), as a lost driver or a `kill -9` would.
- SEGLAKE_TEST_FAIL_TASKS=<stage>: the first attempt of every even-numbered task of that
  stage raises, as a lost executor or a flaky node would; Spark retries it when
  spark.task.maxFailures > 1 (local mode: master local[N,F]).
"""
from __future__ import annotations

import os
import signal

ENV = "SEGLAKE_TEST_CRASH_AT"


def crash_point(point: str, run_id: str) -> None:
    if os.environ.get(ENV) == f"{point}:{run_id}":
        os.kill(os.getpid(), signal.SIGKILL)


FAIL_ENV = "SEGLAKE_TEST_FAIL_TASKS"


def fail_first_attempt(stage: str) -> None:
    """Raise in the first attempt of even-numbered tasks when the test asks for `stage`."""
    if os.environ.get(FAIL_ENV) != stage:
        return
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is not None and ctx.attemptNumber() == 0 and ctx.partitionId() % 2 == 0:
        raise RuntimeError(f"injected task failure ({stage}, partition {ctx.partitionId()}, attempt 0)")
