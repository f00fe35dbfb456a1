"""A process's identity: its pid with the kernel's start time, which tells a live process
from a recycled pid. Every launcher's recovery, the signer and the executor's quick start
use it; stdlib only, since the quick start imports it before its agent starts."""

from __future__ import annotations

from collections.abc import Mapping


def process_start_time(pid: int) -> str | None:
    """The kernel's start time of a pid (field 22 of /proc/<pid>/stat). None when the
    process is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            text = stat.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = text[text.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def execution_alive(marker: Mapping[str, object]) -> bool:
    """Whether the `dispatch exec` that wrote a started marker still runs: its pid, with the
    kernel start time it recorded (a recycled pid has another). A specific pid is checked;
    /proc is never scanned."""
    pid, started = marker.get("pid"), marker.get("pid_start")
    return (
        isinstance(pid, int)
        and pid > 0
        and isinstance(started, str)
        and process_start_time(pid) == started
    )
