"""Small helpers shared by the bench scripts: statistics, files, formatting, the machine."""

from __future__ import annotations

import compileall
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any


class BenchError(RuntimeError):
    """A measurement could not be taken (a deadline passed, a host misbehaved)."""


def log(message: str) -> None:
    """Progress goes to stderr, so stdout stays the report."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); q in [0, 100]."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def parse_time(text: str) -> float:
    """An RFC 3339 / ISO 8601 timestamp (either system's `created`) as a Unix time."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue  # a line being appended right now
    return rows


def empty_dir(path: Path, keep: Iterable[str] = ()) -> int:
    """Remove the files directly in `path` (not sub-directories); how many went."""
    kept = set(keep)
    gone = 0
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.name in kept or entry.is_dir(follow_symlinks=False):
            continue
        try:
            os.unlink(entry.path)
            gone += 1
        except FileNotFoundError:
            pass
    return gone


def fmt_seconds(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s"


def ratio(dispatch: float | None, original: float | None) -> float | None:
    if (
        dispatch is None
        or original is None
        or original == 0
        or math.isnan(original)
        or math.isnan(dispatch)
    ):
        return None
    return dispatch / original


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value >= 100:
        return f"{value:.0f}x"
    if value >= 10:
        return f"{value:.1f}x"
    return f"{value:.2f}x"


def _command(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (
        (out.stdout or out.stderr).strip().splitlines()[0]
        if (out.stdout or out.stderr)
        else "unknown"
    )


def machine() -> dict[str, str]:
    mem_kib = 0
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    cpu = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "ram": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python (dispatch, bench)": f"{platform.python_version()} ({sys.executable})",
        "python3 (original)": _command(["/usr/bin/python3", "--version"]),
        "systemd": _command(["systemctl", "--version"]),
    }


def clk_tck() -> int:
    return os.sysconf("SC_CLK_TCK")


def compile_checkout() -> None:
    """Byte-compile the checkout, as a package install does: the units' sandboxes cannot
    write __pycache__, and a module compiled at every start costs its time each start and
    keeps about 1 MiB more resident (measured on dispatch-sensor)."""
    compileall.compile_dir(str(Path(__file__).resolve().parent.parent / "dispatch"), quiet=1)
