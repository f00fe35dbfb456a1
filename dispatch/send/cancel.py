"""Cancelling a task: a signed request the sender drops in the lane's cancel/, acted on by
the receiver's promote. Queued or waiting for an ack: it never runs. Running: its unit is
stopped. Finished: left alone. Every case ends with exactly one result."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from dispatch.core.errors import NotFound, Rejection, UsageError
from dispatch.core.fsio import write_new
from dispatch.core.model import SCHEMA, Kind
from dispatch.core.node import Node
from dispatch.core.signing import sign_object
from dispatch.core.wire import canonical, now_utc, rfc3339, valid_id
from dispatch.send import results


@dataclass(frozen=True)
class Requested:
    task_id: str
    lane: str
    path: Path | None
    finished: str  # the status of an existing result, when there was nothing to cancel


def request(node: Node, task_id: str) -> Requested:
    """On the sender: ask the receiver to cancel a task this node sent."""
    if not valid_id(task_id):
        raise UsageError(f"not a task id: {task_id[:60]!r}")
    sent = node.sent.lookup(task_id)
    if sent is None:
        raise NotFound(f"{node.name} has no record of sending task {task_id}")
    # The lane it was sent on, by this node's own record: never whichever lane shows a
    # file of that name.
    lane = node.spool.lane(sent.from_, sent.to)
    if os.path.lexists(lane.result_path(task_id)):
        try:
            result = results.read_bound(node, lane, task_id)
        except Rejection:
            pass  # not its result: the task may still be running, so cancel it
        else:
            return Requested(task_id, lane.name, None, result.status.value)
    body = sign_object(
        node.keys,
        {
            "schema": SCHEMA,
            "kind": Kind.CANCEL.value,
            "id": task_id,
            "from": lane.from_,
            "to": lane.to,
            "created": rfc3339(now_utc()),
        },
    )
    lane.cancel.mkdir(exist_ok=True)
    lane.tmp.mkdir(exist_ok=True)
    # A fresh name, created exclusively and never through a link someone planted in tmp/.
    staged = lane.tmp / f".{task_id}.cancel.{secrets.token_hex(4)}.tmp"
    write_new(staged, canonical(body) + b"\n")
    os.rename(staged, lane.cancel / lane.task_name(task_id))
    node.emit("cancel_sent", "cancel requested", task_id=task_id, from_=lane.from_, to=lane.to)
    return Requested(task_id, lane.name, lane.cancel / lane.task_name(task_id), "")
