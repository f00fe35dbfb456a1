"""`dispatch list`: this node's tasks, sent and received, newest first.

What a task is and what it asked comes from this node's own record (core.history: the
envelope as this node signed or verified it), never from a file on the share. Where it is
now comes from what the node can trust: on the receiver its ledger and started markers, on
the sender the lane's stage on the share (all a sender can see) and, once there is one, the
result, whose signature is checked. A verified result seen here is recorded, so the task's
end is still known after `dispatch clean` took its files off the share."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from dispatch.core import history
from dispatch.core.errors import Rejection, UsageError
from dispatch.core.history import Task
from dispatch.core.model import Stage
from dispatch.core.node import Node
from dispatch.core.spool import Lane
from dispatch.core.wire import now_utc, parse_time, rfc3339
from dispatch.send import results

DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class Row:
    id: str
    peer: str
    direction: str
    lane: str
    state: str  # the status once ended, else the stage
    created: str
    age_s: float | None
    elapsed_s: float | None
    request: str
    asks: dict[str, Any] | None  # on the receiver, for a task waiting for an ack

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "peer": self.peer,
            "direction": self.direction,
            "lane": self.lane,
            "state": self.state,
            "created": self.created,
            "age_s": None if self.age_s is None else round(self.age_s, 1),
            "elapsed_s": None if self.elapsed_s is None else round(self.elapsed_s, 1),
            "request": self.request,
            "asks": self.asks,
        }


def parse_duration(text: str) -> float:
    """`90s`, `15m`, `2h`, `3d`, `1w`, `1h30m` (a bare number is seconds)."""
    stripped = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", stripped):
        return float(stripped)
    if not stripped or DURATION_RE.sub("", stripped).strip():
        raise UsageError(
            f"not a duration: {text!r} (like 90s, 15m, 2h, 3d, 1w; a bare number is seconds)"
        )
    return sum(float(n) * UNITS[u] for n, u in DURATION_RE.findall(stripped))


def parse_since(text: str) -> datetime:
    """A duration back from now, or a date/time (`2026-11-24`, `2026-11-24T10:00:00Z`)."""
    try:
        return now_utc() - timedelta(seconds=parse_duration(text))
    except UsageError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"--since: not a duration or a date: {text!r} (like 2h, 3d, or 2026-11-24T10:00Z)"
        ) from None
    return moment if moment.tzinfo else moment.astimezone()


def _age(created: str, now: float) -> float | None:
    try:
        return max(0.0, now - parse_time(created).timestamp())
    except ValueError:
        return None


def _lanes(node: Node) -> dict[str, Lane]:
    lanes = node.spool.lanes_out(node.cfg) + node.spool.lanes_in(node.cfg)
    return {lane.name: lane for lane in lanes}


def _ended_on_share(node: Node, lane: Lane, task: Task) -> Task | None:
    """The task with its verified result's status, recorded; None if none verifies."""
    try:
        result = results.read_bound(node, lane, task.id)
    except (OSError, Rejection):
        return None
    history.record_ended(node, task.id, lane, result)
    return replace(
        task,
        status=result.status.value,
        elapsed_s=result.elapsed_s,
        answered_at=result.answered_at,
        reason=result.reason,
    )


def _state_out(node: Node, lane: Lane, task: Task) -> tuple[str, Task]:
    if task.status:
        return task.status, task
    try:
        stage = lane.stage_of(task.id)
    except OSError:
        return "unreachable", task
    if stage is Stage.DONE:
        ended = _ended_on_share(node, lane, task)
        return (ended.status, ended) if ended else ("unverified", task)
    return stage.value, task


def _state_in(node: Node, lane: Lane, task: Task) -> tuple[str, Task, float | None]:
    if task.status:
        return task.status, task, task.elapsed_s
    entry = node.state.entry(task.id)
    if entry is None:
        return Stage.UNKNOWN.value, task, None
    if entry.stage is Stage.DONE:
        ended = _ended_on_share(node, lane, task)
        return (ended.status, ended, ended.elapsed_s) if ended else ("done", task, None)
    if entry.stage is Stage.QUEUED:
        marker = node.state.started(task.id)
        if marker is not None:
            started = marker.get("started_at")
            elapsed = None
            if isinstance(started, str):
                try:
                    elapsed = max(0.0, time.time() - parse_time(started).timestamp())
                except ValueError:
                    elapsed = None
            return Stage.RUNNING.value, task, elapsed
    return entry.stage.value, task, None


def _ledger_only(node: Node, known: set[str], lanes: dict[str, Lane]) -> Iterable[Task]:
    """Tasks the ledger holds that the record does not (received before it existed)."""
    try:
        names = os.listdir(node.cfg.state_dir / "seen")
    except OSError:
        return
    for name in names:
        if name in known or name.startswith("."):
            continue
        entry = node.state.entry(name)
        lane = lanes.get(entry.lane) if entry else None
        if entry is None or lane is None or lane.to != node.name:
            continue
        created = rfc3339(datetime.fromtimestamp(entry.at, UTC))
        yield Task(name, "in", lane.from_, lane.name, created, "", recorded_at=entry.at)


def rows(node: Node) -> list[Row]:
    lanes = _lanes(node)
    now = time.time()
    tasks = history.tasks(node)
    tasks += list(_ledger_only(node, {t.id for t in tasks}, lanes))
    out = []
    for task in tasks:
        lane = lanes.get(task.lane)
        if lane is None:
            continue  # a lane of a peer this node no longer has
        asks = None
        if task.direction == "out":
            state, task = _state_out(node, lane, task)
            elapsed = task.elapsed_s
        else:
            state, task, elapsed = _state_in(node, lane, task)
            if state == Stage.PENDING_ACK.value:
                asks = {
                    "request": task.request,
                    "dangerous": task.dangerous,
                    "timeout_s": task.timeout_s,
                    "ack": f"dispatch ack {task.id[:8]}",
                }
        out.append(
            Row(
                task.id,
                task.peer,
                task.direction,
                task.lane,
                state,
                task.created,
                _age(task.created, now),
                elapsed,
                task.request,
                asks,
            )
        )
    out.sort(key=lambda r: float("inf") if r.age_s is None else r.age_s)
    return out


def select(
    found: list[Row],
    *,
    peer: str | None = None,
    states: tuple[str, ...] = (),
    since: datetime | None = None,
) -> list[Row]:
    picked = []
    for row in found:
        if peer and row.peer != peer:
            continue
        if states and row.state not in states:
            continue
        if since is not None and (row.age_s is None or row.age_s > time.time() - since.timestamp()):
            continue
        picked.append(row)
    return picked


def short(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
