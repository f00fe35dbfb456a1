"""This node's own record of the tasks it sent and received, for `dispatch list`, id
prefixes and `dispatch clean`: append-only JSON lines in node-local state, never on the
share, so a task's history outlives its files on the share (cleaned, or lost).

The interface other modules use (keep it this small):

- `record_sent(node, envelope)`: the sender, once the envelope is in the peer's inbox
  (send/task.py `deliver`).
- `record_received(node, envelope, lane)`: the receiver, once intake admitted the
  envelope (receive/promote/admission.py); the request recorded is the verified one, which
  is what `dispatch list` shows for a task that waits for an ack.
- `record_ended(node, task_id, lane, result)`: a verified result, on either side (the
  receiver when it publishes it, the sender when it reads it or cleans it away).
- `tasks(node)`: every task folded from the record, newest first.

Appends are single `write(2)` calls of one short line (the request is cut to its head) to
an O_APPEND file, so concurrent writers (a `dispatch send` beside the promoter) never
interleave. A torn or foreign line is skipped. Recording never fails the operation it
records: a sender that cannot write here (a user without the host's state directory) keeps
its record under `$XDG_STATE_HOME/dispatch/` instead, and `tasks()` reads both."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dispatch.core.model import Envelope, Result
from dispatch.core.node import Node
from dispatch.core.spool import Lane
from dispatch.core.wire import valid_id

FILE_NAME = "history.jsonl"
REQUEST_HEAD = 240  # characters of the request kept: enough to recognise a task by


@dataclass(frozen=True)
class Task:
    """One task as this node's record knows it. `direction` is `out` (sent by this node)
    or `in` (received); `status` stays "" until a verified result was seen."""

    id: str
    direction: str
    peer: str
    lane: str
    created: str
    request: str
    require_ack: bool = False
    dangerous: bool = False
    timeout_s: int = 0
    recorded_at: float = 0.0
    status: str = ""
    elapsed_s: float | None = None
    answered_at: str = ""
    reason: str = ""


def paths(node: Node) -> list[Path]:
    """Where the record may be: the node's state directory, then the user's own."""
    found = [node.cfg.state_dir / FILE_NAME]
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    if xdg and not xdg.startswith("~"):
        found.append(Path(xdg) / "dispatch" / f"{node.cfg.node or 'node'}-{FILE_NAME}")
    return found


def _append(node: Node, record: dict[str, Any]) -> bool:
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    for path in paths(node):
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(
                path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
        except OSError:
            continue
        try:
            os.write(fd, line)
            return True
        except OSError:
            continue
        finally:
            os.close(fd)
    return False


def _head(text: str) -> str:
    return text if len(text) <= REQUEST_HEAD else text[: REQUEST_HEAD - 1] + "…"


def _task_record(event: str, envelope: Envelope, lane: Lane) -> dict[str, Any]:
    return {
        "event": event,
        "id": envelope.id,
        "lane": lane.name,
        "from": envelope.from_,
        "to": envelope.to,
        "created": envelope.created,
        "request": _head(envelope.request),
        "require_ack": envelope.require_ack,
        "dangerous": envelope.require_dangerous,
        "timeout_s": envelope.timeout_s,
        "at": time.time(),
    }


def record_sent(node: Node, envelope: Envelope) -> bool:
    lane = node.spool.lane(envelope.from_, envelope.to)
    return _append(node, _task_record("sent", envelope, lane))


def record_received(node: Node, envelope: Envelope, lane: Lane) -> bool:
    return _append(node, _task_record("received", envelope, lane))


def record_ended(node: Node, task_id: str, lane: Lane, result: Result | dict[str, Any]) -> bool:
    """`result`: a verified `Result`, or the signed object this node just published."""
    body = result.to_json() if isinstance(result, Result) else result
    elapsed = body.get("elapsed_s")
    return _append(
        node,
        {
            "event": "ended",
            "id": task_id,
            "lane": lane.name,
            "status": str(body.get("status", "")),
            "elapsed_s": elapsed if isinstance(elapsed, int | float) else None,
            "answered_at": str(body.get("answered_at", "")),
            "reason": str(body.get("reason", ""))[:REQUEST_HEAD],
            "at": time.time(),
        },
    )


def _records(node: Node) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seen_files: set[tuple[int, int]] = set()
    for path in paths(node):
        try:
            info = path.stat()
            if (info.st_dev, info.st_ino) in seen_files:
                continue
            seen_files.add((info.st_dev, info.st_ino))
            data = path.read_bytes()
        except OSError:
            continue
        for raw in data.splitlines():
            try:
                record = json.loads(raw)
            except ValueError:
                continue  # torn by a crash mid-append: the rest still counts
            if isinstance(record, dict) and valid_id(str(record.get("id", ""))):
                out.append(record)
    out.sort(key=lambda r: float(r.get("at", 0) or 0))
    return out


def tasks(node: Node) -> list[Task]:
    """Every task in this node's record, newest first (by when it was recorded)."""
    me = node.cfg.node
    found: dict[str, Task] = {}
    for record in _records(node):
        task_id = str(record["id"])
        event = record.get("event")
        if event in ("sent", "received"):
            outgoing = event == "sent"
            lane = str(record.get("lane", ""))
            peer = str(record.get("to" if outgoing else "from", ""))
            if record.get("from" if outgoing else "to") != me:
                continue  # another node's record in a shared state directory
            old = found.get(task_id)
            found[task_id] = Task(
                id=task_id,
                direction="out" if outgoing else "in",
                peer=peer,
                lane=lane,
                created=str(record.get("created", "")),
                request=str(record.get("request", "")),
                require_ack=bool(record.get("require_ack")),
                dangerous=bool(record.get("dangerous")),
                timeout_s=int(record.get("timeout_s") or 0),
                recorded_at=float(record.get("at") or 0),
                status=old.status if old else "",
                elapsed_s=old.elapsed_s if old else None,
                answered_at=old.answered_at if old else "",
                reason=old.reason if old else "",
            )
        elif event == "ended":
            old = found.get(task_id)
            if old is None or str(record.get("lane", "")) != old.lane:
                continue
            elapsed = record.get("elapsed_s")
            found[task_id] = replace(
                old,
                status=str(record.get("status", "")),
                elapsed_s=float(elapsed) if isinstance(elapsed, int | float) else None,
                answered_at=str(record.get("answered_at", "")),
                reason=str(record.get("reason", "")),
            )
    return sorted(found.values(), key=lambda t: t.recorded_at, reverse=True)
