"""Reading and verifying results, and finding the lane a task travels in. Every command
that reads a result verifies it here. A task's lane comes from this node's own records (what
it sent, what its ledger admitted), never from which lane holds a file of that name."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dispatch.core.errors import DispatchError, NotFound, Rejection
from dispatch.core.fsio import read_regular
from dispatch.core.model import Result
from dispatch.core.node import Node
from dispatch.core.signing import verify_result
from dispatch.core.spool import Lane
from dispatch.core.wire import loads_strict


@dataclass(frozen=True)
class Located:
    lane: Lane
    path: Path


def read(node: Node, lane: Lane, path: Path) -> Result:
    """A verified result for `lane` (signed for that lane by its receiver's pinned key), or
    `Rejection` (exit code 3) if it does not verify."""
    data = read_regular(path)
    return verify_result(node.keys, loads_strict(data, allow_nul=True), lane)


def read_bound(node: Node, lane: Lane, task_id: str) -> Result:
    """The result at `lane`'s place for the task, verified and bound to it: it names this
    task, and it was answered by the lane's receiver. A result copied from another lane
    or task, or signed by a node that was not asked, is refused (`Rejection`)."""
    result = read(node, lane, lane.result_path(task_id))
    if result.id != task_id:
        raise Rejection("forged_result", f"the result names another task ({result.id[:40]})")
    if result.answered_by != lane.to:
        raise Rejection(
            "wrong_answerer",
            f"the result was answered by {result.answered_by[:40]!r}, not by {lane.to}, "
            f"the receiver of {lane.name}",
        )
    return result


def find_task_lane(node: Node, task_id: str) -> Lane | None:
    """The lane a task travels in, by this node's records: its sent record for a task it
    sent, its ledger for one it received. None when it has no record of the task."""
    sent = node.sent.lookup(task_id)
    if sent is not None:
        return node.spool.lane(sent.from_, sent.to)
    try:
        entry = node.state.entry(task_id)
    except (DispatchError, OSError):
        return None  # a sender without access to the receiving service's state
    if entry is None:
        return None
    return next((lane for lane in node.spool.lanes_in(node.cfg) if lane.name == entry.lane), None)


def locate(node: Node, task_id: str) -> Located | None:
    """Where the result of a task this node sent (or received) is, in its own lane."""
    lane = find_task_lane(node, task_id)
    if lane is None:
        return None
    path = lane.result_path(task_id)
    return Located(lane, path) if os.path.lexists(path) else None


def get(node: Node, task_id: str) -> Result:
    located = locate(node, task_id)
    if located is None:
        if find_task_lane(node, task_id) is None:
            raise NotFound(f"{node.name} has no record of sending or receiving task {task_id}")
        raise NotFound(f"no result for {task_id} yet")
    try:
        return read_bound(node, located.lane, task_id)
    except Rejection as exc:
        raise Rejection(exc.reason, f"result {located.path}: {exc}") from None
