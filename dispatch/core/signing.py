"""The one place that signs and verifies.

Schema 4: Ed25519 (the `cryptography` library) over the canonical JSON of every field but
`sig`, `kind` and the lane included. Each node signs with its own private key, and a
signature verifies only against a key pinned on this host for the node that must have made
it: a task's `from`, a result's `to` (the lane's receiver, also its `answered_by`), a
cancel's `from`. So no node can speak for another, and no key signs for another lane.

The HMAC key ring (`DISPATCH_KEY_DIR/<kid>.key`) is read only for older peers: schema 3
with `DISPATCH_ACCEPT_V3=1` during a migration, the original's schema 2 with
`DISPATCH_ACCEPT_V2=1`. Nothing here signs with it."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from dispatch.core.config import Config
from dispatch.core.errors import ConfigError, NotFound, Rejection, UsageError
from dispatch.core.fsio import write_new
from dispatch.core.keys import NodeKey, Pins, PublicKey, load_private, private_key_path
from dispatch.core.model import (
    HMAC_SCHEMA,
    KID_RE,
    SCHEMA,
    Envelope,
    Kind,
    Result,
    V2Envelope,
    parse_envelope,
    parse_result,
    signature_field,
)
from dispatch.core.wire import canonical


class LaneEnds(Protocol):
    @property
    def from_(self) -> str: ...

    @property
    def to(self) -> str: ...


def signed_bytes(obj: dict[str, Any]) -> bytes:
    """What a schema-4 signature covers: the object exactly as received, minus `sig`, so
    nothing a parser normalises can hide a change."""
    return canonical({k: v for k, v in obj.items() if k != "sig"})


def signer_of(obj: dict[str, Any]) -> str:
    """The node whose key must have signed `obj`, by its kind."""
    kind = obj.get("kind")
    if kind in (Kind.TASK, Kind.CANCEL):
        return str(obj.get("from"))
    if kind in (Kind.RESULT, Kind.ACK):
        return str(obj.get("to"))
    if kind == Kind.ROTATE:
        return str(obj.get("node"))
    raise UsageError(f"nothing signs objects of kind {str(kind)[:20]!r}")


def check_may_sign(node: str, obj: dict[str, Any]) -> None:
    """A node's key signs only what that node may say: tasks and cancels from itself,
    results (answered by itself) and acks on lanes into itself."""
    if obj.get("schema") != SCHEMA:
        raise UsageError(f"signs schema {SCHEMA} only")
    speaker = signer_of(obj)
    if speaker != node:
        raise UsageError(
            f"this node is {node}: it signs only as itself, not as {speaker[:64]!r} "
            f"({obj.get('kind')})"
        )
    if obj.get("kind") == Kind.RESULT and obj.get("answered_by") != node:
        raise UsageError(f"a result {node} signs is answered by {node}")


class Signer(Protocol):
    @property
    def node(self) -> str: ...

    @property
    def kid(self) -> str: ...

    def sign(self, body: dict[str, Any]) -> dict[str, Any]:
        """`body` with `kid` and `sig` added."""
        ...


@dataclass(frozen=True)
class LocalSigner:
    """Signs in this process with the node's private key (which it must be able to read)."""

    key: NodeKey

    @property
    def node(self) -> str:
        return self.key.node

    @property
    def kid(self) -> str:
        return self.key.public.kid

    def sign(self, body: dict[str, Any]) -> dict[str, Any]:
        check_may_sign(self.key.node, body)
        unsigned = {k: v for k, v in body.items() if k not in ("sig", "hmac")}
        unsigned["kid"] = self.kid
        return {**unsigned, "sig": self.key.sign(canonical(unsigned)).hex()}


@dataclass(frozen=True)
class NodeKeys:
    """What `node.keys` is: this node's signer and the pins that verify every node."""

    cfg: Config

    @cached_property
    def signer(self) -> Signer:
        """In-process when this process may read the key (root: promote, exec, the signer
        itself); else through the local signer's socket, which decides what it signs."""
        path = private_key_path(self.cfg.key_dir, self.cfg.node)
        if os.geteuid() == 0 or os.access(path, os.R_OK) or not self.cfg.signer_socket.exists():
            return LocalSigner(load_private(self.cfg.key_dir, self.cfg.node))
        from dispatch.signer.client import SocketSigner

        return SocketSigner(self.cfg.signer_socket, self.cfg.node)

    @cached_property
    def pins(self) -> Pins:
        return Pins(self.cfg.peers_dir)

    @cached_property
    def legacy(self) -> Keyring:
        """The HMAC key ring, for schema 2 and 3 only."""
        return Keyring.load(self.cfg, required=False)

    def own_kid(self) -> str:
        """The key id this node signs with, from its own pin (no private key read); ""
        when it pinned none."""
        own = self.pins.keys_of(self.cfg.node)
        return own[-1].kid if own else ""

    def pinned(self, node: str, kid: str, what: str) -> PublicKey:
        keys = self.pins.keys_of(node)
        for key in keys:
            if key.kid == kid:
                return key
        if not keys:
            raise Rejection(
                "unknown_key",
                f"{what} claims to come from {node}, and no key of {node} is pinned here "
                f"(dispatch peers add {node} KEYFILE)",
            )
        raise Rejection(
            "unknown_key", f"{what} is signed with key {kid[:64]!r}, not one pinned for {node}"
        )


def verify_signed(keys: NodeKeys, obj: dict[str, Any], kind: Kind, what: str) -> None:
    """Check a schema-4 object's signature against the key pinned for the node that must
    have signed it (its kind says which). Its shape is the caller's to check."""
    schema, kid, sig = signature_field(obj, kind)
    if schema != SCHEMA:
        raise Rejection("malformed", f"{what} is not schema {SCHEMA}")
    key = keys.pinned(signer_of(obj), kid, what)
    if not key.verifies(bytes.fromhex(sig), signed_bytes(obj)):
        raise Rejection("bad_signature", f"{what} signature does not verify")


def _legacy_gate(keys: NodeKeys, obj: dict[str, Any], what: str) -> None:
    if obj.get("schema") == HMAC_SCHEMA and not isinstance(obj.get("schema"), bool):
        if not keys.cfg.accept_v3:
            raise Rejection(
                "schema3_disabled",
                f"schema-3 {what} (a shared HMAC key), and this node does not accept them "
                "(DISPATCH_ACCEPT_V3=0)",
            )
        verify_object(keys.legacy, obj, what)


def sign_envelope(keys: NodeKeys, envelope: Envelope) -> Envelope:
    signed = keys.signer.sign(envelope.body())
    # The local signer sets an execution's chain fields itself: keep what it signed.
    parent, hops = signed.get("parent"), signed.get("hops")
    if (parent, hops) != (envelope.parent, envelope.hops):
        if not (parent is None or isinstance(parent, str)) or not isinstance(hops, int):
            raise UsageError("the signer returned chain fields of the wrong type")
        envelope = dataclasses.replace(envelope, parent=parent, hops=hops)
    return envelope.signed(signed["kid"], signed["sig"])


def sign_result(keys: NodeKeys, result: Result, lane: LaneEnds) -> Result:
    laned = result.for_lane(lane.from_, lane.to)
    signed = keys.signer.sign(laned.body())
    return laned.signed(signed["kid"], signed["sig"])


def sign_object(keys: NodeKeys, body: dict[str, Any]) -> dict[str, Any]:
    """Add `kid` and `sig` to a JSON object (a cancel request, an ack)."""
    return keys.signer.sign(body)


def verify_envelope(keys: NodeKeys, obj: dict[str, Any]) -> Envelope:
    """A task verified against the pinned key of its `from`. The lane it arrived in is
    intake's to compare."""
    envelope = parse_envelope(obj)
    if envelope.schema == HMAC_SCHEMA:
        _legacy_gate(keys, obj, "envelope")
    else:
        verify_signed(keys, obj, Kind.TASK, "envelope")
    return envelope


def verify_result(keys: NodeKeys, obj: dict[str, Any], lane: LaneEnds) -> Result:
    """A result found in `lane`'s done/: for that lane, answered by its receiver, signed
    with a key pinned for that receiver."""
    result = parse_result(obj)
    if result.schema == HMAC_SCHEMA:
        _legacy_gate(keys, obj, "result")
        return result
    if (result.from_, result.to) != (lane.from_, lane.to):
        raise Rejection(
            "wrong_lane",
            f"result for lane {result.from_}-to-{result.to} found in {lane.from_}-to-{lane.to}",
        )
    if result.answered_by != result.to:
        raise Rejection(
            "wrong_lane", f"result answered by {result.answered_by}, not the lane's {result.to}"
        )
    verify_signed(keys, obj, Kind.RESULT, "result")
    return result


def verify_cancel(keys: NodeKeys, obj: dict[str, Any]) -> None:
    """A cancel request signed by its `from` (schema 3 under the migration knob)."""
    if obj.get("schema") == HMAC_SCHEMA:
        _legacy_gate(keys, obj, "cancel request")
    else:
        verify_signed(keys, obj, Kind.CANCEL, "cancel request")


# The HMAC ring of schemas 2 and 3, verification only.


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
    fallback: bool = False

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
        fallback = False
        if not keys:
            legacy = cfg.root / "keys" / "hmac.key"
            if legacy.is_file():
                secret = read_key(legacy)
                keys.append(Key(fingerprint(secret), secret, legacy, legacy.stat().st_mtime))
                fallback = True
        if required and not keys:
            raise ConfigError(f"no HMAC key in {cfg.key_dir} (`dispatch keys import`)")
        return cls(tuple(keys), fallback)

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


def mac_text(secret: bytes, text: str) -> str:
    return _mac(secret, text.encode("utf-8"))


def new_secret() -> bytes:
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
