"""Cancelling a task: a signed request the sender drops in the lane's cancel/, acted on by
the receiver's promote. Queued or waiting for an ack: it never runs. Running: its unit is
stopped. Finished: left alone. Every case ends with exactly one result."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from dispatch.core.errors import NotFound, Rejection, UsageError
from dispatch.core.model import (
    HEX64_RE,
    KID_RE,
    SCHEMA,
    canonical,
    loads_strict,
    now_utc,
    parse_time,
    rfc3339,
    valid_id,
)
from dispatch.core.node import Node
from dispatch.core.signing import sign_object, verify_object
from dispatch.core.spool import Lane
from dispatch.receive.intake import read_regular
from dispatch.send import results

CANCEL_FIELDS = {"schema", "kind", "id", "from", "to", "created", "kid", "hmac"}


@dataclass(frozen=True)
class CancelRequest:
    task_id: str
    from_: str
    to: str
    created: str


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
    os.rename(staged, lane.cancel / f"{task_id}.json")
    node.emit("cancel_sent", "cancel requested", task_id=task_id, from_=lane.from_, to=lane.to)
    return Requested(task_id, lane.name, lane.cancel / f"{task_id}.json", "")


def parse(node: Node, lane: Lane, name: str) -> CancelRequest:
    """A cancel request from `lane.cancel`, checked as strictly as an envelope."""
    obj = loads_strict(read_regular(lane.cancel / name))
    if set(obj) != CANCEL_FIELDS or obj.get("schema") != SCHEMA or obj.get("kind") != "cancel":
        raise Rejection("malformed", "not a schema-3 cancel request")
    for field in ("id", "from", "to", "created", "kid", "hmac"):
        if not isinstance(obj[field], str):
            raise Rejection("malformed", f"cancel field {field!r} must be a string")
    if not valid_id(obj["id"]) or name != f"{obj['id']}.json":
        raise Rejection("name_mismatch", "cancel file name is not <id>.json of its id")
    if (obj["from"], obj["to"]) != (lane.from_, lane.to):
        raise Rejection("wrong_lane", "cancel request for another lane")
    if not KID_RE.fullmatch(obj["kid"]) or not HEX64_RE.fullmatch(obj["hmac"]):
        raise Rejection("malformed", "cancel request kid/hmac malformed")
    verify_object(node.keys, obj, "cancel request")
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
