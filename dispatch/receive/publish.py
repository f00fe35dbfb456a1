"""Publishing signed results on the receiver: the execution's own, and the verdicts for
tasks that did not (or did not finish to) run. A task has exactly one result."""

from __future__ import annotations

import contextlib
import os
from typing import Any

from dispatch.core import events, fsio, history
from dispatch.core.errors import Rejection, SigningFailed
from dispatch.core.fsio import atomic_write, dump_json, read_regular
from dispatch.core.model import Callback, Result, Status
from dispatch.core.node import Node
from dispatch.core.signing import sign_result, verify_result
from dispatch.core.spool import Lane
from dispatch.core.wire import loads_strict, now_utc, rfc3339


def write_signed(
    node: Node, lane: Lane, task_id: str, signed: dict[str, Any], callback: Callback | None = None
) -> bool:
    """Publish a signed result (also one the share refused at the time). A forgery planted
    at its place is quarantined first; a genuine earlier result stands. Webhooks hear of
    it (queued; never delaying this)."""
    if result_standing(node, lane, task_id):
        return False
    if not atomic_write(lane.result_path(task_id), dump_json(signed), overwrite=False):
        return False
    history.record_ended(node, task_id, lane, signed)
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


def keep_unsigned(
    node: Node, lane: Lane, result: Result, log_rest: bytes, failed: SigningFailed
) -> None:
    """An execution's result the local signer did not sign: the work is done, only its
    signature is missing. Kept unsigned on this host (the executor never reads the key);
    the next promote pass signs and publishes it (recovery.publish_deferred)."""
    log_rest = fsio.append(lane.log_path(result.id), log_rest)
    body = result.for_lane(lane.from_, lane.to).body()
    node.state.defer_result(result.id, lane.name, body, log_rest)
    node.emit(
        "result_unsigned",
        f"{failed}; the {result.status} result is kept on this host, and the next promote "
        "pass signs and publishes it",
        task_id=result.id,
        from_=lane.from_,
        to=lane.to,
        level=events.ERR,
    )


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
    cancelled, or killed before it started. Signed before anything is written: when the
    signer does not sign (`SigningFailed`), nothing is."""
    signed = signed_verdict(
        node, lane, task_id, request, status, reason, started_at=started_at, unit=unit
    )
    return write_signed(node, lane, task_id, signed, callback)


def signed_verdict(
    node: Node,
    lane: Lane,
    task_id: str,
    request: str,
    status: Status,
    reason: str,
    *,
    started_at: str | None = None,
    unit: str = "",
) -> dict[str, Any]:
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
        sig="",
    )
    return sign_result(node.keys, result, lane).to_json()


def result_standing(node: Node, lane: Lane, task_id: str) -> bool:
    """Whether done/ holds this node's verified result for the task, quarantining whatever
    else is there: a file that does not verify (anyone can write to the share) is moved to
    rejected/ with its reason, so it can neither stand in for the real result nor stop the
    task from running."""
    path = lane.result_path(task_id)
    if not os.path.lexists(path):
        return False
    try:
        result = verify_result(node.keys, loads_strict(read_regular(path), allow_nul=True), lane)
        if result.id != task_id:
            raise Rejection("forged_result", "result names another task id")
        return True
    except FileNotFoundError:
        return False
    except Rejection as exc:
        forged = Rejection("forged_result", f"{exc.reason}: {exc}")
        with contextlib.suppress(FileNotFoundError):
            lane.reject(path.name, forged, node=node.name, source=lane.done, task_id=task_id)
        node.emit(
            "result_forged",
            f"{path.name}: {exc}; quarantined",
            task_id=task_id,
            from_=lane.from_,
            to=lane.to,
            level=events.WARNING,
        )
        return False
