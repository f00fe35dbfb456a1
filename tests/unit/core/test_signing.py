"""Signing and verifying, schema 4: each node signs with its own Ed25519 key, every field
(kind and lane included) is covered, and a signature verifies only against a key pinned
for the node that must have made it. Schema 3 (HMAC) only behind DISPATCH_ACCEPT_V3."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dispatch.core.config import Config
from dispatch.core.errors import Rejection, UsageError
from dispatch.core.keys import Pins, load_private, write_private
from dispatch.core.legacy_hmac import new_secret, write_key
from dispatch.core.model import Callback, Envelope, Priority, Result, Status
from dispatch.core.signing import (
    NodeKeys,
    sign_envelope,
    sign_object,
    sign_result,
    verify_cancel,
    verify_envelope,
    verify_result,
)
from dispatch.core.wire import canonical, now_utc, rfc3339
from tests.unit.helpers import hmac_signed, kid_of, mac, signed

NODES = ("devbox", "gpubox", "c")


@dataclass(frozen=True)
class Ends:
    from_: str
    to: str


LANE = Ends("devbox", "gpubox")


def make_cfg(tmp_path: Path, node: str = "gpubox", **kw: Any) -> Config:
    return Config(
        root=tmp_path / "share",
        node=node,
        peers=tuple(n for n in NODES if n != node),
        key_dir=tmp_path / node / "keys",
        **kw,
    )


@pytest.fixture
def fleet(tmp_path: Path) -> dict[str, NodeKeys]:
    """Three nodes, each with its own key pair, each pinning all three public keys."""
    publics = {n: write_private(tmp_path / n / "keys", n).public for n in NODES}
    for node in NODES:
        for other in NODES:
            Pins(tmp_path / node / "peers").add(publics[other], f"test: {other}")
    return {n: NodeKeys(make_cfg(tmp_path, n)) for n in NODES}


def an_envelope(**kw: Any) -> Envelope:
    values: dict[str, Any] = dict(
        id=str(uuid.uuid4()),
        from_="devbox",
        to="gpubox",
        created=rfc3339(now_utc()),
        priority=Priority.NORMAL,
        request="build it",
        require_ack=False,
        require_dangerous=False,
        timeout_s=600,
        max_output_bytes=2_000_000,
        callback=Callback.FILE,
        parent=None,
        hops=0,
        kid="",
        sig="",
    )
    values.update(kw)
    return Envelope(**values)


def a_result(**kw: Any) -> Result:
    values: dict[str, Any] = dict(
        id=str(uuid.uuid4()),
        answered_by="gpubox",
        answered_at=rfc3339(now_utc()),
        request="build it",
        status=Status.OK,
        exit_code=0,
        elapsed_s=1.25,
        log_path="devbox-to-gpubox/done/x.log",
        final_text="built",
        output_tail="...",
        output_bytes=123,
        perm_mode="acceptEdits",
        started_at=rfc3339(now_utc()),
        truncated=False,
        unit="",
        reason="",
        kid="",
        sig="",
    )
    values.update(kw)
    return Result(**values)


def rejection(call: Any, *args: Any) -> str:
    with pytest.raises(Rejection) as info:
        call(*args)
    return info.value.reason


def private_of(tmp_path: Path, node: str) -> Ed25519PrivateKey:
    return load_private(tmp_path / node / "keys", node).private


def test_envelope_round_trip(fleet: dict[str, NodeKeys], tmp_path: Path) -> None:
    devbox, gpubox = fleet["devbox"], fleet["gpubox"]
    envelope = sign_envelope(devbox, an_envelope(parent=str(uuid.uuid4()), hops=1))
    key = private_of(tmp_path, "devbox")
    assert envelope.kid == kid_of(key) and len(envelope.sig) == 128
    wire = json.loads(json.dumps(envelope.to_json()))
    assert wire["schema"] == 4 and wire["kind"] == "task"
    assert verify_envelope(gpubox, wire) == envelope
    # The signature is over canonical JSON: layout and key order on disk do not matter.
    reordered = json.loads(json.dumps(dict(reversed(list(wire.items()))), indent=4))
    assert verify_envelope(gpubox, reordered) == envelope
    # ... and it is the documented one, made without dispatch.core.signing.
    assert signed(key, wire) == wire


ENVELOPE_CHANGES: list[tuple[str, Any]] = [
    ("id", str(uuid.uuid4())),
    ("to", "c"),
    ("created", "2020-01-01T00:00:00.000000Z"),
    ("priority", "high"),
    ("request", "build it!"),
    ("request", "build iT"),
    ("require_ack", True),
    ("require_dangerous", True),
    ("timeout_s", 601),
    ("max_output_bytes", 2_000_001),
    ("callback", "none"),
    ("parent", str(uuid.uuid4())),
    ("hops", 1),
]


@pytest.mark.parametrize(
    ("field", "value"), ENVELOPE_CHANGES, ids=[f"{f}={v!r}"[:40] for f, v in ENVELOPE_CHANGES]
)
def test_changing_any_envelope_field_breaks_the_signature(
    fleet: dict[str, NodeKeys], field: str, value: Any
) -> None:
    wire = sign_envelope(fleet["devbox"], an_envelope()).to_json()
    assert wire[field] != value
    wire[field] = value
    assert rejection(verify_envelope, fleet["gpubox"], wire) == "bad_signature"


def test_changing_the_kind_or_the_sender_breaks_it(fleet: dict[str, NodeKeys]) -> None:
    wire = sign_envelope(fleet["devbox"], an_envelope()).to_json()
    assert rejection(verify_envelope, fleet["gpubox"], dict(wire, kind="cancel")) == "wrong_kind"
    # Claimed from c: checked against c's pinned key, which did not sign it.
    assert rejection(verify_envelope, fleet["gpubox"], dict(wire, **{"from": "c"})) == (
        "unknown_key"
    )


def test_a_node_cannot_make_a_task_that_passes_as_a_third_nodes(
    fleet: dict[str, NodeKeys], tmp_path: Path
) -> None:
    """devbox holds its own key only: whatever it writes, gpubox does not take it as c's."""
    devbox, gpubox = fleet["devbox"], fleet["gpubox"]
    # Its signer will not sign as c at all.
    with pytest.raises(UsageError, match="signs only as itself"):
        sign_envelope(devbox, an_envelope(from_="c"))
    # Signed by hand with devbox's key, as c, under devbox's key id: not a key of c.
    key = private_of(tmp_path, "devbox")
    body = {k: v for k, v in an_envelope(from_="c").body().items()}
    forged = signed(key, {**body, "kid": kid_of(key)})
    assert rejection(verify_envelope, gpubox, forged) == "unknown_key"
    # ... and under c's key id: the signature is not c's.
    c_kid = kid_of(private_of(tmp_path, "c"))
    forged = signed(key, {**body, "kid": c_kid})
    assert rejection(verify_envelope, gpubox, forged) == "bad_signature"
    # The receiver's own key cannot either.
    rx = private_of(tmp_path, "gpubox")
    forged = signed(rx, {**body, "kid": kid_of(rx)})
    assert rejection(verify_envelope, gpubox, forged) == "unknown_key"
    # c's real key does: the check is the pin, nothing else.
    c_key = private_of(tmp_path, "c")
    assert verify_envelope(gpubox, signed(c_key, {**body, "kid": c_kid})).from_ == "c"


def test_an_unpinned_sender_is_refused_with_what_to_do(
    fleet: dict[str, NodeKeys], tmp_path: Path
) -> None:
    wire = sign_envelope(fleet["devbox"], an_envelope()).to_json()
    Pins(tmp_path / "gpubox" / "peers").remove("devbox")
    with pytest.raises(Rejection, match="dispatch peers add devbox") as info:
        verify_envelope(NodeKeys(make_cfg(tmp_path)), wire)
    assert info.value.reason == "unknown_key"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("require_ack", 0),
        ("require_dangerous", 1),
        ("timeout_s", True),
        ("hops", False),
        ("timeout_s", 600.0),
        ("max_output_bytes", "2000000"),
        ("id", "UPPER"),
        ("id", "uuid1"),
        ("parent", "UPPER"),
        ("extra_field", "x"),
    ],
)
def test_correctly_signed_but_ill_typed_envelopes_are_refused(
    fleet: dict[str, NodeKeys], tmp_path: Path, field: str, value: Any
) -> None:
    """The signer's key does not make a wrong type right: `1` is not `true`."""
    wire = sign_envelope(fleet["devbox"], an_envelope()).to_json()
    if value == "UPPER":
        value = str(uuid.uuid4()).upper()
    elif value == "uuid1":
        value = str(uuid.uuid1())
    wire[field] = value
    wire = signed(private_of(tmp_path, "devbox"), wire)
    assert rejection(verify_envelope, fleet["gpubox"], wire) == "malformed"


def test_bool_and_int_sign_differently() -> None:
    assert canonical({"a": True}) != canonical({"a": 1})
    assert canonical({"a": 600}) != canonical({"a": 600.0})


RESULT_CHANGES: dict[str, Any] = {
    "id": str(uuid.uuid4()),
    "answered_at": "2020-01-01T00:00:00Z",
    "request": "x",
    "status": "error",
    "exit_code": 1,
    "elapsed_s": 9.5,
    "log_path": "elsewhere",
    "final_text": "built!",
    "output_tail": "..!",
    "output_bytes": 124,
    "perm_mode": "bypassPermissions",
    "started_at": None,
    "truncated": True,
    "unit": "dispatch-exec@x.service",
    "reason": "because",
}


def test_result_round_trip_and_every_field(fleet: dict[str, NodeKeys]) -> None:
    gpubox, devbox = fleet["gpubox"], fleet["devbox"]
    result = sign_result(gpubox, a_result(), LANE)
    wire = json.loads(json.dumps(result.to_json()))
    assert (wire["kind"], wire["from"], wire["to"]) == ("result", "devbox", "gpubox")
    assert verify_result(devbox, wire, LANE) == result
    lane_fields = {"schema", "kind", "from", "to", "answered_by", "kid", "sig"}
    assert set(RESULT_CHANGES) | lane_fields == set(wire)
    for field, value in RESULT_CHANGES.items():
        assert wire[field] != value
        changed = dict(wire, **{field: value})
        assert rejection(verify_result, devbox, changed, LANE) == "bad_signature", field


def test_a_receivers_key_signs_results_for_its_own_lanes_only(
    fleet: dict[str, NodeKeys], tmp_path: Path
) -> None:
    gpubox, devbox = fleet["gpubox"], fleet["devbox"]
    wire = sign_result(gpubox, a_result(), LANE).to_json()
    # Found in another lane's done/: refused, whoever moved it there.
    assert rejection(verify_result, devbox, wire, Ends("devbox", "c")) == "wrong_lane"
    assert rejection(verify_result, devbox, wire, Ends("c", "gpubox")) == "wrong_lane"
    # Its signer will not sign for a lane into another node, nor as another answerer.
    with pytest.raises(UsageError, match="signs only as itself"):
        sign_result(gpubox, a_result(answered_by="c"), Ends("devbox", "c"))
    with pytest.raises(UsageError, match="answered by gpubox"):
        sign_result(gpubox, a_result(answered_by="c"), LANE)
    # By hand, gpubox's key on a result for devbox-to-c: checked against c's pin.
    key = private_of(tmp_path, "gpubox")
    body = a_result(answered_by="c").for_lane("devbox", "c").body()
    forged = signed(key, {**body, "kid": kid_of(key)})
    assert rejection(verify_result, devbox, forged, Ends("devbox", "c")) == "unknown_key"
    # A result whose answerer is not its lane's receiver is refused before any key.
    odd = signed(key, {**a_result(answered_by="c").for_lane(*"ab").body(), "kid": kid_of(key)})
    odd.update({"from": "devbox", "to": "gpubox"})
    assert rejection(verify_result, devbox, odd, LANE) == "wrong_lane"
    # The sender's own key cannot sign a result it would accept from gpubox.
    tx = private_of(tmp_path, "devbox")
    self_made = signed(tx, {**a_result().for_lane("devbox", "gpubox").body(), "kid": kid_of(tx)})
    assert rejection(verify_result, devbox, self_made, LANE) == "unknown_key"


def test_cancels_verify_against_their_senders_key(fleet: dict[str, NodeKeys]) -> None:
    body = {
        "schema": 4,
        "kind": "cancel",
        "id": str(uuid.uuid4()),
        "from": "devbox",
        "to": "gpubox",
        "created": rfc3339(now_utc()),
    }
    request = sign_object(fleet["devbox"], body)
    verify_cancel(fleet["gpubox"], request)
    assert rejection(verify_cancel, fleet["gpubox"], dict(request, id=str(uuid.uuid4()))) == (
        "bad_signature"
    )
    with pytest.raises(UsageError, match="signs only as itself"):
        sign_object(fleet["gpubox"], body)
    # A task's signature is not a cancel's, even with the same fields.
    assert rejection(verify_cancel, fleet["gpubox"], dict(request, kind="task")) == "wrong_kind"


def test_rotation_old_key_verifies_until_removed(
    fleet: dict[str, NodeKeys], tmp_path: Path
) -> None:
    before = sign_envelope(fleet["devbox"], an_envelope()).to_json()
    new = write_private(tmp_path / "devbox" / "keys", "devbox", replace=True)
    Pins(tmp_path / "gpubox" / "peers").add(new.public, "test: rotation")
    rotated = NodeKeys(make_cfg(tmp_path, "devbox"))
    after = sign_envelope(rotated, an_envelope()).to_json()
    assert after["kid"] == new.public.kid != before["kid"]
    receiver = NodeKeys(make_cfg(tmp_path))
    verify_envelope(receiver, before)
    verify_envelope(receiver, after)
    Pins(tmp_path / "gpubox" / "peers").remove("devbox", before["kid"])
    receiver = NodeKeys(make_cfg(tmp_path))
    assert rejection(verify_envelope, receiver, before) == "unknown_key"
    verify_envelope(receiver, after)


# -- schema 3 (a shared HMAC key), during a migration only ---------------------------------


def v3_envelope(secret: bytes) -> dict[str, Any]:
    body = {k: v for k, v in an_envelope().body().items() if k != "kind"}
    return hmac_signed(secret, {**body, "schema": 3, "kid": "k1"})


def test_schema3_is_refused_unless_the_migration_knob_is_on(tmp_path: Path) -> None:
    secret = new_secret()
    write_key(tmp_path / "gpubox" / "keys", secret, "k1")
    wire = v3_envelope(secret)
    off = NodeKeys(make_cfg(tmp_path))
    assert rejection(verify_envelope, off, wire) == "schema3_disabled"
    on = NodeKeys(make_cfg(tmp_path, accept_v3=True))
    assert verify_envelope(on, wire).schema == 3
    assert rejection(verify_envelope, on, dict(wire, request="x")) == "bad_signature"
    assert rejection(verify_envelope, on, dict(wire, kid="k2")) == "unknown_key"
    # Results and cancels alike.
    result = {k: v for k, v in a_result().body().items() if k not in ("kind", "from", "to")}
    result = hmac_signed(secret, {**result, "schema": 3, "kid": "k1"})
    assert rejection(verify_result, off, result, LANE) == "schema3_disabled"
    assert verify_result(on, result, LANE).schema == 3
    assert result["hmac"] == mac(secret, result)
