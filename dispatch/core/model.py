"""Envelopes and results: their fields, their strict parsing, and canonical JSON.

Parsing never trusts its input: every function here either returns a well-typed value or
raises `Rejection` with a reason code. Signatures are checked in `signing`."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from dispatch.core.config import valid_node
from dispatch.core.errors import Rejection

SCHEMA = 3
MAX_FILE_BYTES = 1024 * 1024
KID_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
HEX64_RE = re.compile(r"[0-9a-f]{64}")
E = TypeVar("E", bound=StrEnum)


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


def canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def now_utc() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """An RFC 3339 UTC timestamp (`Z` or `+00:00`); the original wrote the latter."""
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|\+00:00)", text):
        raise ValueError(f"not an RFC 3339 UTC timestamp: {text[:40]!r}")
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def valid_id(text: str) -> bool:
    """Canonical lowercase uuid4: the form that is safe to use as a file name."""
    try:
        parsed = uuid.UUID(text)
    except (ValueError, AttributeError, TypeError):
        return False
    return parsed.version == 4 and str(parsed) == text


def new_id() -> str:
    return str(uuid.uuid4())


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key[:40]!r}")
        obj[key] = value
    return obj


def loads_strict(data: bytes, *, allow_nul: bool = False) -> dict[str, Any]:
    """Decode one JSON object from untrusted bytes, or raise `Rejection(malformed)`.
    `allow_nul`: results may quote an agent's output, NUL bytes included; nothing that
    reaches an agent's argv may hold one."""
    if len(data) > MAX_FILE_BYTES:
        raise Rejection("too_large", f"file is {len(data)} bytes, over {MAX_FILE_BYTES}")
    try:
        text = data.decode("utf-8")
        if "\x00" in text:
            raise ValueError("NUL character")
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except RecursionError:
        raise Rejection("malformed", "JSON nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise Rejection("malformed", f"not valid UTF-8 JSON: {str(exc)[:120]}") from None
    if not isinstance(obj, dict):
        raise Rejection("malformed", "top level is not a JSON object")
    problem = _bad_string(obj, allow_nul)
    if problem:
        raise Rejection("malformed", problem)
    return obj


def _bad_string(obj: Any, allow_nul: bool) -> str:
    """JSON escapes get past the checks on the raw text: `\u0000` (a NUL in a request
    would make the agent's argv unusable: ValueError from exec, not OSError) and a lone
    surrogate such as `\ud800` (not text: canonical JSON cannot encode it, so verifying
    the signature would raise instead of refusing)."""
    stack = [obj]  # iterative: the parser already bounded the depth, no recursion here
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not allow_nul and "\x00" in item:
                return "NUL character in a string"
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return "lone surrogate (not Unicode text) in a string"
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return ""


def _require(obj: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = obj.get(name)
    # bool is a subclass of int: `true` must never pass as a number, nor 1 as a bool.
    if isinstance(value, bool) and kind is not bool:
        raise Rejection("malformed", f"field {name!r} must be {_kind_name(kind)}, got a boolean")
    if not isinstance(value, kind):
        raise Rejection(
            "malformed", f"field {name!r} must be {_kind_name(kind)}, got {type(value).__name__}"
        )
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    if isinstance(kind, tuple):
        return " or ".join(k.__name__ for k in kind)
    return kind.__name__


def _node_field(obj: dict[str, Any], name: str) -> str:
    value: str = _require(obj, name, str)
    if not valid_node(value):
        raise Rejection("malformed", f"field {name!r} is not a valid node name")
    return value


def _id_field(obj: dict[str, Any], name: str) -> str:
    value: str = _require(obj, name, str)
    if not valid_id(value):
        raise Rejection("malformed", f"field {name!r} is not a canonical lowercase uuid4")
    return value


def _enum_field(obj: dict[str, Any], name: str, kind: type[E]) -> E:
    value: str = _require(obj, name, str)
    try:
        return kind(value)
    except ValueError:
        raise Rejection("malformed", f"field {name!r} has an unknown value") from None


def _time_field(obj: dict[str, Any], name: str) -> str:
    value: str = _require(obj, name, str)
    try:
        parse_time(value)
    except ValueError as exc:
        raise Rejection("malformed", f"field {name!r}: {exc}") from None
    return value


def _count_field(obj: dict[str, Any], name: str, minimum: int, maximum: int) -> int:
    value: int = _require(obj, name, int)
    if not minimum <= value <= maximum:
        raise Rejection("malformed", f"field {name!r} out of range [{minimum}, {maximum}]")
    return value


def _exact_fields(obj: dict[str, Any], allowed: set[str], required: set[str], what: str) -> None:
    unknown = set(obj) - allowed
    if unknown:
        names = ", ".join(sorted(repr(u[:40]) for u in unknown)[:5])
        raise Rejection("malformed", f"{what} has unknown fields: {names}")
    missing = required - set(obj)
    if missing:
        raise Rejection("malformed", f"{what} lacks fields: {', '.join(sorted(missing))}")


@dataclass(frozen=True)
class Envelope:
    """A task envelope, schema 3 (or a schema-2 envelope with its unsigned fields clamped)."""

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
    hmac: str
    schema: int = SCHEMA

    def body(self) -> dict[str, Any]:
        """Every field the signature covers, under its wire name."""
        data = asdict(self)
        data["from"] = data.pop("from_")
        del data["hmac"]
        data["priority"] = self.priority.value
        data["callback"] = self.callback.value
        return data

    def to_json(self) -> dict[str, Any]:
        data = self.body()
        data["hmac"] = self.hmac
        return data

    def created_at(self) -> datetime:
        return parse_time(self.created)

    def signed(self, kid: str, mac: str) -> Envelope:
        return replace(self, kid=kid, hmac=mac)


ENVELOPE_FIELDS = {
    "schema",
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
    "hmac",
}
V2_FIELDS = {
    "schema",
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
    "hmac",
}
V2_REQUIRED = {"schema", "id", "from", "to", "created", "priority", "request", "hmac"}
MAX_INT = 2**53  # beyond this, JSON numbers stop round-tripping through other languages


def parse_envelope(obj: dict[str, Any]) -> Envelope:
    """Check a schema-3 envelope's shape (not its signature, not node policy)."""
    schema = obj.get("schema")
    if schema != SCHEMA or isinstance(schema, bool):
        raise Rejection("malformed", f"unsupported schema {str(schema)[:20]!r}")
    _exact_fields(obj, ENVELOPE_FIELDS, ENVELOPE_FIELDS, "envelope")
    parent = obj["parent"]
    if parent is not None:
        parent = _id_field(obj, "parent")
    kid: str = _require(obj, "kid", str)
    if not KID_RE.fullmatch(kid):
        raise Rejection("malformed", "field 'kid' is not a valid key id")
    mac: str = _require(obj, "hmac", str)
    if not HEX64_RE.fullmatch(mac):
        raise Rejection("malformed", "field 'hmac' is not 64 lowercase hex digits")
    request: str = _require(obj, "request", str)
    if not request.strip():
        raise Rejection("malformed", "field 'request' is empty")
    return Envelope(
        id=_id_field(obj, "id"),
        from_=_node_field(obj, "from"),
        to=_node_field(obj, "to"),
        created=_time_field(obj, "created"),
        priority=_enum_field(obj, "priority", Priority),
        request=request,
        require_ack=_require(obj, "require_ack", bool),
        require_dangerous=_require(obj, "require_dangerous", bool),
        timeout_s=_count_field(obj, "timeout_s", 1, MAX_INT),
        max_output_bytes=_count_field(obj, "max_output_bytes", 1, MAX_INT),
        callback=_enum_field(obj, "callback", Callback),
        parent=parent,
        hops=_count_field(obj, "hops", 0, 1000),
        kid=kid,
        hmac=mac,
    )


@dataclass(frozen=True)
class V2Envelope:
    """The original project's envelope: only six fields are signed."""

    id: str
    from_: str
    to: str
    created: str
    priority: Priority
    request: str
    callback: Callback
    hmac: str

    def signed_text(self) -> bytes:
        return "|".join(
            [self.id, self.from_, self.to, self.created, self.priority.value, self.request]
        ).encode("utf-8")


def parse_v2(obj: dict[str, Any]) -> V2Envelope:
    """Check a schema-2 envelope's shape. Its unsigned fields are type-checked, then ignored:
    the receiving node's policy decides them."""
    _exact_fields(obj, V2_FIELDS, V2_REQUIRED, "schema-2 envelope")
    for name, kind in (
        ("require_ack", bool),
        ("require_dangerous", bool),
        ("timeout_s", int),
        ("max_output_bytes", int),
    ):
        if name in obj:
            _require(obj, name, kind)
    mac: str = _require(obj, "hmac", str)
    if not HEX64_RE.fullmatch(mac):
        raise Rejection("malformed", "field 'hmac' is not 64 lowercase hex digits")
    request: str = _require(obj, "request", str)
    if not request.strip():
        raise Rejection("malformed", "field 'request' is empty")
    return V2Envelope(
        id=_id_field(obj, "id"),
        from_=_node_field(obj, "from"),
        to=_node_field(obj, "to"),
        created=_time_field(obj, "created"),
        priority=_enum_field(obj, "priority", Priority),
        request=request,
        callback=_enum_field(obj, "callback", Callback) if "callback" in obj else Callback.FILE,
        hmac=mac,
    )


@dataclass(frozen=True)
class Result:
    """A signed result, schema 3: the original's fields plus provenance and a signature."""

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
    hmac: str
    schema: int = SCHEMA

    def body(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        del data["hmac"]
        return data

    def to_json(self) -> dict[str, Any]:
        data = self.body()
        data["hmac"] = self.hmac
        return data

    def signed(self, kid: str, mac: str) -> Result:
        return replace(self, kid=kid, hmac=mac)

    @property
    def failed(self) -> bool:
        return self.status is not Status.OK


RESULT_FIELDS = {
    "schema",
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
    "hmac",
}


def parse_result(obj: dict[str, Any]) -> Result:
    schema = obj.get("schema")
    if schema != SCHEMA or isinstance(schema, bool):
        raise Rejection("malformed", f"unsupported result schema {str(schema)[:20]!r}")
    _exact_fields(obj, RESULT_FIELDS, RESULT_FIELDS, "result")
    started = obj["started_at"]
    if started is not None:
        started = _time_field(obj, "started_at")
    elapsed = _require(obj, "elapsed_s", (int, float))
    if not 0 <= elapsed < MAX_INT:
        raise Rejection("malformed", "field 'elapsed_s' out of range")
    kid: str = _require(obj, "kid", str)
    if not KID_RE.fullmatch(kid):
        raise Rejection("malformed", "field 'kid' is not a valid key id")
    mac: str = _require(obj, "hmac", str)
    if not HEX64_RE.fullmatch(mac):
        raise Rejection("malformed", "field 'hmac' is not 64 lowercase hex digits")
    return Result(
        id=_id_field(obj, "id"),
        answered_by=_node_field(obj, "answered_by"),
        answered_at=_time_field(obj, "answered_at"),
        request=_require(obj, "request", str),
        status=_enum_field(obj, "status", Status),
        exit_code=_count_field(obj, "exit_code", -(2**31), 2**31),
        elapsed_s=float(elapsed),
        log_path=_require(obj, "log_path", str),
        final_text=_require(obj, "final_text", str),
        output_tail=_require(obj, "output_tail", str),
        output_bytes=_count_field(obj, "output_bytes", 0, MAX_INT),
        perm_mode=_require(obj, "perm_mode", str),
        started_at=started,
        truncated=_require(obj, "truncated", bool),
        unit=_require(obj, "unit", str),
        reason=_require(obj, "reason", str),
        kid=kid,
        hmac=mac,
    )
