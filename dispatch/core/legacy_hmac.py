"""Schemas 2 and 3, what peers of the HMAC era send: the original project's schema-2
envelope (six signed fields) and the HMAC key ring (`DISPATCH_KEY_DIR/<kid>.key`, on this
host only: never the original's `<root>/keys/hmac.key`) that verifies both. Read only during a
migration (DISPATCH_ACCEPT_V2, DISPATCH_ACCEPT_V3); nothing signs with it. `dispatch keys
import` adds an original peer's key to the ring."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dispatch.core.config import Config
from dispatch.core.errors import ConfigError, NotFound, Rejection
from dispatch.core.fsio import write_new
from dispatch.core.keys import read_owner_only
from dispatch.core.model import HEX64_RE, KID_RE, Callback, Priority
from dispatch.core.wire import (
    canonical,
    enum_field,
    exact_fields,
    id_field,
    node_field,
    require,
    time_field,
)

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
    exact_fields(obj, V2_FIELDS, V2_REQUIRED, "schema-2 envelope")
    for name, kind in (
        ("require_ack", bool),
        ("require_dangerous", bool),
        ("timeout_s", int),
        ("max_output_bytes", int),
    ):
        if name in obj:
            require(obj, name, kind)
    mac: str = require(obj, "hmac", str)
    if not HEX64_RE.fullmatch(mac):
        raise Rejection("malformed", "field 'hmac' is not 64 lowercase hex digits")
    request: str = require(obj, "request", str)
    if not request.strip():
        raise Rejection("malformed", "field 'request' is empty")
    return V2Envelope(
        id=id_field(obj, "id"),
        from_=node_field(obj, "from"),
        to=node_field(obj, "to"),
        created=time_field(obj, "created"),
        priority=enum_field(obj, "priority", Priority),
        request=request,
        callback=enum_field(obj, "callback", Callback) if "callback" in obj else Callback.FILE,
        hmac=mac,
    )


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
    data = read_owner_only(fd, path, 4096)
    # The original keyed HMAC with the file's stripped text; keep that so its keys work.
    secret = data.strip()
    if len(secret) < 32:
        raise ConfigError(f"key {path} is shorter than 32 bytes")
    return secret


@dataclass(frozen=True)
class Keyring:
    keys: tuple[Key, ...]
    # The original's fleet key, <root>/keys/hmac.key, lies on the share while this ring is
    # empty. Never read: a key anyone who reads the share can read authenticates nothing
    # (docs/design.md). Only so that the node can say how to import it.
    share_key: Path | None = None

    @classmethod
    def load(cls, cfg: Config, *, required: bool = False) -> Keyring:
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
        if required and not keys:
            raise ConfigError(f"no HMAC key in {cfg.key_dir} (`dispatch keys import`)")
        share_key = None
        if not keys:
            legacy = cfg.root / "keys" / "hmac.key"
            if os.path.lexists(legacy):
                share_key = legacy
        return cls(tuple(keys), share_key)

    def get(self, kid: str) -> Key:
        for key in self.keys:
            if key.kid == kid:
                return key
        raise NotFound(f"unknown key id {kid!r}")

    def __iter__(self) -> Iterator[Key]:
        return iter(self.keys)


def _mac(secret: bytes, payload: bytes) -> str:
    return hmac.new(secret, payload, hashlib.sha256).hexdigest()


def verify_object(ring: Keyring, obj: dict[str, Any], what: str) -> None:
    """Schema 3: the MAC over the object exactly as received (minus `hmac`)."""
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


def verify_v2(ring: Keyring, envelope: V2Envelope) -> None:
    """Schema 2 carries no key id: any key of the ring may have signed it."""
    payload = envelope.signed_text()
    for key in ring:
        if hmac.compare_digest(_mac(key.secret, payload), envelope.hmac):
            return
    raise Rejection("bad_signature", "schema-2 envelope signature does not verify")


def new_secret() -> bytes:
    import secrets  # keys are made rarely: not an import of every hop

    return secrets.token_hex(32).encode("ascii")


def write_key(key_dir: Path, secret: bytes, kid: str = "") -> Key:
    """Add an HMAC key to the ring (`dispatch keys import`: an original peer's key)."""
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
