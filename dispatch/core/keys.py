"""Ed25519 key files: this node's private key, the public keys of peers pinned on this host,
and the public key a node publishes on the share, which is a convenience and never trusted:
only a pin (made by an operator, or from a rotation statement a pinned key signed) verifies.

A public key travels as one line, `dispatch-ed25519 <base64 of the 32 raw bytes> <node>`."""

from __future__ import annotations

import base64
import binascii
import os
import stat
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from dispatch.core.digests import sha256_digest, sha256_hex
from dispatch.core.errors import ConfigError, Rejection, UsageError
from dispatch.core.fsio import atomic_write, read_regular, write_new
from dispatch.core.knobs import valid_node
from dispatch.core.wire import now_utc, rfc3339

if TYPE_CHECKING:
    # Imported where used: only commands that sign or verify pay for loading the library.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ALGORITHM = "dispatch-ed25519"
PRIVATE_SUFFIX = ".ed25519"
PIN_SUFFIX = ".pub"
MAX_PIN_BYTES = 64 * 1024


@dataclass(frozen=True)
class PublicKey:
    node: str
    raw: bytes
    pinned_at: str = ""
    source: str = ""

    @property
    def kid(self) -> str:
        """The key id envelopes carry: short, and the same wherever the key is pinned."""
        return "ed" + sha256_hex(self.raw)[:16]

    @property
    def fingerprint(self) -> str:
        """What a person compares between hosts (OpenSSH's style)."""
        digest = base64.b64encode(sha256_digest(self.raw)).decode("ascii")
        return "SHA256:" + digest.rstrip("=")

    def line(self) -> str:
        return f"{ALGORITHM} {base64.b64encode(self.raw).decode('ascii')} {self.node}"

    def verifies(self, signature: bytes, data: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except InvalidSignature:
            return False
        return True


def parse_line(text: str, *, node: str | None = None) -> PublicKey:
    """The first key line of `text` (comments and blank lines skipped); `node`, when given,
    must be the node the line names."""
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(" ", 3)
        if len(parts) < 3 or parts[0] != ALGORITHM:
            raise UsageError(f"not a {ALGORITHM} public key line: {line[:60]!r}")
        try:
            raw = base64.b64decode(parts[1], validate=True)
        except (binascii.Error, ValueError):
            raise UsageError("the key line's key is not base64") from None
        if len(raw) != 32:
            raise UsageError(f"an Ed25519 public key is 32 bytes, this one is {len(raw)}")
        if not valid_node(parts[2]):
            raise UsageError(f"the key line names no valid node: {parts[2][:40]!r}")
        if node is not None and parts[2] != node:
            raise UsageError(f"the key line is {parts[2]}'s key, not {node}'s")
        pinned_at, source = "", ""
        if len(parts) == 4 and parts[3].startswith("pinned="):
            pinned_at, _, source = parts[3][len("pinned=") :].partition(" from=")
        return PublicKey(parts[2], raw, pinned_at, source)
    raise UsageError("no public key line found")


@dataclass(frozen=True)
class NodeKey:
    """This node's private key. Only the signer opens it."""

    node: str
    path: Path
    private: Ed25519PrivateKey

    @cached_property
    def public(self) -> PublicKey:
        public = self.private.public_key()
        if hasattr(public, "public_bytes_raw"):  # cryptography >= 40
            raw: bytes = public.public_bytes_raw()
        else:
            from cryptography.hazmat.primitives import serialization

            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return PublicKey(self.node, raw)

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)


def private_key_path(key_dir: Path, node: str) -> Path:
    return key_dir / f"{node}{PRIVATE_SUFFIX}"


def read_owner_only(fd: int, path: Path, limit: int) -> bytes:
    """A key file's bytes (and the descriptor closed): a regular file no one but its owner
    can read, or one ConfigError that says how to fix it."""
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"key {path} is not a regular file")
        if info.st_mode & 0o077:
            raise ConfigError(
                f"key {path} has mode {stat.S_IMODE(info.st_mode):04o}; "
                f"it must be readable by its owner only: chmod 600 {path}"
            )
        return os.read(fd, limit)
    finally:
        os.close(fd)


def load_private(key_dir: Path, node: str) -> NodeKey:
    path = private_key_path(key_dir, node)
    try:
        # O_NOFOLLOW: a key swapped for a symbolic link must not redirect us.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(
            f"no signing key {path}: run `dispatch init` (or `dispatch keys new`) on this host"
        ) from None
    except PermissionError:
        raise ConfigError(
            f"cannot read {path}: the key is root's; sign as root (or through the signer)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot open key {path}: {exc.strerror}") from None
    data = read_owner_only(fd, path, 8192)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    seed = _pkcs8_seed(data)
    if seed is None:
        raise ConfigError(f"key {path} is not an unencrypted PEM private key (Ed25519)")
    return NodeKey(node, path, Ed25519PrivateKey.from_private_bytes(seed))


def read_private_file(source: Path, node: str) -> NodeKey:
    """This node's key pair from a PEM file made elsewhere (a backup, the host it moves
    from): peers' pins of it stay valid. Read only, never followed if it is a link."""
    try:
        data = read_regular(source, 8192)
    except FileNotFoundError:
        raise UsageError(f"--key-file {source}: no such file") from None
    except (OSError, Rejection) as exc:
        raise UsageError(f"--key-file {source}: cannot read it: {exc}") from None
    seed = _pkcs8_seed(data)
    if seed is None:
        raise UsageError(
            f"--key-file {source}: not an unencrypted PEM Ed25519 private key "
            "(what /etc/dispatch/keys/<node>.ed25519 holds)"
        )
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return NodeKey(node, source, Ed25519PrivateKey.from_private_bytes(seed))


# RFC 8410: an Ed25519 PKCS#8 key is this DER prefix and the 32-byte seed. Parsed here, the
# PEM needs no part of the library but Ed25519 itself: every signing process loads less.
PKCS8_ED25519 = bytes.fromhex("302e020100300506032b657004220420")


def _pkcs8_seed(data: bytes) -> bytes | None:
    lines = data.decode("ascii", "replace").strip().splitlines()
    if len(lines) < 3 or lines[0] != "-----BEGIN PRIVATE KEY-----":
        return None
    if lines[-1] != "-----END PRIVATE KEY-----":
        return None
    try:
        der = base64.b64decode("".join(lines[1:-1]), validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(der) != len(PKCS8_ED25519) + 32 or not der.startswith(PKCS8_ED25519):
        return None
    return der[len(PKCS8_ED25519) :]


def write_private(
    key_dir: Path, node: str, private: Ed25519PrivateKey | None = None, *, replace: bool = False
) -> NodeKey:
    """A key pair (new unless given), its private half at `<key_dir>/<node>.ed25519`, mode
    0600. With `replace` (rotation) it takes the old key's place in one rename."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = private_key_path(key_dir, node)
    if path.exists() and not replace:
        raise ConfigError(f"key {path} already exists: `dispatch keys rotate` replaces it")
    private = private or Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = key_dir / f".{path.name}.{os.getpid()}.tmp"
    write_new(tmp, pem, 0o600)
    os.rename(tmp, path)
    return NodeKey(node, path, private)


@dataclass(frozen=True)
class Pins:
    """Public keys pinned on this host: `<peers_dir>/<node>.pub`, one key line each, with
    when and from where it was pinned. Several lines: a rotation under way."""

    directory: Path

    def path(self, node: str) -> Path:
        return self.directory / f"{node}{PIN_SUFFIX}"

    def keys_of(self, node: str) -> tuple[PublicKey, ...]:
        if not valid_node(node):
            return ()
        try:
            data = read_regular(self.path(node), MAX_PIN_BYTES)
        except FileNotFoundError:
            return ()
        except Rejection as exc:
            raise ConfigError(f"pinned keys {self.path(node)}: {exc}") from None
        keys = []
        for line in data.decode("utf-8", "replace").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                try:
                    key = parse_line(line, node=node)
                except UsageError as exc:
                    raise ConfigError(f"pinned keys {self.path(node)}: {exc}") from None
                keys.append(key)
        return tuple(keys)

    def nodes(self) -> list[str]:
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        return [
            name[: -len(PIN_SUFFIX)]
            for name in names
            if name.endswith(PIN_SUFFIX) and valid_node(name[: -len(PIN_SUFFIX)])
        ]

    def add(self, key: PublicKey, source: str) -> bool:
        """Pin `key` for its node; False when it was pinned already."""
        existing = self.keys_of(key.node)
        if any(k.raw == key.raw for k in existing):
            return False
        pinned = PublicKey(key.node, key.raw, rfc3339(now_utc()), " ".join(source.split()))
        self._write(key.node, (*existing, pinned))
        return True

    def remove(self, node: str, kid: str = "") -> list[PublicKey]:
        """Unpin `node`'s key `kid` (every key of `node` without one); what was removed."""
        existing = self.keys_of(node)
        gone = [k for k in existing if not kid or k.kid == kid]
        if not gone:
            return []
        kept = tuple(k for k in existing if k not in gone)
        if kept:
            self._write(node, kept)
        else:
            os.unlink(self.path(node))
        return gone

    def _write(self, node: str, keys: tuple[PublicKey, ...]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o755)
        lines = [f"# dispatch: public keys pinned for {node}; only these verify its signatures"]
        lines += [f"{k.line()} pinned={k.pinned_at} from={k.source}" for k in keys]
        atomic_write(self.path(node), ("\n".join(lines) + "\n").encode("utf-8"), mode=0o644)


def published_path(root: Path, node: str) -> Path:
    return root / "nodes" / f"{node}{PIN_SUFFIX}"


def publish(root: Path, key: PublicKey) -> Path:
    path = published_path(root, key.node)
    path.parent.mkdir(exist_ok=True)
    atomic_write(path, (key.line() + "\n").encode("ascii"))
    return path


def read_published(root: Path, node: str) -> PublicKey | None:
    """The key `node` published on the share: anyone may have written it; compare, never pin."""
    try:
        text = read_regular(published_path(root, node), MAX_PIN_BYTES).decode("utf-8")
        return parse_line(text, node=node)
    except FileNotFoundError:
        return None
    except (OSError, Rejection, UnicodeDecodeError, UsageError) as exc:
        raise Rejection("bad_published_key", f"{published_path(root, node)}: {exc}") from None


def published_mismatch(pins: Pins, root: Path, node: str) -> str:
    """Why `node`'s published key is refused ("" when absent or pinned): a published key
    that differs from every pin is reported, never adopted."""
    try:
        published = read_published(root, node)
    except Rejection as exc:
        return str(exc)
    if published is None:
        return ""
    pinned = pins.keys_of(node)
    if not pinned or any(k.raw == published.raw for k in pinned):
        return ""
    return (
        f"the key {node} publishes on the share ({published.fingerprint}) is not the one "
        f"pinned here ({', '.join(k.fingerprint for k in pinned)}): refused"
    )
