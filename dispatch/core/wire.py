"""The wire format's strict side: JSON decoded without trusting it (no duplicate keys, no
NaN, no lone surrogates or NULs, bounded size), canonical bytes for signing, and the field
checks every object's parser uses. Each returns a well-typed value or raises `Rejection`."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from dispatch.core.errors import Rejection
from dispatch.core.knobs import valid_node

MAX_FILE_BYTES = 1024 * 1024
E = TypeVar("E", bound=StrEnum)


def now_utc() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """An RFC 3339 UTC timestamp (`Z` or `+00:00`); the original wrote the latter."""
    if not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|\+00:00)", text):
        raise ValueError(f"not an RFC 3339 UTC timestamp: {text[:40]!r}")
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# What str(uuid.UUID) gives for a version 4, RFC 4122 variant id; a pattern rather than the
# uuid module, whose import (9 M instructions) every hop would pay before its agent starts.
_UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def valid_id(text: str) -> bool:
    """Canonical lowercase uuid4: the form that is safe to use as a file name."""
    return isinstance(text, str) and _UUID4.fullmatch(text) is not None


def new_id() -> str:
    import uuid

    return str(uuid.uuid4())


def canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


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
    """JSON escapes get past the checks on the raw text: `\\u0000` (a NUL in a request
    would make the agent's argv unusable: ValueError from exec, not OSError) and a lone
    surrogate such as `\\ud800` (not text: canonical JSON cannot encode it, so verifying
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


def require(obj: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = obj.get(name)
    # bool is a subclass of int: `true` must never pass as a number, nor 1 as a bool.
    if isinstance(value, bool) and kind is not bool:
        raise Rejection("malformed", f"field {name!r} must be {kind_name(kind)}, got a boolean")
    if not isinstance(value, kind):
        raise Rejection(
            "malformed", f"field {name!r} must be {kind_name(kind)}, got {type(value).__name__}"
        )
    return value


def kind_name(kind: type | tuple[type, ...]) -> str:
    if isinstance(kind, tuple):
        return " or ".join(k.__name__ for k in kind)
    return kind.__name__


def node_field(obj: dict[str, Any], name: str) -> str:
    value: str = require(obj, name, str)
    if not valid_node(value):
        raise Rejection("malformed", f"field {name!r} is not a valid node name")
    return value


def id_field(obj: dict[str, Any], name: str) -> str:
    value: str = require(obj, name, str)
    if not valid_id(value):
        raise Rejection("malformed", f"field {name!r} is not a canonical lowercase uuid4")
    return value


def enum_field(obj: dict[str, Any], name: str, kind: type[E]) -> E:
    value: str = require(obj, name, str)
    try:
        return kind(value)
    except ValueError:
        raise Rejection("malformed", f"field {name!r} has an unknown value") from None


def time_field(obj: dict[str, Any], name: str) -> str:
    value: str = require(obj, name, str)
    try:
        parse_time(value)
    except ValueError as exc:
        raise Rejection("malformed", f"field {name!r}: {exc}") from None
    return value


def count_field(obj: dict[str, Any], name: str, minimum: int, maximum: int) -> int:
    value: int = require(obj, name, int)
    if not minimum <= value <= maximum:
        raise Rejection("malformed", f"field {name!r} out of range [{minimum}, {maximum}]")
    return value


def exact_fields(obj: dict[str, Any], allowed: set[str], required: set[str], what: str) -> None:
    unknown = set(obj) - allowed
    if unknown:
        names = ", ".join(sorted(repr(u[:40]) for u in unknown)[:5])
        raise Rejection("malformed", f"{what} has unknown fields: {names}")
    missing = required - set(obj)
    if missing:
        raise Rejection("malformed", f"{what} lacks fields: {', '.join(sorted(missing))}")
