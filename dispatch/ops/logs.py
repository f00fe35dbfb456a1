"""`dispatch logs <id>`. On the receiver: the task's story from the journal (every entry
carries DISPATCH_TASK_ID, the exec unit's agent output included), else its `done/<id>.log`.
On the sender, which has no journal of the run: the agent's output as the execution writes
it to `done/<id>.log` on the share, followed (`-f`) until the verified result arrives, then
its status line.

The log is the agent's output, capped by the receiver; it is read from the share as bytes
to show, never as anything to act on (no symlink followed, no FIFO opened to block on)."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from dispatch.core.errors import NotFound, Rejection
from dispatch.core.inotify import DirWatcher
from dispatch.core.model import Result
from dispatch.core.node import Node
from dispatch.core.spool import Lane
from dispatch.send import results

CHUNK = 1 << 20


def read_from(path: os.PathLike[str], offset: int, limit: int = CHUNK) -> bytes:
    """Up to `limit` bytes of a file on the share from `offset` (b"" once there is no
    more). FileNotFoundError while there is no such file yet."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Rejection("not_regular", f"{path} is not a regular file")
        return os.pread(fd, limit, offset)
    finally:
        os.close(fd)


def last_line(path: os.PathLike[str], window: int = 4096) -> str:
    """The last non-empty line of a file on the share (its last `window` bytes)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Rejection("not_regular", f"{path} is not a regular file")
        data = os.pread(fd, window, max(0, info.st_size - window))
    finally:
        os.close(fd)
    lines = [line for line in data.split(b"\n") if line.strip()]
    return lines[-1].decode("utf-8", "replace") if lines else ""


def status_line(result: Result) -> str:
    reason = f": {result.reason}" if result.reason else ""
    return (
        f"-- {result.id} ended {result.status.value} after {result.elapsed_s:.1f}s on "
        f"{result.answered_by} (exit {result.exit_code}){reason}"
    )


def share_log(node: Node, lane: Lane, task_id: str, follow: bool) -> Iterator[str]:
    """The agent's output from the share, line by line; with `follow`, until the result."""
    log, offset, partial = lane.log_path(task_id), 0, b""
    with DirWatcher([lane.done]) as watcher:
        while True:
            # Whether the result is there is read before the log: once it is, the log the
            # execution wrote before publishing it is whole.
            finished = lane.result_path(task_id).exists()
            while True:
                try:
                    data = read_from(log, offset)
                except FileNotFoundError:
                    data = b""
                if not data:
                    break
                offset += len(data)
                *lines, partial = (partial + data).split(b"\n")
                for raw in lines:
                    yield raw.decode("utf-8", "replace")
            if finished or not follow:
                break
            watcher.wait(min(node.cfg.poll_sec, 1.0))
    if partial:
        yield partial.decode("utf-8", "replace")
    if finished:
        yield status_line(results.read_bound(node, lane, task_id))
    elif offset == 0:
        yield f"-- no output yet from {task_id} (stage: {lane.stage_of(task_id).value})"


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
    lane = results.find_task_lane(node, task_id)
    if lane is not None and lane.from_ == node.name:
        yield from share_log(node, lane, task_id, follow)
        return
    lines = journal_story(task_id, follow, until_done=node)
    if lines is not None:
        first = next(lines, None)
        if first is not None:
            yield first
            yield from lines
            return
    yield from file_story(node, task_id)
