"""The HMAC era (dispatch.core.legacy_hmac): schema-2 envelopes verify against the ring, and
the ring's key files are private, never overwritten, never followed. Schema 3 through the
verifiers: test_signing."""

from __future__ import annotations

import os
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dispatch.core.errors import ConfigError
from dispatch.core.legacy_hmac import (
    Keyring,
    fingerprint,
    new_secret,
    parse_v2,
    read_key,
    verify_v2,
    write_key,
)
from dispatch.core.node import Node
from tests.unit.core.test_signing import make_cfg, rejection
from tests.unit.helpers import sign_v2


def test_v2_signature(tmp_path: Path) -> None:
    secret = new_secret()
    write_key(tmp_path / "gpubox" / "keys", secret, "k1")
    ring = Keyring.load(make_cfg(tmp_path))
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


def test_hmac_key_files_are_written_0600_and_never_overwritten(tmp_path: Path) -> None:
    key = write_key(tmp_path / "keys", new_secret())
    assert key.kid == fingerprint(key.secret)
    assert os.stat(key.path).st_mode & 0o777 == 0o600
    assert read_key(key.path) == key.secret
    with pytest.raises(ConfigError, match="already exists"):
        write_key(tmp_path / "keys", new_secret(), key.kid)
    with pytest.raises(ConfigError, match="not a valid key id"):
        write_key(tmp_path / "keys", new_secret(), "../evil")


def test_hmac_key_readable_by_others_short_or_symlinked_is_refused(tmp_path: Path) -> None:
    cfg = replace(make_cfg(tmp_path), key_dir=tmp_path / "keys")
    key = write_key(tmp_path / "keys", new_secret(), "k1")
    os.chmod(key.path, 0o644)
    with pytest.raises(ConfigError, match=r"mode 0644.*chmod 600"):
        Keyring.load(cfg)
    os.unlink(key.path)
    fd = os.open(tmp_path / "keys" / "short.key", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"tooshort\n")
    os.close(fd)
    with pytest.raises(ConfigError, match="shorter than 32 bytes"):
        Keyring.load(cfg)
    os.unlink(tmp_path / "keys" / "short.key")
    real = write_key(tmp_path / "elsewhere", new_secret(), "real")
    os.symlink(real.path, tmp_path / "keys" / "link.key")
    with pytest.raises((ConfigError, OSError)):
        Keyring.load(cfg)


def test_the_share_hmac_key_is_never_read_and_the_node_says_how_to_import_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The share carries bytes, never authority: the original's fleet key on it is readable
    # by anyone who reads the share, so it verifies nothing here.
    cfg = make_cfg(tmp_path, accept_v2=True)
    cfg.key_dir.mkdir(parents=True)  # empty ring
    (cfg.root / "logs").mkdir(parents=True)
    legacy = cfg.root / "keys" / "hmac.key"
    legacy.parent.mkdir()
    fd = os.open(legacy, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, new_secret() + b"\n")
    os.close(fd)
    ring = Node(cfg).keys.legacy
    assert list(ring) == [] and ring.share_key == legacy
    err = capsys.readouterr().err
    assert "share_key_ignored" in err and "dispatch keys import" in err
    audit = (cfg.root / "logs" / "gpubox.jsonl").read_text()
    assert '"event": "share_key_ignored"' in audit
    # Not even its mode is checked: it is not opened (a world-readable one is no error).
    os.chmod(legacy, 0o644)
    assert list(Keyring.load(cfg)) == []
    # Without a migration knob nothing is said.
    _ = Node(replace(cfg, accept_v2=False)).keys
    assert "share_key_ignored" not in capsys.readouterr().err
    write_key(cfg.key_dir, new_secret(), "own")
    ring = Keyring.load(cfg)
    assert ring.share_key is None and [k.kid for k in ring] == ["own"]


def test_parse_v2_types_its_unsigned_fields_then_drops_them() -> None:
    obj: dict[str, Any] = {
        "schema": 2,
        "id": str(uuid.uuid4()),
        "from": "devbox",
        "to": "gpubox",
        "created": "2025-01-02T03:04:05.123456+00:00",
        "priority": "low",
        "request": "x",
        "callback": "file",
        "require_ack": False,
        "require_dangerous": True,
        "timeout_s": 999999,
        "max_output_bytes": 5,
        "hmac": "a" * 64,
    }
    env = parse_v2(obj)
    assert (
        env.signed_text()
        == "|".join([obj["id"], "devbox", "gpubox", obj["created"], "low", "x"]).encode()
    )
    assert not hasattr(env, "require_dangerous")
    assert rejection(parse_v2, {**obj, "require_dangerous": 1}) == "malformed"
    assert rejection(parse_v2, {**obj, "timeout_s": True}) == "malformed"
    assert rejection(parse_v2, {**obj, "kid": "k1"}) == "malformed"  # not a v2 field
    assert parse_v2({k: v for k, v in obj.items() if k != "callback"}).callback.value == "file"
