"""seglake-maintain: the Delta housekeeping that a lake written by many small commits needs.

Assign runs and streams append small files to the same tables day after day; readers then open
thousands of files. `--optimize` compacts each table's small files (Delta OPTIMIZE: a
dataChange=false commit, readers see the same rows); `--vacuum` deletes files that no version
inside the retention window references any more (time travel to versions older than the
window stops working, so the default is Delta's 7 days and a shorter one needs an explicit
`--allow-short-retention`).

    seglake-maintain --output lakehouse --optimize --vacuum [--retain-hours 168] [--tables a,b]

Both are safe beside a running job: OPTIMIZE only conflicts with a concurrent delete of the
same files (it is then retried once), VACUUM keeps every file of the retention window.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass

from jobs import delta_io, delta_native
from jobs.tables import TABLES

log = logging.getLogger("seglake.maintain")

DEFAULT_RETENTION_HOURS = 168  # Delta's own default (delta.deletedFileRetentionDuration = 7 days)

# Every table the two jobs write under an output root.
TABLE_NAMES = tuple(TABLES)


class MaintainError(ValueError):
    """A usage error (exit code 2)."""


@dataclass(frozen=True)
class TableResult:
    table: str
    files_before: int
    files_after: int
    files_compacted: int  # files removed by OPTIMIZE (replaced by fewer, larger ones)
    files_vacuumed: int  # files deleted from storage by VACUUM


def check_retention(retain_hours: float | None, allow_short: bool) -> None:
    if retain_hours is None:
        return
    if retain_hours < 0:
        raise MaintainError(f"--retain-hours must be >= 0, got {retain_hours}")
    if retain_hours < DEFAULT_RETENTION_HOURS and not allow_short:
        raise MaintainError(
            f"--retain-hours {retain_hours:g} is below Delta's default retention of {DEFAULT_RETENTION_HOURS} hours: "
            "versions older than that could no longer be read, and a writer still working on an older snapshot "
            "could lose files; pass --allow-short-retention to do it anyway")


def _active_files(spark, path: str, engine: str) -> int:
    if engine == "native":
        return int(spark.sql(f"DESCRIBE DETAIL {delta_native.path_sql(path)}").first()["numFiles"])
    from deltalake import DeltaTable

    return len(DeltaTable(delta_io.table_uri(path)).file_uris())


def _optimize(spark, path: str, engine: str) -> int:
    if engine == "native":
        row = spark.sql(f"OPTIMIZE {delta_native.path_sql(path)}").first()
        return int(row["metrics"]["numFilesRemoved"] or 0)
    from deltalake import DeltaTable

    return int(DeltaTable(delta_io.table_uri(path)).optimize.compact()["numFilesRemoved"])


def _vacuum(spark, path: str, engine: str, retain_hours: float | None, allow_short: bool) -> int:
    if engine == "native":
        from delta.tables import DeltaTable

        # VACUUM lists the table in spark.sql.sources.parallelPartitionDiscovery.parallelism tasks
        # (10,000 by default): minutes of empty tasks on a small cluster. A table's folders are
        # its run partitions, so a few tasks per core list them.
        listing = "spark.sql.sources.parallelPartitionDiscovery.parallelism"
        settings = {listing: str(max(8, 4 * spark.sparkContext.defaultParallelism))}
        if allow_short:
            settings["spark.databricks.delta.retentionDurationCheck.enabled"] = "false"
        saved = {k: spark.conf.get(k, None) for k in settings}
        for k, v in settings.items():
            spark.conf.set(k, v)
        try:
            before = _storage_files(path)
            DeltaTable.forPath(spark, path).vacuum(retain_hours)  # None: the table's own retention
            return max(0, before - _storage_files(path))
        finally:
            for k, v in saved.items():
                spark.conf.unset(k) if v is None else spark.conf.set(k, v)
    from deltalake import DeltaTable

    removed = DeltaTable(delta_io.table_uri(path)).vacuum(
        retention_hours=None if retain_hours is None else int(retain_hours), dry_run=False,
        enforce_retention_duration=not allow_short)
    return len(removed)


def _storage_files(path: str) -> int:
    """Data files in storage (not in the log): what VACUUM deletes from."""
    from pyarrow import fs as pafs

    filesystem, root = pafs.FileSystem.from_uri(delta_io.table_uri(path))
    infos = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
    return sum(1 for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet")
               and "/_delta_log/" not in i.path)


def maintain(spark, root: str, *, tables: list[str] | None = None, optimize: bool = True, vacuum: bool = False,
             retain_hours: float | None = None, allow_short_retention: bool = False,
             engine: str = "auto") -> list[TableResult]:
    """OPTIMIZE and/or VACUUM every existing SegLake table under `root` (or the named ones)."""
    check_retention(retain_hours, allow_short_retention)
    names = tables or list(TABLE_NAMES)
    unknown = sorted(set(names) - set(TABLE_NAMES))
    if unknown:
        raise MaintainError(f"unknown tables {unknown}; SegLake's tables are {list(TABLE_NAMES)}")
    engine = delta_io.resolve_engine(spark, engine) if spark is not None else "delta-rs"
    results = []
    for name in names:
        path = f"{root.rstrip('/')}/{name}"
        if not delta_io.table_exists(path):
            continue
        before = _active_files(spark, path, engine)
        compacted = _optimize(spark, path, engine) if optimize else 0
        vacuumed = _vacuum(spark, path, engine, retain_hours, allow_short_retention) if vacuum else 0
        res = TableResult(name, before, _active_files(spark, path, engine), compacted, vacuumed)
        log.info("%s: %d -> %d files (%d compacted, %d deleted by vacuum)", name, res.files_before,
                 res.files_after, res.files_compacted, res.files_vacuumed)
        results.append(res)
    return results


def render(results: list[TableResult]) -> str:
    lines = [f"{'table':<24} {'files before':>12} {'after':>7} {'compacted':>10} {'vacuumed':>9}"]
    lines += [f"{r.table:<24} {r.files_before:>12} {r.files_after:>7} {r.files_compacted:>10} {r.files_vacuumed:>9}"
              for r in results]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="seglake-maintain", description=__doc__.split("\n\n")[0])
    p.add_argument("--output", required=True, help="the output root whose tables to maintain")
    p.add_argument("--tables", help="comma-separated table names (default: every SegLake table that exists)")
    p.add_argument("--optimize", action="store_true", help="compact small files (OPTIMIZE)")
    p.add_argument("--vacuum", action="store_true", help="delete files no version in the retention window needs")
    p.add_argument("--retain-hours", type=float, help=f"VACUUM retention (default: the table's, {DEFAULT_RETENTION_HOURS} h)")
    p.add_argument("--allow-short-retention", action="store_true",
                   help=f"allow --retain-hours below {DEFAULT_RETENTION_HOURS} (breaks time travel past it)")
    p.add_argument("--engine", choices=delta_io.ENGINES, default="auto",
                   help="native (Spark + delta-spark), delta-rs (no Spark), auto (native when its jars are there)")
    p.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    args = p.parse_args(argv)
    from jobs.session import DeltaUnavailable, build_session, setup_logging

    setup_logging(args.log_level)
    if not (args.optimize or args.vacuum):
        print("seglake-maintain: nothing to do: give --optimize and/or --vacuum", file=sys.stderr)
        return 2
    try:
        check_retention(args.retain_hours, args.allow_short_retention)
        spark = None
        if args.engine != "delta-rs":
            spark = build_session({"master": "local[2]", "app_name": "seglake-maintain",
                                   "conf": {"spark.ui.showConsoleProgress": "false"}}, args.engine)
            spark.sparkContext.setLogLevel("ERROR")
            if delta_io.resolve_engine(spark, args.engine) != "native":
                spark = None  # auto without the jars: delta-rs, no Spark needed
        tables = [t.strip() for t in args.tables.split(",") if t.strip()] if args.tables else None
        results = maintain(spark, args.output, tables=tables, optimize=args.optimize, vacuum=args.vacuum,
                           retain_hours=args.retain_hours, allow_short_retention=args.allow_short_retention,
                           engine=args.engine)
    except (MaintainError, DeltaUnavailable) as exc:
        print(f"seglake-maintain: {exc}", file=sys.stderr)
        return 2
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
