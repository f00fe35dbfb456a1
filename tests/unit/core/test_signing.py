"""Signing and verifying: every field covered, strict types, the key ring and its files."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from dispatch.core.config import Config
from dispatch.core.errors import ConfigError, Rejection
from dispatch.core.model import Callback, Envelope, Priority, Result, Status, parse_v2
from dispatch.core.node import Node
from dispatch.core.signing import (
    Keyring,
    fingerprint,
    new_secret,
    read_key,
    sign_envelope,
    sign_result,
    verify_envelope,
    verify_result,
    verify_v2,
    write_key,
)
from dispatch.core.wire import canonical, now_utc, rfc3339
from tests.unit.helpers import mac, sign_v2


def make_cfg(tmp_path: Path, **kw: Any) -> Config:
    return Config(
        root=tmp_path / "share", node="gpubox", peers=("devbox",), key_dir=tmp_path / "keys", **kw
    )


@pytest.fixture
def ring(tmp_path: Path) -> Keyring:
    write_key(tmp_path / "keys", new_secret(), "k1")
    return Keyring.load(make_cfg(tmp_path))


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
        hmac="",
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
        hmac="",
    )
    values.update(kw)
    return Result(**values)


def rejection(call: Any, *args: Any) -> str:
    with pytest.raises(Rejection) as info:
        call(*args)
    return info.value.reason


def test_envelope_round_trip(ring: Keyring) -> None:
    signed = sign_envelope(ring, an_envelope(parent=str(uuid.uuid4()), hops=1))
    assert signed.kid == "k1" and len(signed.hmac) == 64
    wire = json.loads(json.dumps(signed.to_json()))
    assert verify_envelope(ring, wire) == signed
    # The MAC is over canonical JSON: layout and key order on disk do not matter.
    reordered = json.loads(json.dumps(dict(reversed(list(wire.items()))), indent=4))
    assert verify_envelope(ring, reordered) == signed
    # ... and it is the documented MAC, computable without dispatch.core.signing.
    key = ring.get("k1")
    assert signed.hmac == mac(key.secret, wire)


ENVELOPE_CHANGES: list[tuple[str, Any]] = [
    ("id", str(uuid.uuid4())),
    ("from", "devbox2"),
    ("to", "gpubox2"),
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
    ring: Keyring, field: str, value: Any
) -> None:
    wire = sign_envelope(ring, an_envelope()).to_json()
    assert wire[field] != value
    wire[field] = value
    assert rejection(verify_envelope, ring, wire) == "bad_signature"


def test_changing_parent_of_a_child_task_breaks_the_signature(ring: Keyring) -> None:
    wire = sign_envelope(ring, an_envelope(parent=str(uuid.uuid4()), hops=2)).to_json()
    for field, value in (("parent", None), ("parent", str(uuid.uuid4())), ("hops", 0)):
        changed = dict(wire, **{field: value})
        assert rejection(verify_envelope, ring, changed) == "bad_signature"


def test_changing_the_mac_or_the_kid(tmp_path: Path, ring: Keyring) -> None:
    wire = sign_envelope(ring, an_envelope()).to_json()
    flipped = ("1" if wire["hmac"][0] != "1" else "2") + wire["hmac"][1:]
    assert rejection(verify_envelope, ring, dict(wire, hmac=flipped)) == "bad_signature"
    assert rejection(verify_envelope, ring, dict(wire, kid="k9")) == "unknown_key"
    # Another key of the ring named in `kid`: still the wrong MAC.
    write_key(tmp_path / "keys", new_secret(), "k2")
    two = Keyring.load(make_cfg(tmp_path))
    assert rejection(verify_envelope, two, dict(wire, kid="k2")) == "bad_signature"


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
    ring: Keyring, field: str, value: Any
) -> None:
    """The signer's key does not make a wrong type right: `1` is not `true`."""
    wire = sign_envelope(ring, an_envelope()).to_json()
    if value == "UPPER":
        value = str(uuid.uuid4()).upper()
    elif value == "uuid1":
        value = str(uuid.uuid1())
    wire[field] = value
    wire["hmac"] = mac(ring.get("k1").secret, wire)
    assert rejection(verify_envelope, ring, wire) == "malformed"


def test_bool_and_int_sign_differently() -> None:
    assert canonical({"a": True}) != canonical({"a": 1})
    assert canonical({"a": 600}) != canonical({"a": 600.0})


def test_result_round_trip_and_every_field(ring: Keyring) -> None:
    signed = sign_result(ring, a_result())
    wire = json.loads(json.dumps(signed.to_json()))
    assert verify_result(ring, wire) == signed
    changes: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "answered_by": "devbox",
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
    assert set(changes) | {"schema", "kid", "hmac"} == set(wire)
    for field, value in changes.items():
        assert wire[field] != value
        assert rejection(verify_result, ring, dict(wire, **{field: value})) == "bad_signature", (
            field
        )


def test_v2_signature(ring: Keyring) -> None:
    secret = ring.get("k1").secret
    fields = {
        "id": str(uuid.uuid4()),
        "from": "devbox",
        "to": "gpubox",
        "created": "2025-01-02T03:04:05.123456+00:00",
        "priority": "normal",
        "request": "old style",
    }
    obj = {"schema": 2, **fields, "hmac": sign_v2(secret, fields)}
    verify_v2(ring, parse_v2(obj))
    assert rejection(verify_v2, ring, parse_v2(dict(obj, request="new style"))) == "bad_signature"


# -- the key ring --------------------------------------------------------------------------


def test_key_files_are_written_0600_and_never_overwritten(tmp_path: Path) -> None:
    key = write_key(tmp_path / "keys", new_secret())
    assert key.kid == fingerprint(key.secret)
    assert os.stat(key.path).st_mode & 0o777 == 0o600
    assert read_key(key.path) == key.secret
    with pytest.raises(ConfigError, match="already exists"):
        write_key(tmp_path / "keys", new_secret(), key.kid)
    with pytest.raises(ConfigError, match="not a valid key id"):
        write_key(tmp_path / "keys", new_secret(), "../evil")


def test_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    key = write_key(tmp_path / "keys", new_secret(), "k1")
    os.chmod(key.path, 0o644)
    with pytest.raises(ConfigError, match=r"mode 0644.*chmod 600"):
        Keyring.load(make_cfg(tmp_path))


def test_short_key_and_symlinked_key_are_refused(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    fd = os.open(keys / "short.key", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"tooshort\n")
    os.close(fd)
    with pytest.raises(ConfigError, match="shorter than 32 bytes"):
        Keyring.load(make_cfg(tmp_path))
    os.unlink(keys / "short.key")
    real = write_key(tmp_path / "elsewhere", new_secret(), "real")
    os.symlink(real.path, keys / "link.key")
    with pytest.raises((ConfigError, OSError)):
        Keyring.load(make_cfg(tmp_path))


def test_empty_ring_is_an_error_when_required(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    with pytest.raises(ConfigError, match="dispatch keys new"):
        Keyring.load(make_cfg(tmp_path))
    assert Keyring.load(make_cfg(tmp_path), required=False).keys == ()


def test_newest_key_signs_and_older_keys_still_verify(tmp_path: Path) -> None:
    old = write_key(tmp_path / "keys", new_secret(), "old")
    os.utime(old.path, (1_000_000, 1_000_000))
    old_ring = Keyring.load(make_cfg(tmp_path))
    signed_before = sign_envelope(old_ring, an_envelope())
    write_key(tmp_path / "keys", new_secret(), "new")
    ring = Keyring.load(make_cfg(tmp_path))
    assert ring.signing_key().kid == "new"
    assert sign_envelope(ring, an_envelope()).kid == "new"
    assert verify_envelope(ring, signed_before.to_json()) == signed_before
    pinned = Keyring.load(make_cfg(tmp_path, key_id="old"))
    assert pinned.signing_key().kid == "old"
    with pytest.raises(ConfigError, match="names no key"):
        Keyring.load(make_cfg(tmp_path, key_id="gone"))


def test_share_key_is_a_fallback_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = make_cfg(tmp_path)
    (tmp_path / "keys").mkdir()  # empty ring
    (cfg.root / "logs").mkdir(parents=True)
    legacy = cfg.root / "keys" / "hmac.key"
    legacy.parent.mkdir()
    secret = new_secret()
    fd = os.open(legacy, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, secret + b"\n")
    os.close(fd)
    node = Node(cfg)
    ring = node.keys
    assert ring.fallback is True
    assert [k.secret for k in ring] == [secret]
    assert ring.signing_key().kid == fingerprint(secret)
    assert "key_fallback" in capsys.readouterr().err
    audit = (cfg.root / "logs" / "gpubox.jsonl").read_text()
    assert '"event": "key_fallback"' in audit
    # Readable by others: refused even there.
    os.chmod(legacy, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        Keyring.load(cfg)
    os.chmod(legacy, 0o600)
    # With a key of its own, the node ignores the share's key.
    write_key(tmp_path / "keys", new_secret(), "own")
    ring = Keyring.load(cfg)
    assert ring.fallback is False and [k.kid for k in ring] == ["own"]
