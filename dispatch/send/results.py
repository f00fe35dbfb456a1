"""Writing and reading signed results. Every command that reads a result verifies it here."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dispatch.core.errors import NotFound, Rejection
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


def read(node: Node, path: Path) -> Result:
    """A verified result, or `Rejection` (exit code 3) if it does not verify."""
    data = read_regular(path)
    return verify_result(node.keys, loads_strict(data, allow_nul=True))


def locate(node: Node, task_id: str) -> Located | None:
    """The result of a task this node sent (or received), in whichever lane it travelled."""
    spool = node.spool
    for lane in spool.lanes_out(node.cfg) + spool.lanes_in(node.cfg):
        path = lane.result_path(task_id)
        if path.exists():
            return Located(lane, path)
    return None


def find_task_lane(node: Node, task_id: str) -> Lane | None:
    """Which of this node's lanes a task id travels in, from any trace it left."""
    spool = node.spool
    for lane in spool.lanes_out(node.cfg) + spool.lanes_in(node.cfg):
        name = lane.task_name(task_id)
        for where in (
            lane.inbox / name,
            lane.pending_ack / name,
            lane.processing / name,
            lane.result_path(task_id),
            lane.tmp / name,
            lane.rejected / name,
        ):
            if where.exists():
                return lane
    return None


def get(node: Node, task_id: str) -> Result:
    located = locate(node, task_id)
    if located is None:
        raise NotFound(f"no result for {task_id} yet")
    try:
        return read(node, located.path)
    except Rejection as exc:
        raise Rejection(exc.reason, f"result {located.path}: {exc}") from None
