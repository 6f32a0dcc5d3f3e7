"""Crash points for the kill-and-restart tests: honoured only when the test sets
SEGLAKE_TEST_CRASH_AT=<point>:<run id>; the driver then kills itself with SIGKILL (no
cleanup, no finally blocks), as a lost driver or a `kill -9` would."""
from __future__ import annotations

import os
import signal

ENV = "SEGLAKE_TEST_CRASH_AT"


def crash_point(point: str, run_id: str) -> None:
    if os.environ.get(ENV) == f"{point}:{run_id}":
        os.kill(os.getpid(), signal.SIGKILL)
