"""Writing and reading signed results. Every command that reads a result verifies it here."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dispatch.core.errors import NotFound, Rejection
from dispatch.core.model import Callback, Result, Status, loads_strict, now_utc, rfc3339
from dispatch.core.node import Node
from dispatch.core.signing import sign_result, verify_result
from dispatch.core.spool import Lane, atomic_write, dump_json
from dispatch.receive.intake import read_regular


@dataclass(frozen=True)
class Located:
    lane: Lane
    path: Path


def write(node: Node, lane: Lane, result: Result, callback: Callback | None = None) -> bool:
    """Sign and publish a result. False if the lane already holds one for this id: a task
    has exactly one result (invariant 2), so the first one stands."""
    return write_signed(node, lane, result.id, sign_result(node.keys, result).to_json(), callback)


def write_signed(
    node: Node, lane: Lane, task_id: str, signed: dict[str, Any], callback: Callback | None = None
) -> bool:
    """Publish a signed result (also one the share refused at the time). A forgery planted
    at its place is quarantined first; a genuine earlier result stands. Webhooks hear of
    it (queued; never delaying this)."""
    if genuine(node, lane, task_id):
        return False
    if not atomic_write(lane.result_path(task_id), dump_json(signed), overwrite=False):
        return False
    from dispatch.receive import notify

    notify.enqueue(
        node,
        notify.task_payload(
            node,
            "task_ended",
            task_id=task_id,
            from_=lane.from_,
            to=lane.to,
            request=str(signed.get("request", "")),
            status=str(signed.get("status", "")),
            reason=str(signed.get("reason", "")),
            final_text=str(signed.get("final_text", "")),
        ),
        callback,
    )
    return True


def append_log(path: Path, data: bytes) -> bytes:
    """Append to done/<id>.log what the share refused during the run; return what it still
    refuses. O_NOFOLLOW: never through a link someone planted on the share."""
    if not data:
        return b""
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644
        )
    except OSError:
        return data
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        return bytes(view)
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    return b""


def verdict(
    node: Node,
    lane: Lane,
    task_id: str,
    request: str,
    status: Status,
    reason: str,
    *,
    started_at: str | None = None,
    unit: str = "",
    callback: Callback | None = None,
) -> bool:
    """A result for a task that did not (or did not finish to) run: rejected, interrupted,
    cancelled, or killed before it started."""
    result = Result(
        id=task_id,
        answered_by=node.name,
        answered_at=rfc3339(now_utc()),
        request=request,
        status=status,
        exit_code=-1,
        elapsed_s=0.0,
        log_path="",
        final_text="",
        output_tail="",
        output_bytes=0,
        perm_mode="",
        started_at=started_at,
        truncated=False,
        unit=unit,
        reason=reason,
        kid="",
        hmac="",
    )
    return write(node, lane, result, callback)


def genuine(node: Node, lane: Lane, task_id: str) -> bool:
    """Whether done/ holds this node's verified result for the task. A file there that does
    not verify (anyone can write to the share) is moved to rejected/ with its reason, so it
    can neither stand in for the real result nor stop the task from running."""
    path = lane.result_path(task_id)
    if not os.path.lexists(path):
        return False
    try:
        result = read(node, path)
        if result.id != task_id:
            raise Rejection("forged_result", "result names another task id")
        return True
    except FileNotFoundError:
        return False
    except Rejection as exc:
        record = {
            "reason": "forged_result",
            "message": f"{exc.reason}: {exc}",
            "at": rfc3339(now_utc()),
            "node": node.name,
            "task_id": task_id,
        }
        with contextlib.suppress(FileNotFoundError):
            lane.reject(path.name, record, lane.done)
        node.emit(
            "result_forged",
            f"{path.name}: {exc}; quarantined",
            task_id=task_id,
            from_=lane.from_,
            to=lane.to,
            level=4,
        )
        return False


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
