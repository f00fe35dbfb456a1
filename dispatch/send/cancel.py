"""Cancelling a task: a signed request the sender drops in the lane's cancel/, acted on by
the receiver's promote. Queued or waiting for an ack: it never runs. Running: its unit is
stopped. Finished: left alone. Every case ends with exactly one result."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dispatch.core.errors import NotFound, UsageError
from dispatch.core.model import SCHEMA
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
    lane = next(
        (
            lane
            for lane in node.spool.lanes_out(node.cfg)
            if results.find_task_lane(node, task_id) == lane
        ),
        None,
    )
    if lane is None:
        raise NotFound(f"{node.name} sent no task {task_id}")
    if lane.result_path(task_id).exists():
        result = results.read(node, lane.result_path(task_id))
        return Requested(task_id, lane.name, None, result.status.value)
    body = sign_object(
        node.keys,
        {
            "schema": SCHEMA,
            "kind": "cancel",
            "id": task_id,
            "from": lane.from_,
            "to": lane.to,
            "created": rfc3339(now_utc()),
        },
    )
    lane.cancel.mkdir(exist_ok=True)
    lane.tmp.mkdir(exist_ok=True)
    staged = lane.tmp / f"{task_id}.cancel.json"
    staged.write_bytes(canonical(body) + b"\n")
    os.rename(staged, lane.cancel / lane.task_name(task_id))
    node.emit("cancel_sent", "cancel requested", task_id=task_id, from_=lane.from_, to=lane.to)
    return Requested(task_id, lane.name, lane.cancel / lane.task_name(task_id), "")
