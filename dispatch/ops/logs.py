"""`dispatch logs <id>`: a task's story from the journal (every entry carries
DISPATCH_TASK_ID, the exec unit's agent output included), or its `done/<id>.log`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from dispatch.core.errors import NotFound
from dispatch.core.node import Node
from dispatch.send import results


def _line(entry: dict[str, Any]) -> str:
    stamp = entry.get("__REALTIME_TIMESTAMP")
    when = stamp.isoformat(timespec="seconds") if isinstance(stamp, datetime) else "-"
    source = entry.get("_SYSTEMD_UNIT") or entry.get("SYSLOG_IDENTIFIER") or "dispatch"
    event = entry.get("DISPATCH_EVENT")
    message = entry.get("MESSAGE", "")
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return f"{when} {entry.get('_HOSTNAME', '-')} {source}: " + (
        f"[{event}] {message}" if event else str(message)
    )


def journal_story(
    task_id: str, follow: bool = False, until_done: Node | None = None
) -> Iterator[str] | None:
    """Lines from the journal, or None when there is no journal to read here."""
    try:
        from systemd import journal
    except ImportError:
        return None
    try:
        reader = journal.Reader()
    except OSError:
        return None
    reader.add_match(DISPATCH_TASK_ID=task_id)

    def lines() -> Iterator[str]:
        for entry in reader:
            yield _line(entry)
        while follow:
            if until_done is not None and results.locate(until_done, task_id) is not None:
                # One more read: the exec's last lines land just after its result.
                time.sleep(0.5)
                for entry in reader:
                    yield _line(entry)
                return
            if reader.wait(1.0) != journal.NOP:
                for entry in reader:
                    yield _line(entry)

    return lines()


def file_story(node: Node, task_id: str) -> Iterator[str]:
    lane = results.find_task_lane(node, task_id)
    if lane is None or not lane.log_path(task_id).exists():
        raise NotFound(f"no journal entries and no log file for {task_id}")
    with open(lane.log_path(task_id), "rb") as handle:
        for raw in handle:
            yield raw.decode("utf-8", "replace").rstrip("\n")


def story(node: Node, task_id: str, follow: bool = False) -> Iterator[str]:
    lines = journal_story(task_id, follow, until_done=node)
    if lines is not None:
        first = next(lines, None)
        if first is not None:
            yield first
            yield from lines
            return
    yield from file_story(node, task_id)
