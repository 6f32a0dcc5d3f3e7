"""Result files of the benchmarks: each run appends its section to bench/results/<name>.md."""
from __future__ import annotations

from pathlib import Path


def append_result(out: str | Path, title: str, script: str, lines: list[str]) -> None:
    """Append `lines` as a new section of `out` (created with a title and the producing script
    when missing) and print them."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = f"# {title}\n\nProduced by `bench/{script}` (see its docstring for the method).\n\n"
    previous = out.read_text(encoding="utf-8") if out.exists() else header
    out.write_text(previous.rstrip("\n") + "\n\n" + "\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


def mem_total() -> int:
    """The machine's RAM in bytes (for the results' machine line)."""
    with open("/proc/meminfo", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0
