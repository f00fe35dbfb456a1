"""Cancel requests, on the receiver: a signed request in the lane's cancel/, checked as
strictly as an envelope and recorded before it is acted on. Queued or waiting for an ack:
the task never runs. Running: its execution is stopped. Finished: left alone."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

from dispatch.core import events
from dispatch.core.errors import Rejection, SigningFailed
from dispatch.core.fsio import read_regular
from dispatch.core.model import HMAC_SCHEMA, SCHEMA, Status
from dispatch.core.node import Node
from dispatch.core.pids import execution_alive
from dispatch.core.signing import verify_cancel
from dispatch.core.spool import Lane
from dispatch.core.wire import loads_strict, now_utc, parse_time, valid_id
from dispatch.receive import publish
from dispatch.receive.promote import recovery
from dispatch.receive.promote.report import Pass

CANCEL_FIELDS = {"schema", "kind", "id", "from", "to", "created", "kid", "sig"}
# Schema 3, read during a migration only (DISPATCH_ACCEPT_V3).
HMAC_CANCEL_FIELDS = (CANCEL_FIELDS - {"sig"}) | {"hmac"}


@dataclass(frozen=True)
class CancelRequest:
    task_id: str
    from_: str
    to: str
    created: str


def parse(node: Node, lane: Lane, name: str) -> CancelRequest:
    """A cancel request from `lane.cancel`, checked as strictly as an envelope."""
    obj = loads_strict(read_regular(lane.cancel / name))
    schema = obj.get("schema")
    fields = {SCHEMA: CANCEL_FIELDS, HMAC_SCHEMA: HMAC_CANCEL_FIELDS}
    if type(schema) is not int or set(obj) != fields.get(schema) or obj.get("kind") != "cancel":
        raise Rejection("malformed", f"not a schema-{SCHEMA} cancel request")
    for field in ("id", "from", "to", "created"):
        if not isinstance(obj[field], str):
            raise Rejection("malformed", f"cancel field {field!r} must be a string")
    if not valid_id(obj["id"]) or name != f"{obj['id']}.json":
        raise Rejection("name_mismatch", "cancel file name is not <id>.json of its id")
    if (obj["from"], obj["to"]) != (lane.from_, lane.to):
        raise Rejection("wrong_lane", "cancel request for another lane")
    verify_cancel(node.keys, obj)
    try:
        created = parse_time(obj["created"])
    except ValueError as exc:
        raise Rejection("malformed", str(exc)) from None
    now = now_utc()
    if created < now - timedelta(seconds=node.cfg.max_age_s):
        raise Rejection("stale", "cancel request older than the freshness window")
    if created > now + timedelta(seconds=node.cfg.clock_skew_s):
        raise Rejection("future", "cancel request from the future")
    return CancelRequest(obj["id"], obj["from"], obj["to"], obj["created"])


def honour_cancels(run: Pass, lane: Lane, running: set[str]) -> None:
    try:
        names = sorted(os.listdir(lane.cancel))
    except OSError:
        return
    for name in names:
        if name.startswith(".") or lane.in_progress(name):
            continue
        try:
            _cancel_one(run, lane, name, parse(run.node, lane, name), running)
        except Rejection as exc:
            run.refuse(lane, name, exc, source=lane.cancel)
        except OSError as exc:
            run.fault(lane, lane.cancel, name, exc)
        except SigningFailed as exc:
            run.unsigned(lane, lane.task_id_of(name), exc)


def _cancel_one(
    run: Pass, lane: Lane, name: str, request: CancelRequest, running: set[str]
) -> None:
    state = run.node.state
    task_id = request.task_id
    if publish.result_standing(run.node, lane, task_id):
        raise Rejection("already_finished", "the task had already finished; left alone")
    if state.entry(task_id) is None:
        return  # not seen yet (the share may show the cancel first); freshness bounds it
    reason = f"cancelled by {request.from_} (requested {request.created})"
    # Recorded first: the executor and later passes honour it whatever happens next.
    state.request_cancel(task_id, reason)
    os.unlink(lane.cancel / name)
    marker = state.started(task_id)
    if task_id in running or (marker is not None and execution_alive(marker)):
        run.node.emit(
            "cancel_stop",
            "stopping the running execution",
            task_id=task_id,
            from_=lane.from_,
            to=lane.to,
            level=events.NOTICE,
        )
        run.launcher.stop(task_id)
        return
    for directory in (lane.pending_ack, lane.processing):
        if (directory / lane.task_name(task_id)).exists() and marker is None:
            recovery.end_unstarted(run, lane, directory, task_id, Status.CANCELLED, reason)
            return
