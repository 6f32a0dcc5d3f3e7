"""Fault injection for the fault-tolerance tests, installed into jobs/hooks.py; the jobs never
import this module.

In process: `install_from_env()` (or `jobs.hooks.install(...)` with hooks of a test's own).
A job in a subprocess: `python -m tests.fault_hooks segment|assign [flags]` installs the hooks
the environment asks for, then runs the job's command line (jobs/cli.py):

- SEGLAKE_TEST_CRASH_AT=<point>:<run id>: at that crash point the driver kills itself with
  SIGKILL (no cleanup, no finally blocks), as a lost driver or a `kill -9` would.
- SEGLAKE_TEST_FAIL_TASKS=<stage>: the first attempt of every even-numbered task of that
  stage raises, as a lost executor or a flaky node would; Spark retries it when
  spark.task.maxFailures > 1 (local mode: master local[N,F]).
"""
from __future__ import annotations

import os
import signal
import sys

ENV = "SEGLAKE_TEST_CRASH_AT"
FAIL_ENV = "SEGLAKE_TEST_FAIL_TASKS"


def crash_point(point: str, run_id: str) -> None:
    if os.environ.get(ENV) == f"{point}:{run_id}":
        os.kill(os.getpid(), signal.SIGKILL)


def fail_first_attempt_of(stage: str):
    """A task hook that raises in the first attempt of even-numbered tasks of `stage`."""

    def hook(current: str) -> None:
        if current != stage:
            return
        from pyspark import TaskContext

        ctx = TaskContext.get()
        if ctx is not None and ctx.attemptNumber() == 0 and ctx.partitionId() % 2 == 0:
            raise RuntimeError(f"injected task failure ({stage}, partition {ctx.partitionId()}, attempt 0)")

    return hook


def install_from_env() -> None:
    """The hooks the environment asks for, as the process's hooks (jobs/hooks.py)."""
    from pyspark import cloudpickle

    from jobs import hooks

    # The task hook travels to the executors inside the UDF: by value, so that they need not
    # import the tests package.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    stage = os.environ.get(FAIL_ENV)
    hooks.install(hooks.Hooks(crash_point=crash_point, task_hook=fail_first_attempt_of(stage) if stage else None))


if __name__ == "__main__":
    install_from_env()
    from jobs.cli import main

    sys.exit(main(sys.argv[1:]))
