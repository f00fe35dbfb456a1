"""What each MCP tool does, as plain blocking dispatch code: no SDK, no event loop.

The tools in `dispatch.mcp.server` run these off the event loop; they call the same code as
the commands (`sender`, `waiting`, `results`, `cancel`, `logs`), so a task handled through MCP
is signed, delivered, chained and verified exactly like one handled on the command line."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from dispatch.core.errors import DispatchError, NotFound, Rejection, WaitTimeout
from dispatch.core.model import Priority
from dispatch.core.node import Node
from dispatch.mcp.schema import CancelOut, LogsOut, SendOut, TaskOut, task_out
from dispatch.ops import logs as logs_mod
from dispatch.send import cancel as cancel_mod
from dispatch.send import results, waiting
from dispatch.send import task as sender

LOGS_MAX_BYTES = 256 * 1024


def tool_message(exc: DispatchError) -> str:
    """The one line a tool error carries: what the CLI would print, minus `dispatch: `."""
    if isinstance(exc, Rejection) and exc.reason != "rejected":
        return f"verification failed ({exc.reason}): {exc}"
    return str(exc)


def send_task(
    node: Node,
    *,
    to: str,
    request: str,
    priority: Priority,
    require_ack: bool,
    timeout_s: int | None,
) -> SendOut:
    """Sign and deliver one task; the answer says where it went (not yet waited for)."""
    envelope = sender.build(
        node,
        to=to,
        request=request,
        priority=priority,
        require_ack=require_ack,
        timeout_s=timeout_s,
    )
    sent = sender.deliver(node, envelope)
    return {
        "id": envelope.id,
        "from": envelope.from_,
        "to": envelope.to,
        "parent": envelope.parent,
        "hops": envelope.hops,
        "kid": envelope.kid,
        "path": str(sent.path),
        "waited": False,
        "done": False,
        "stage": "inbox",
        "signature_verified": False,
        "result": None,
    }


def stage_now(node: Node, task_id: str) -> str:
    lane = results.find_task_lane(node, task_id)
    return "unknown" if lane is None else waiting.stage_of(lane, task_id)


def wait_task(
    node: Node, task_id: str, timeout: float, tick: Callable[[str, float], None] | None = None
) -> TaskOut:
    """Block up to `timeout` seconds; a task still on its way is an answer, not an error."""
    try:
        result = waiting.wait(
            node,
            task_id,
            timeout=timeout,
            tick=tick,
            note=lambda message: print(f"dispatch mcp: {message}", file=sys.stderr, flush=True),
        )
    except WaitTimeout:
        return task_out(task_id, stage_now(node, task_id), None)
    return task_out(task_id, "done", result)


def get_task(node: Node, task_id: str) -> TaskOut:
    """The verified result now, or where the task is (a refused task is an error)."""
    located = results.locate(node, task_id)
    if located is not None:
        return task_out(task_id, "done", results.read_bound(node, located.lane, task_id))
    lane = results.find_task_lane(node, task_id)
    if lane is None:
        raise NotFound(f"no task {task_id} in this node's records (sent or received)")
    # An unsigned record in rejected/ is a hint, never the outcome: the stage says it.
    return task_out(task_id, waiting.stage_of(lane, task_id), None)


def cancel_task(node: Node, task_id: str) -> CancelOut:
    """A signed cancel request for a task this node sent; a finished task is left alone."""
    sent = cancel_mod.request(node, task_id)
    return {
        "id": task_id,
        "requested": not sent.finished,
        "lane": sent.lane,
        "path": None if sent.path is None else str(sent.path),
        "finished": sent.finished or None,
    }


def read_logs(node: Node, task_id: str, offset: int, max_bytes: int) -> LogsOut:
    """Up to `max_bytes` of the task's log from `offset`; call again from `next_offset`."""
    lane = results.find_task_lane(node, task_id)
    if lane is None:
        raise NotFound(f"no task {task_id} in this node's records (sent or received)")
    finished = os.path.lexists(lane.result_path(task_id))  # before the read: then it is whole
    try:
        data = logs_mod.read_from(lane.log_path(task_id), offset, max_bytes)
    except FileNotFoundError:
        data = b""
    more = len(data) == max_bytes
    # Whole characters only: a UTF-8 sequence cut by the read (or by a writer mid-write)
    # waits for the next call, unless nothing more is coming.
    text, consumed = (
        (data.decode("utf-8", "replace"), len(data)) if finished and not more else whole_utf8(data)
    )
    return {
        "id": task_id,
        "offset": offset,
        "next_offset": offset + consumed,
        "text": text,
        "done": finished and not more,
        "stage": waiting.stage_of(lane, task_id),
    }


def whole_utf8(data: bytes) -> tuple[str, int]:
    """The longest prefix of `data` that is whole UTF-8 (within the last 3 bytes), and its
    length; bytes that are not UTF-8 at all are replaced."""
    for cut in range(min(4, len(data) + 1)):
        try:
            return data[: len(data) - cut].decode("utf-8"), len(data) - cut
        except UnicodeDecodeError:
            continue
    return data.decode("utf-8", "replace"), len(data)
