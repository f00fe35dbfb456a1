"""Waiting for a task's result: inotify where it works, a rescan every poll period always."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from dispatch import results
from dispatch.errors import NotFound, Rejection, WaitTimeout
from dispatch.inotify import DirWatcher
from dispatch.model import Result
from dispatch.node import Node
from dispatch.spool import Lane


def stage_of(lane: Lane, task_id: str) -> str:
    name = lane.task_name(task_id)
    if lane.result_path(task_id).exists():
        return "done"
    for stage, directory in (("queued", lane.processing), ("pending-ack", lane.pending_ack),
                             ("inbox", lane.inbox), ("rejected", lane.rejected),
                             ("sending", lane.tmp)):
        if (directory / name).exists():
            return stage
    return "unknown"


def rejection_reason(lane: Lane, task_id: str) -> str:
    try:
        record = json.loads((lane.rejected / f"{task_id}.json.reason.json").read_text())
        return f"{record.get('reason')}: {record.get('message')}"
    except (OSError, ValueError):
        return "rejected by the receiver"


def wait(node: Node, task_id: str, *, timeout: float | None = None,
         tick: Callable[[str, float], None] | None = None) -> Result:
    lane = results.find_task_lane(node, task_id)
    if lane is None:
        raise NotFound(f"no task {task_id} in this node's lanes")
    began = time.monotonic()
    poll = node.cfg.poll_sec
    with DirWatcher([lane.done, lane.rejected]) as watcher:
        while True:
            if lane.result_path(task_id).exists():
                return results.read(node, lane.result_path(task_id))
            stage = stage_of(lane, task_id)
            if stage == "rejected" and not lane.result_path(task_id).exists():
                raise Rejection("rejected", f"task {task_id} was rejected: "
                                f"{rejection_reason(lane, task_id)}")
            elapsed = time.monotonic() - began
            if tick is not None:
                tick(stage, elapsed)
            if timeout is not None and elapsed >= timeout:
                raise WaitTimeout(f"no result for {task_id} after {timeout:g}s "
                                  f"(last seen: {stage})")
            remaining = poll if timeout is None else min(poll, timeout - elapsed)
            watcher.wait(min(remaining, 1.0) if tick is not None else remaining)
