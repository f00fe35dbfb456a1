"""Key files: this node's private key (0600, never through a link), pinned public keys with
where they came from, and the published key on the share, compared and never trusted."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dispatch.core.errors import ConfigError, UsageError
from dispatch.core.keys import (
    Pins,
    PublicKey,
    load_private,
    parse_line,
    publish,
    published_mismatch,
    write_private,
)


def test_private_key_is_0600_pem_and_loads_back(tmp_path: Path) -> None:
    key = write_private(tmp_path / "keys", "devbox")
    assert key.path == tmp_path / "keys" / "devbox.ed25519"
    assert key.path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "keys").stat().st_mode & 0o777 == 0o700
    assert key.path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    again = load_private(tmp_path / "keys", "devbox")
    assert again.public == key.public
    data = b"signed bytes"
    assert key.public.verifies(again.sign(data), data)
    assert not key.public.verifies(again.sign(data), data + b"!")
    with pytest.raises(ConfigError, match="keys rotate"):
        write_private(tmp_path / "keys", "devbox")
    rotated = write_private(tmp_path / "keys", "devbox", replace=True)
    assert rotated.public != key.public


def test_private_key_readable_by_others_linked_or_foreign_is_refused(tmp_path: Path) -> None:
    key = write_private(tmp_path / "keys", "devbox")
    key.path.chmod(0o640)
    with pytest.raises(ConfigError, match=r"mode 0640.*chmod 600"):
        load_private(tmp_path / "keys", "devbox")
    key.path.chmod(0o600)
    link = tmp_path / "keys" / "laptop.ed25519"
    link.symlink_to(key.path)
    with pytest.raises(ConfigError, match="cannot open key"):
        load_private(tmp_path / "keys", "laptop")
    rsa_like = tmp_path / "keys" / "other.ed25519"
    fd = os.open(rsa_like, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"not a key\n")
    os.close(fd)
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        load_private(tmp_path / "keys", "other")
    with pytest.raises(ConfigError, match="dispatch init"):
        load_private(tmp_path / "keys", "absent")


def test_key_id_and_fingerprint_are_the_documented_ones() -> None:
    private = Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    key = PublicKey("devbox", raw)
    assert key.kid == "ed" + hashlib.sha256(raw).hexdigest()[:16]
    digest = base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
    assert key.fingerprint == "SHA256:" + digest
    assert key.line() == f"dispatch-ed25519 {base64.b64encode(raw).decode()} devbox"
    assert parse_line(f"# a comment\n\n{key.line()}\n", node="devbox") == key


def test_parse_line_refuses_what_is_not_one_nodes_key() -> None:
    line = PublicKey("devbox", b"\x01" * 32).line()
    with pytest.raises(UsageError, match="devbox's key, not laptop's"):
        parse_line(line, node="laptop")
    for text in (
        "ssh-ed25519 AAAA devbox",
        "dispatch-ed25519 AQID devbox",  # 3 bytes
        "dispatch-ed25519 @@@@ devbox",
        line.replace("devbox", "Dev"),
        "",
    ):
        with pytest.raises(UsageError):
            parse_line(text)


def test_pins_record_where_each_key_came_from(tmp_path: Path) -> None:
    pins = Pins(tmp_path / "peers")
    first, second = PublicKey("devbox", b"\x01" * 32), PublicKey("devbox", b"\x02" * 32)
    assert pins.keys_of("devbox") == () and pins.nodes() == []
    assert pins.add(first, "/tmp/devbox.pub")
    assert not pins.add(first, "elsewhere")  # already pinned: unchanged
    assert pins.add(second, "rotation statement\nsigned by x")
    keys = pins.keys_of("devbox")
    assert [k.raw for k in keys] == [first.raw, second.raw]
    assert keys[0].source == "/tmp/devbox.pub" and keys[0].pinned_at.endswith("Z")
    assert keys[1].source == "rotation statement signed by x"  # one line in the file
    text = pins.path("devbox").read_text()
    assert text.startswith("# dispatch: public keys pinned for devbox")
    assert f"{first.line()} pinned={keys[0].pinned_at} from=/tmp/devbox.pub\n" in text
    assert pins.nodes() == ["devbox"]
    assert pins.remove("devbox", first.kid) == [keys[0]]
    assert [k.raw for k in pins.keys_of("devbox")] == [second.raw]
    last = pins.keys_of("devbox")
    assert pins.remove("devbox") == list(last)
    assert not pins.path("devbox").exists() and pins.remove("devbox") == []


def test_a_pin_file_naming_another_node_is_an_error(tmp_path: Path) -> None:
    pins = Pins(tmp_path / "peers")
    pins.add(PublicKey("devbox", b"\x01" * 32), "test")
    os.rename(pins.path("devbox"), pins.path("laptop"))
    with pytest.raises(ConfigError, match="devbox's key, not laptop's"):
        pins.keys_of("laptop")


def test_published_keys_are_compared_never_adopted(tmp_path: Path) -> None:
    root = tmp_path / "share"
    root.mkdir()
    pins = Pins(tmp_path / "peers")
    real, other = PublicKey("devbox", b"\x01" * 32), PublicKey("devbox", b"\x02" * 32)
    assert published_mismatch(pins, root, "devbox") == ""  # nothing published
    publish(root, other)
    assert published_mismatch(pins, root, "devbox") == ""  # nothing pinned: doctor says so
    pins.add(real, "test")
    problem = published_mismatch(pins, root, "devbox")
    assert other.fingerprint in problem and real.fingerprint in problem
    assert problem.endswith(": refused")
    assert [k.raw for k in pins.keys_of("devbox")] == [real.raw]
    publish(root, real)
    assert published_mismatch(pins, root, "devbox") == ""
    # Whatever else sits at its place on the share is reported, never followed.
    path = root / "nodes" / "devbox.pub"
    path.unlink()
    os.mkfifo(path)
    assert "special file" in published_mismatch(pins, root, "devbox")
    path.unlink()
    path.symlink_to(tmp_path / "peers" / "devbox.pub")
    assert "symbolic link" in published_mismatch(pins, root, "devbox")
