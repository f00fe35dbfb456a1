"""The one place that signs and verifies.

Schema 4: Ed25519 (the `cryptography` library) over the canonical JSON of every field but
`sig`, `kind` and the lane included. Each node signs with its own private key, and a
signature verifies only against a key pinned on this host for the node that must have made
it: a task's `from`, a result's `to` (the lane's receiver, also its `answered_by`), a
cancel's `from`. So no node can speak for another, and no key signs for another lane.

The HMAC key ring (`DISPATCH_KEY_DIR/<kid>.key`, `legacy_hmac`) is read only for older
peers: schema 3 with `DISPATCH_ACCEPT_V3=1` during a migration, the original's schema 2 with
`DISPATCH_ACCEPT_V2=1`. Nothing here signs with it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol

from dispatch.core.config import Config
from dispatch.core.errors import ConfigError, Rejection, SigningFailed, UsageError
from dispatch.core.keys import NodeKey, Pins, PublicKey, load_private
from dispatch.core.model import (
    HMAC_SCHEMA,
    SCHEMA,
    Envelope,
    Kind,
    Result,
    parse_envelope,
    parse_result,
    signature_field,
)
from dispatch.core.wire import canonical

if TYPE_CHECKING:
    # Schemas 2 and 3 only, under their migration knobs: not imported on a node's hops.
    from dispatch.core.legacy_hmac import Keyring


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
        """Through the local signer whenever its socket exists (systemd's
        dispatch-signer.socket, or the one `dispatch watch` gives its executions): then the
        signer is the one process that reads the private key, root's callers included, and
        when it cannot sign, nothing is signed (`SigningFailed`), never in-process instead.
        In-process only where no signer socket exists at all: `dispatch watch` itself,
        `dispatch demo`, a host without the units."""
        if self.cfg.signer_socket.exists():
            from dispatch.signer.client import SocketSigner

            return SocketSigner(self.cfg.signer_socket, self.cfg.node)
        try:
            return LocalSigner(load_private(self.cfg.key_dir, self.cfg.node))
        except ConfigError as exc:
            raise SigningFailed(
                f"{exc} (and no local signer at {self.cfg.signer_socket}: "
                "systemctl start dispatch-signer.socket)"
            ) from None

    @cached_property
    def pins(self) -> Pins:
        return Pins(self.cfg.peers_dir)

    @cached_property
    def legacy(self) -> Keyring:
        """The HMAC key ring, for schema 2 and 3 only."""
        from dispatch.core.legacy_hmac import Keyring

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
        from dispatch.core.legacy_hmac import verify_object

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
