"""One writer per output root: a lock file that a second run started at the same time fails on
(or waits for), so two runs never interleave their commits.

Delta's optimistic concurrency would keep each table consistent on its own, but a SegLake run
writes several tables plus the runs row, and two runs' commits interleaved would leave
user_vectors from one run and user_segments from another. The lock is `<root>/_seglake.lock`:

- local paths (and /dbfs/... FUSE paths): created with O_CREAT | O_EXCL, atomic on POSIX;
- other URIs (s3a://, abfss://, hdfs://, dbfs:): Hadoop FileSystem.create(overwrite=false)
  through the session's JVM; atomic on HDFS and ABFS, best effort on S3 (no atomic
  create-if-absent there: run one scheduler per output root, as Delta's own S3 docs say).

A lock left by a killed run is taken over when its process is provably gone (same host, pid
not alive); otherwise the error names the run, host and pid and the file to delete.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Iterator

from jobs.ingest import is_local_path

log = logging.getLogger("seglake")
LOCK_NAME = "_seglake.lock"
POLL_S = 2.0


class LockError(RuntimeError):
    """The output root is held by another run."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _describe(holder: dict) -> str:
    return (f"run {holder.get('run_id')} ({holder.get('job')}, pid {holder.get('pid')} on host {holder.get('host')} "
            f"since {holder.get('started_at')})")


class _LocalLock:
    def __init__(self, path: str) -> None:
        self.path = path

    def try_create(self, body: bytes) -> bool:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            fh.write(body)
        return True

    def read(self) -> dict | None:
        try:
            with open(self.path, encoding="utf-8") as fh:
                return json.load(fh)
        except FileNotFoundError:
            return None
        except ValueError:  # written half-way by a process killed at that instant
            return {}

    def delete(self) -> None:
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass


class _HadoopLock:
    """The same operations through Hadoop's FileSystem API (object stores, HDFS, DBFS URIs)."""

    def __init__(self, path: str, spark: Any) -> None:
        jvm = spark._jvm
        self.path = jvm.org.apache.hadoop.fs.Path(path)
        self.fs = self.path.getFileSystem(spark._jsc.hadoopConfiguration())

    def try_create(self, body: bytes) -> bool:
        try:
            out = self.fs.create(self.path, False)
        except Exception as exc:  # noqa: BLE001 - py4j wraps FileAlreadyExistsException
            if "FileAlreadyExists" in str(exc) or "already exists" in str(exc):
                return False
            raise
        out.write(bytearray(body))
        out.close()
        return True

    def read(self) -> dict | None:
        if not self.fs.exists(self.path):
            return None
        stream = self.fs.open(self.path)
        try:
            data = bytearray()
            buf = bytearray(65536)
            while True:
                n = stream.read(buf)
                if n is None or n <= 0:
                    break
                data += buf[:n]
        finally:
            stream.close()
        try:
            return json.loads(bytes(data).decode("utf-8"))
        except ValueError:
            return {}

    def delete(self) -> None:
        self.fs.delete(self.path, False)


@contextmanager
def output_lock(root: str, run_id: str, job: str, *, wait_s: float = 0.0, spark: Any = None,
                enabled: bool = True) -> Iterator[None]:
    """Hold `<root>/_seglake.lock` for the block. Another holder: wait up to `wait_s` seconds,
    then raise LockError naming it. A holder on this host whose process is gone is replaced."""
    if not enabled:
        yield
        return
    path = f"{root.rstrip('/')}/{LOCK_NAME}"
    lock = _LocalLock(path) if is_local_path(path) else _HadoopLock(path, spark)
    token = uuid.uuid4().hex
    me = {"run_id": run_id, "job": job, "host": socket.gethostname(), "pid": os.getpid(), "token": token,
          "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    body = json.dumps(me).encode("utf-8")
    deadline = time.monotonic() + max(wait_s, 0.0)
    while not lock.try_create(body):
        holder = lock.read()
        if holder is None:
            continue  # released between our attempt and the read: try again
        if holder.get("host") == me["host"] and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
            log.warning("output root %s: taking over the lock of %s, whose process is gone", root, _describe(holder))
            lock.delete()
            continue
        if time.monotonic() >= deadline:
            raise LockError(
                f"output root {root} is in use by {_describe(holder)}; two runs must not write the same tables at "
                f"once. Wait for it (output.lock_wait_s) or, if that run is dead, delete {path}")
        log.info("output root %s is in use by %s; waiting", root, _describe(holder))
        time.sleep(POLL_S)
    log.info("output root %s: lock taken by run %s", root, run_id)
    try:
        yield
    finally:
        holder = lock.read()
        if holder and holder.get("token") == token:  # never remove a lock that is not ours
            lock.delete()


def job_lock(spark: Any, conf: dict, job: str, run_id: str | None = None):
    """`output_lock` for a job with the conf's output.lock / output.lock_wait_s settings."""
    out = conf["output"]
    return output_lock(out["root"], run_id or conf["run_id"] or "(new)", job, wait_s=out["lock_wait_s"], spark=spark,
                       enabled=out["lock"])
