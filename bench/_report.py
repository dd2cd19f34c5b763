"""Write one benchmark's results as a section of docs/BENCHMARKS.md, stamped with the machine and the date.

Each bench script owns one section, delimited by HTML comments, and replaces only that section, so scripts can be
re-run independently. Every figure should be shown next to the baseline measured in the same run.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import subprocess
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "BENCHMARKS.md"
HEADER = (
    "# Benchmarks\n\n"
    "Every figure is measured by a script under `bench/` and compared with a baseline measured in the same run on the\n"
    "same machine. Re-run one with `.venv/bin/python bench/bench_NAME.py` (or all with `make bench`); each script\n"
    "rewrites only its own section below.\n"
)


def machine() -> str:
    """One line describing this machine: CPU model, cores, memory, OS, Python."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    try:
        pg = subprocess.run(["uname", "-r"], capture_output=True, text=True).stdout.strip()
    except OSError:
        pg = ""
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB RAM, Linux {pg}, Python {platform.python_version()}"
    )


def reset_peak() -> None:
    """Reset this process's peak RSS (VmHWM) so the next :func:`peak_mib` covers only what follows (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_mib() -> float:
    """This process's peak resident set size in MiB since start or the last :func:`reset_peak`."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_section(name: str, title: str, body: str) -> Path:
    """Replace (or append) the section ``name`` of docs/BENCHMARKS.md with ``body`` under ``title``."""
    DOC.parent.mkdir(parents=True, exist_ok=True)
    text = DOC.read_text() if DOC.exists() else HEADER
    stamp = f"_Measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on: {machine()}._"
    section = f"<!-- bench:{name} -->\n## {title}\n\n{stamp}\n\n{body.strip()}\n<!-- /bench:{name} -->"
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    DOC.write_text(text)
    return DOC


def md_table(headers: list[str], rows: list[list[object]]) -> str:
    """A Markdown table; floats printed with thousands separators."""

    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:,.2f}" if abs(v) < 100 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)
