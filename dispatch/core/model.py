"""Envelopes and results: their fields and their parsing (strict JSON in `wire`).

Parsing never trusts its input: every function here either returns a well-typed value or
raises `Rejection` with a reason code. Signatures are checked in `signing`."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from dispatch.core.errors import Rejection
from dispatch.core.wire import (
    count_field,
    enum_field,
    exact_fields,
    id_field,
    node_field,
    parse_time,
    require,
    time_field,
)

SCHEMA = 4
# Schema 3 (a fleet-wide HMAC key) is read during a migration only (DISPATCH_ACCEPT_V3).
HMAC_SCHEMA = 3
KID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
HEX64_RE = re.compile(r"[0-9a-f]{64}")
SIG_RE = re.compile(r"[0-9a-f]{128}")  # an Ed25519 signature, hex


class Kind(StrEnum):
    """What a signed object is: part of the signed bytes, so a signature made for one
    kind never passes as another."""

    TASK = "task"
    RESULT = "result"
    CANCEL = "cancel"
    ACK = "ack"
    ROTATE = "rotate"


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"

    @property
    def rank(self) -> int:
        return {"high": 0, "normal": 1, "low": 2}[self.value]


class Callback(StrEnum):
    FILE = "file"
    DISCORD = "discord"
    NONE = "none"


class Status(StrEnum):
    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    KILLED = "killed"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    # No output for DISPATCH_STALL_S: a headless agent waiting on a prompt or a dead network.
    STALLED = "stalled"


# A result's exit_code when a guard ended it (timeout, stall), as timeout(1) reports it.
TIMEOUT_EXIT = 124


class Stage(StrEnum):
    """A task's stage as this node knows it: the one lifecycle vocabulary (its end is a
    `Status`). On a receiver the ledger records it; senders read it off the share."""

    SENDING = "sending"  # the sender's tmp/, not yet delivered
    INBOX = "inbox"
    PENDING_ACK = "pending-ack"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    REJECTED = "rejected"
    UNKNOWN = "unknown"  # no trace of the task

    @classmethod
    def of_record(cls, value: object) -> Stage:
        """A ledger record's stage; releases before 0.2 wrote `intake` and `accepted`."""
        legacy = {"intake": cls.INBOX, "accepted": cls.QUEUED}
        if not isinstance(value, str):
            raise ValueError(f"not a stage: {value!r}")
        return legacy.get(value) or cls(value)


@dataclass(frozen=True)
class Envelope:
    """A task envelope, schema 4 (or an older one: schema 3 during a migration, schema 2
    with its unsigned fields clamped). `sig` is the signature, whatever its kind."""

    id: str
    from_: str
    to: str
    created: str
    priority: Priority
    request: str
    require_ack: bool
    require_dangerous: bool
    timeout_s: int
    max_output_bytes: int
    callback: Callback
    parent: str | None
    hops: int
    kid: str
    sig: str
    schema: int = SCHEMA

    def body(self) -> dict[str, Any]:
        """Every field the signature covers, under its wire name."""
        data = asdict(self)
        data["from"] = data.pop("from_")
        del data["sig"]
        data["kind"] = Kind.TASK.value
        data["priority"] = self.priority.value
        data["callback"] = self.callback.value
        return data

    def to_json(self) -> dict[str, Any]:
        data = self.body()
        data["sig"] = self.sig
        return data

    def created_at(self) -> datetime:
        return parse_time(self.created)

    def signed(self, kid: str, sig: str) -> Envelope:
        return replace(self, kid=kid, sig=sig)


ENVELOPE_FIELDS = {
    "schema",
    "kind",
    "id",
    "from",
    "to",
    "created",
    "priority",
    "request",
    "require_ack",
    "require_dangerous",
    "timeout_s",
    "max_output_bytes",
    "callback",
    "parent",
    "hops",
    "kid",
    "sig",
}
# Schema 3: no kind, an HMAC where schema 4 has its signature.
HMAC_ENVELOPE_FIELDS = (ENVELOPE_FIELDS - {"kind", "sig"}) | {"hmac"}
MAX_INT = 2**53  # beyond this, JSON numbers stop round-tripping through other languages


def signature_field(obj: dict[str, Any], kind: Kind) -> tuple[int, str, str]:
    """(schema, kid, signature) of a schema-4 object of `kind` or a schema-3 one; the
    signature's form checked, not its value."""
    schema = obj.get("schema")
    if isinstance(schema, bool) or schema not in (SCHEMA, HMAC_SCHEMA):
        raise Rejection("malformed", f"unsupported schema {str(schema)[:20]!r}")
    kid: str = require(obj, "kid", str)
    if not KID_RE.fullmatch(kid):
        raise Rejection("malformed", "field 'kid' is not a valid key id")
    if schema == HMAC_SCHEMA:
        mac: str = require(obj, "hmac", str)
        if not HEX64_RE.fullmatch(mac):
            raise Rejection("malformed", "field 'hmac' is not 64 lowercase hex digits")
        return schema, kid, mac
    if obj.get("kind") != kind.value:
        raise Rejection("wrong_kind", f"not a {kind.value}: kind {str(obj.get('kind'))[:20]!r}")
    sig: str = require(obj, "sig", str)
    if not SIG_RE.fullmatch(sig):
        raise Rejection("malformed", "field 'sig' is not 128 lowercase hex digits")
    return schema, kid, sig


def parse_envelope(obj: dict[str, Any]) -> Envelope:
    """Check a schema-4 (or schema-3) envelope's shape (not its signature, nor policy)."""
    schema, kid, sig = signature_field(obj, Kind.TASK)
    fields = ENVELOPE_FIELDS if schema == SCHEMA else HMAC_ENVELOPE_FIELDS
    exact_fields(obj, fields, fields, "envelope")
    parent = obj["parent"]
    if parent is not None:
        parent = id_field(obj, "parent")
    request: str = require(obj, "request", str)
    if not request.strip():
        raise Rejection("malformed", "field 'request' is empty")
    return Envelope(
        id=id_field(obj, "id"),
        from_=node_field(obj, "from"),
        to=node_field(obj, "to"),
        created=time_field(obj, "created"),
        priority=enum_field(obj, "priority", Priority),
        request=request,
        require_ack=require(obj, "require_ack", bool),
        require_dangerous=require(obj, "require_dangerous", bool),
        timeout_s=count_field(obj, "timeout_s", 1, MAX_INT),
        max_output_bytes=count_field(obj, "max_output_bytes", 1, MAX_INT),
        callback=enum_field(obj, "callback", Callback),
        parent=parent,
        hops=count_field(obj, "hops", 0, 1000),
        kid=kid,
        sig=sig,
        schema=schema,
    )


@dataclass(frozen=True)
class Result:
    """A signed result, schema 4: the original's fields plus provenance, the lane of its
    task (`from`, `to`: `answered_by` is the lane's receiver) and a signature."""

    id: str
    answered_by: str
    answered_at: str
    request: str
    status: Status
    exit_code: int
    elapsed_s: float
    log_path: str
    final_text: str
    output_tail: str
    output_bytes: int
    perm_mode: str
    started_at: str | None
    truncated: bool
    unit: str
    reason: str
    kid: str
    sig: str
    schema: int = SCHEMA
    from_: str = ""  # the task's lane; filled in when the result is signed for it
    to: str = ""

    def body(self) -> dict[str, Any]:
        data = asdict(self)
        data["from"] = data.pop("from_")
        data["kind"] = Kind.RESULT.value
        data["status"] = self.status.value
        del data["sig"]
        return data

    def to_json(self) -> dict[str, Any]:
        data = self.body()
        data["sig"] = self.sig
        return data

    def signed(self, kid: str, sig: str) -> Result:
        return replace(self, kid=kid, sig=sig)

    def for_lane(self, from_: str, to: str) -> Result:
        return replace(self, from_=from_, to=to)


RESULT_FIELDS = {
    "schema",
    "kind",
    "from",
    "to",
    "id",
    "answered_by",
    "answered_at",
    "request",
    "status",
    "exit_code",
    "elapsed_s",
    "log_path",
    "final_text",
    "output_tail",
    "output_bytes",
    "perm_mode",
    "started_at",
    "truncated",
    "unit",
    "reason",
    "kid",
    "sig",
}
HMAC_RESULT_FIELDS = (RESULT_FIELDS - {"kind", "from", "to", "sig"}) | {"hmac"}


def parse_result(obj: dict[str, Any]) -> Result:
    schema, kid, sig = signature_field(obj, Kind.RESULT)
    fields = RESULT_FIELDS if schema == SCHEMA else HMAC_RESULT_FIELDS
    exact_fields(obj, fields, fields, "result")
    lane = ("", "")
    if schema == SCHEMA:
        lane = (node_field(obj, "from"), node_field(obj, "to"))
    started = obj["started_at"]
    if started is not None:
        started = time_field(obj, "started_at")
    elapsed = require(obj, "elapsed_s", (int, float))
    if not 0 <= elapsed < MAX_INT:
        raise Rejection("malformed", "field 'elapsed_s' out of range")
    return Result(
        id=id_field(obj, "id"),
        answered_by=node_field(obj, "answered_by"),
        answered_at=time_field(obj, "answered_at"),
        request=require(obj, "request", str),
        status=enum_field(obj, "status", Status),
        exit_code=count_field(obj, "exit_code", -(2**31), 2**31),
        elapsed_s=float(elapsed),
        log_path=require(obj, "log_path", str),
        final_text=require(obj, "final_text", str),
        output_tail=require(obj, "output_tail", str),
        output_bytes=count_field(obj, "output_bytes", 0, MAX_INT),
        perm_mode=require(obj, "perm_mode", str),
        started_at=started,
        truncated=require(obj, "truncated", bool),
        unit=require(obj, "unit", str),
        reason=require(obj, "reason", str),
        kid=kid,
        sig=sig,
        schema=schema,
        from_=lane[0],
        to=lane[1],
    )
