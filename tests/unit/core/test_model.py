"""Strict parsing of untrusted bytes: envelopes, results, canonical JSON, ids, times."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from dispatch.core.errors import Rejection
from dispatch.core.model import Priority, Status, parse_envelope, parse_result
from dispatch.core.wire import MAX_FILE_BYTES, canonical, loads_strict, parse_time, valid_id


def envelope_obj(**overrides: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "schema": 4,
        "kind": "task",
        "id": str(uuid.uuid4()),
        "from": "devbox",
        "to": "gpubox",
        "created": "2025-01-02T03:04:05.123456Z",
        "priority": "normal",
        "request": "do it",
        "require_ack": False,
        "require_dangerous": False,
        "timeout_s": 60,
        "max_output_bytes": 1000,
        "callback": "file",
        "parent": None,
        "hops": 0,
        "kid": "k1",
        "sig": "0" * 128,
    }
    obj.update(overrides)
    return obj


def result_obj(**overrides: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "schema": 4,
        "kind": "result",
        "from": "devbox",
        "to": "gpubox",
        "id": str(uuid.uuid4()),
        "answered_by": "gpubox",
        "answered_at": "2025-01-02T03:04:05.123456Z",
        "request": "do it",
        "status": "ok",
        "exit_code": 0,
        "elapsed_s": 1.5,
        "log_path": "devbox-to-gpubox/done/x.log",
        "final_text": "done",
        "output_tail": "done",
        "output_bytes": 10,
        "perm_mode": "acceptEdits",
        "started_at": None,
        "truncated": False,
        "unit": "",
        "reason": "",
        "kid": "k1",
        "sig": "0" * 128,
    }
    obj.update(overrides)
    return obj


def reason(call: Any, *args: Any) -> str:
    with pytest.raises(Rejection) as info:
        call(*args)
    return info.value.reason


def test_canonical_json_is_the_documented_form() -> None:
    obj = {"b": 1, "a": "é", "c": [True, None]}
    assert canonical(obj) == '{"a":"é","b":1,"c":[true,null]}'.encode()
    assert canonical(obj) == json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def test_valid_id_accepts_only_canonical_lowercase_uuid4() -> None:
    good = str(uuid.uuid4())
    assert valid_id(good)
    assert not valid_id(good.upper())
    assert not valid_id(str(uuid.uuid1()))
    assert not valid_id(good.replace("-", ""))
    assert not valid_id("{" + good + "}")
    assert not valid_id("urn:uuid:" + good)
    assert not valid_id(good + "\n")
    assert not valid_id("../../etc/passwd")
    assert not valid_id("")


def test_parse_time_accepts_z_and_plus_zero_only() -> None:
    assert parse_time("2025-01-02T03:04:05Z").year == 2025
    assert parse_time("2025-01-02T03:04:05.5+00:00").microsecond == 500000
    for bad in (
        "2025-01-02T03:04:05",
        "2025-01-02T03:04:05+01:00",
        "2025-01-02 03:04:05Z",
        "yesterday",
        "2025-01-02T03:04:05.1234567Z",
    ):
        with pytest.raises(ValueError):
            parse_time(bad)


def test_priority_rank() -> None:
    assert [p.rank for p in (Priority.HIGH, Priority.NORMAL, Priority.LOW)] == [0, 1, 2]


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b'{"a": 1, "a": 2}', "malformed"),  # duplicate keys
        (b'{"a": NaN}', "malformed"),
        (b'{"a": Infinity}', "malformed"),
        (b'{"a": -Infinity}', "malformed"),
        (b"[" * 100_000 + b"]" * 100_000, "malformed"),  # nesting: RecursionError path
        (b'{"a": "\xff\xfe"}', "malformed"),  # invalid UTF-8
        (b'{"a": "\x00"}', "malformed"),  # NUL, raw
        (b'{"a": "\\u0000"}', "malformed"),  # NUL, escaped
        (b'{"a\\u0000": 1}', "malformed"),  # NUL in a key
        (b'{"a": [{"b": ["x\\u0000"]}]}', "malformed"),  # NUL deep inside
        (b"[1, 2]", "malformed"),  # not an object
        (b"", "malformed"),
        (b'{"a": 1} trailing', "malformed"),
        (b" " * (MAX_FILE_BYTES + 1), "too_large"),
    ],
)
def test_loads_strict_refuses(data: bytes, code: str) -> None:
    assert reason(loads_strict, data) == code


def test_loads_strict_deep_object_nesting() -> None:
    data = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
    assert reason(loads_strict, data) == "malformed"


def test_loads_strict_accepts_a_plain_object() -> None:
    assert loads_strict('{"a": "é", "b": [1, 2.5, null]}'.encode()) == {
        "a": "é",
        "b": [1, 2.5, None],
    }


def test_parse_envelope_accepts_a_well_formed_one() -> None:
    obj = envelope_obj(parent=str(uuid.uuid4()), hops=2, priority="high")
    env = parse_envelope(obj)
    assert env.id == obj["id"] and env.from_ == "devbox" and env.to == "gpubox"
    assert env.priority is Priority.HIGH and env.parent == obj["parent"] and env.hops == 2
    assert env.to_json() == obj  # wire names and values survive a round trip
    assert "sig" not in env.body() and env.body()["kind"] == "task"


def test_parse_envelope_reads_schema_3_shapes_for_the_migration() -> None:
    """Schema 3 (kind-less, an HMAC): parsed here; whether it is accepted is
    DISPATCH_ACCEPT_V3's, in signing."""
    obj = {k: v for k, v in envelope_obj(schema=3).items() if k not in ("kind", "sig")}
    env = parse_envelope({**obj, "hmac": "0" * 64})
    assert env.schema == 3 and env.sig == "0" * 64
    assert reason(parse_envelope, {**obj, "sig": "0" * 128}) == "malformed"
    assert reason(parse_envelope, {**obj, "hmac": "0" * 64, "kind": "task"}) == "malformed"


def test_parse_envelope_refuses_another_kind() -> None:
    assert reason(parse_envelope, envelope_obj(kind="result")) == "wrong_kind"
    assert reason(parse_envelope, envelope_obj(kind="cancel")) == "wrong_kind"
    assert reason(parse_result, result_obj(kind="task")) == "wrong_kind"


@pytest.mark.parametrize(
    "changes",
    [
        {"timeout_s": True},  # bool is not an int
        {"max_output_bytes": False},
        {"hops": True},
        {"schema": True},
        {"require_ack": 1},  # int is not a bool
        {"require_dangerous": 0},
        {"require_dangerous": "false"},
        {"timeout_s": 60.0},
        {"timeout_s": "60"},
        {"timeout_s": 0},
        {"timeout_s": 2**60},
        {"hops": -1},
        {"id": str(uuid.uuid4()).upper()},
        {"id": str(uuid.uuid1())},
        {"parent": str(uuid.uuid4()).upper()},
        {"parent": "not-a-uuid"},
        {"from": "Dev Box"},
        {"to": "../etc"},
        {"created": "2025-01-02 03:04:05"},
        {"priority": "urgent"},
        {"callback": "email"},
        {"request": "   "},
        {"request": ["list"]},
        {"kid": "bad kid/../x"},
        {"sig": "0" * 127},
        {"sig": "A" * 128},
        {"sig": "0" * 64},
        {"hmac": "0" * 64},  # a schema-3 field in a schema-4 envelope
        {"schema": 5},
        {"schema": "4"},
        {"extra": 1},  # unknown field
    ],
)
def test_parse_envelope_is_strict(changes: dict[str, Any]) -> None:
    assert reason(parse_envelope, envelope_obj(**changes)) == "malformed"


@pytest.mark.parametrize(
    "field", ["id", "from", "request", "require_ack", "parent", "hops", "kid", "sig", "timeout_s"]
)
def test_parse_envelope_requires_every_field(field: str) -> None:
    obj = envelope_obj()
    del obj[field]
    assert reason(parse_envelope, obj) == "malformed"


def test_parse_result_is_strict() -> None:
    obj = result_obj(started_at="2025-01-02T03:04:00Z", status="timeout", exit_code=124)
    res = parse_result(obj)
    assert res.status is Status.TIMEOUT
    assert res.to_json() == {**obj, "elapsed_s": 1.5}
    assert parse_result(result_obj()).status is Status.OK
    for changes in (
        {"truncated": 1},
        {"exit_code": True},
        {"elapsed_s": -1},
        {"elapsed_s": True},
        {"status": "fine"},
        {"output_bytes": -1},
        {"answered_by": "GPU"},
        {"started_at": "now"},
        {"bonus": 1},
        {"schema": 2},
        {"id": str(uuid.uuid1())},
        {"from": "Dev Box"},
        {"sig": "0" * 64},
    ):
        assert reason(parse_result, result_obj(**changes)) == "malformed", changes
