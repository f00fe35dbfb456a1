"""The one place that signs and verifies: HMAC-SHA256 over canonical JSON, keyed by key id.

Keys live on each host (`DISPATCH_KEY_DIR/<kid>.key`, mode 0600), never on the share; the
original's `<root>/keys/hmac.key` is read only when the ring is empty, with a warning."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dispatch.core.config import Config
from dispatch.core.errors import ConfigError, NotFound, Rejection
from dispatch.core.fsio import write_new
from dispatch.core.model import KID_RE, Envelope, Result, V2Envelope, parse_envelope, parse_result
from dispatch.core.wire import canonical


@dataclass(frozen=True)
class Key:
    kid: str
    secret: bytes
    path: Path
    mtime: float


def fingerprint(secret: bytes) -> str:
    """Default key id: the same key gives the same id on every host that holds it."""
    return "k" + hashlib.sha256(b"dispatch-kid:" + secret).hexdigest()[:12]


def read_key(path: Path) -> bytes:
    # O_NOFOLLOW: a key ring entry swapped for a symlink must not redirect us.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"key {path} is not a regular file")
        if info.st_mode & 0o077:
            raise ConfigError(
                f"key {path} has mode {stat.S_IMODE(info.st_mode):04o}; "
                f"it must be readable by its owner only: chmod 600 {path}"
            )
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    # The original keyed HMAC with the file's stripped text; keep that so its keys work.
    secret = data.strip()
    if len(secret) < 32:
        raise ConfigError(f"key {path} is shorter than 32 bytes")
    return secret


@dataclass(frozen=True)
class Keyring:
    keys: tuple[Key, ...]
    preferred: str = ""
    fallback: bool = False

    @classmethod
    def load(cls, cfg: Config, *, required: bool = True) -> Keyring:
        keys: list[Key] = []
        if cfg.key_dir.is_dir():
            try:
                entries = sorted(cfg.key_dir.glob("*.key"))
            except PermissionError as exc:
                raise ConfigError(f"cannot read key directory {cfg.key_dir}: {exc}") from None
            for path in entries:
                kid = path.name[: -len(".key")]
                if not KID_RE.fullmatch(kid):
                    raise ConfigError(f"key file name {path.name!r} is not a valid key id")
                try:
                    secret = read_key(path)
                except PermissionError as exc:
                    raise ConfigError(f"cannot read key {path}: {exc.strerror}") from None
                keys.append(Key(kid, secret, path, path.stat().st_mtime))
        fallback = False
        if not keys:
            legacy = cfg.root / "keys" / "hmac.key"
            if legacy.is_file():
                secret = read_key(legacy)
                keys.append(Key(fingerprint(secret), secret, legacy, legacy.stat().st_mtime))
                fallback = True
        if required and not keys:
            raise ConfigError(
                f"no signing key in {cfg.key_dir}: run `dispatch keys new` "
                "(or copy a peer's key there with `dispatch keys import`)"
            )
        if cfg.key_id and cfg.key_id not in {k.kid for k in keys}:
            raise ConfigError(f"DISPATCH_KEY_ID={cfg.key_id} names no key in {cfg.key_dir}")
        return cls(tuple(keys), cfg.key_id, fallback)

    def signing_key(self) -> Key:
        if not self.keys:
            raise ConfigError("no signing key")
        if self.preferred:
            return next(k for k in self.keys if k.kid == self.preferred)
        # After a rotation (`dispatch keys new`) the newest key signs; older ones still verify.
        return max(self.keys, key=lambda k: (k.mtime, k.kid))

    def get(self, kid: str) -> Key:
        for key in self.keys:
            if key.kid == kid:
                return key
        raise NotFound(f"unknown key id {kid!r}")

    def __iter__(self) -> Iterator[Key]:
        return iter(self.keys)


def _mac(secret: bytes, payload: bytes) -> str:
    return hmac.new(secret, payload, hashlib.sha256).hexdigest()


def sign_envelope(ring: Keyring, envelope: Envelope) -> Envelope:
    key = ring.signing_key()
    unsigned = envelope.signed(key.kid, "")
    return unsigned.signed(key.kid, _mac(key.secret, canonical(unsigned.body())))


def sign_result(ring: Keyring, result: Result) -> Result:
    key = ring.signing_key()
    unsigned = result.signed(key.kid, "")
    return unsigned.signed(key.kid, _mac(key.secret, canonical(unsigned.body())))


def verify_object(ring: Keyring, obj: dict[str, Any], what: str) -> None:
    """The MAC is checked over the object exactly as received (minus `hmac`), so nothing a
    parser normalises can hide a change."""
    try:
        key = ring.get(str(obj.get("kid")))
    except NotFound:
        raise Rejection(
            "unknown_key", f"{what} is signed with unknown key id {str(obj.get('kid'))[:64]!r}"
        ) from None
    body = {k: v for k, v in obj.items() if k != "hmac"}
    expected = _mac(key.secret, canonical(body))
    if not hmac.compare_digest(expected, str(obj.get("hmac", ""))):
        raise Rejection("bad_signature", f"{what} signature does not verify")


def verify_envelope(ring: Keyring, obj: dict[str, Any]) -> Envelope:
    envelope = parse_envelope(obj)
    verify_object(ring, obj, "envelope")
    return envelope


def verify_result(ring: Keyring, obj: dict[str, Any]) -> Result:
    result = parse_result(obj)
    verify_object(ring, obj, "result")
    return result


def sign_object(ring: Keyring, body: dict[str, Any]) -> dict[str, Any]:
    """Add `kid` and `hmac` to a JSON object, as envelopes and results are signed."""
    key = ring.signing_key()
    unsigned = {**body, "kid": key.kid}
    return {**unsigned, "hmac": _mac(key.secret, canonical(unsigned))}


def verify_v2(ring: Keyring, envelope: V2Envelope) -> None:
    """Schema 2 carries no key id: any key of the ring may have signed it."""
    payload = envelope.signed_text()
    for key in ring:
        if hmac.compare_digest(_mac(key.secret, payload), envelope.hmac):
            return
    raise Rejection("bad_signature", "schema-2 envelope signature does not verify")


def mac_text(secret: bytes, text: str) -> str:
    return _mac(secret, text.encode("utf-8"))


def new_secret() -> bytes:
    return secrets.token_hex(32).encode("ascii")


def write_key(key_dir: Path, secret: bytes, kid: str = "") -> Key:
    kid = kid or fingerprint(secret)
    if not KID_RE.fullmatch(kid):
        raise ConfigError(f"not a valid key id: {kid!r}")
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = key_dir / f"{kid}.key"
    if path.exists():
        raise ConfigError(f"key {path} already exists")
    tmp = key_dir / f".{kid}.key.tmp"
    write_new(tmp, secret + b"\n", 0o600)
    os.rename(tmp, path)
    return Key(kid, secret, path, path.stat().st_mtime)
