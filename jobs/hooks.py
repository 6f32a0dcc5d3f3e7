"""Points where a test can inject faults into a run; in production every hook is a no-op.

Production code calls the hooks and never imports test code: a test installs its own with
`install` (in process), or starts a job through a wrapper that installs them first
(tests/fault_hooks.py, for drivers killed in a subprocess).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


def _inert(point: str, run_id: str) -> None:
    """The production crash point: nothing happens."""


@dataclass(frozen=True)
class Hooks:
    """crash_point(point, run_id): called on the driver at each commit boundary of a run.
    task_hook(stage): called at the start of every embed task on the executors (shipped with
    the UDF, so it must pickle)."""

    crash_point: Callable[[str, str], None] = _inert
    task_hook: Callable[[str], None] | None = None


HOOKS = Hooks()


def install(hooks: Hooks) -> Hooks:
    """Make `hooks` the process's hooks for the runs started from now on; returns the old ones."""
    global HOOKS
    old, HOOKS = HOOKS, hooks
    return old


def current() -> Hooks:
    return HOOKS
