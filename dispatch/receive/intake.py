"""Strict intake: from the bytes of one inbox entry to an admitted task, or a `Rejection`.

Nothing here moves files or touches state; `promote` does that with what this returns."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from dispatch.core.config import Config, DangerousPolicy
from dispatch.core.digests import sha256_hex
from dispatch.core.errors import Rejection
from dispatch.core.model import Envelope
from dispatch.core.signing import NodeKeys, verify_envelope
from dispatch.core.spool import Lane
from dispatch.core.wire import loads_strict, now_utc


@dataclass(frozen=True)
class Admitted:
    envelope: Envelope
    sha256: str
    needs_ack: bool
    v2: bool


def examine(
    cfg: Config, ring: NodeKeys, lane: Lane, name: str, data: bytes, *, check_fresh: bool = True
) -> Admitted:
    """Every check of the strict intake (docs/design.md) except replay, which needs the ledger.

    A refusal names the task (`Rejection.task_id`, which earns the sender a signed
    `rejected` result) only when the envelope authenticated and claims this very lane and
    file name: a node never signs an answer to bytes it could not verify, or the share
    would be a signing oracle for results of any id."""
    if not name.endswith(".json"):
        raise Rejection("bad_name", "not a <id>.json task file")
    obj = loads_strict(data)
    envelope, v2 = _authenticated(cfg, ring, obj)
    try:
        needs_ack = _policy(cfg, lane, name, envelope, v2, check_fresh)
    except Rejection as exc:
        if name == f"{envelope.id}.json" and (envelope.from_, envelope.to) == (
            lane.from_,
            lane.to,
        ):
            exc.task_id = envelope.id
        raise
    return Admitted(envelope, sha256_hex(data), needs_ack, v2)


def _authenticated(cfg: Config, ring: NodeKeys, obj: dict[str, Any]) -> tuple[Envelope, bool]:
    """The envelope, verified: schema 4 against the key pinned for its `from` (schema 3
    under the migration knob, schema 2 under this node's policy)."""
    schema = obj.get("schema")
    v2 = schema == 2 and not isinstance(schema, bool)
    if not v2:
        return verify_envelope(ring, obj), False
    from dispatch.core.legacy_hmac import parse_v2, verify_v2  # the original's peers only

    old = parse_v2(obj)
    verify_v2(ring.legacy, old)
    # Only six fields are signed; the rest is the receiving node's policy, never the file's.
    envelope = Envelope(
        id=old.id,
        from_=old.from_,
        to=old.to,
        created=old.created,
        priority=old.priority,
        request=old.request,
        require_ack=cfg.v2_require_ack,
        require_dangerous=False,
        timeout_s=min(cfg.default_timeout_s, cfg.timeout_max_s),
        max_output_bytes=cfg.default_max_output_bytes,
        callback=old.callback,
        parent=None,
        hops=0,
        kid="",
        sig=old.hmac,
        schema=2,
    )
    return envelope, True


def _policy(
    cfg: Config, lane: Lane, name: str, envelope: Envelope, v2: bool, check_fresh: bool
) -> bool:
    """This node's checks of an authenticated envelope; whether it waits for an ack."""
    if v2 and not cfg.accept_v2:
        raise Rejection(
            "schema2_disabled",
            "schema-2 envelope, and this node does not accept them (DISPATCH_ACCEPT_V2=0)",
        )
    if name != f"{envelope.id}.json":
        raise Rejection("name_mismatch", f"file name {name[:80]!r} is not <id>.json of its id")
    if (envelope.from_, envelope.to) != (lane.from_, lane.to):
        raise Rejection(
            "wrong_lane",
            f"envelope from {envelope.from_} to {envelope.to} arrived in lane {lane.name}",
        )
    if check_fresh:
        now = now_utc()
        created = envelope.created_at()
        if created < now - timedelta(seconds=cfg.max_age_s):
            raise Rejection("stale", f"created {envelope.created}, older than {cfg.max_age_s}s")
        if created > now + timedelta(seconds=cfg.clock_skew_s):
            raise Rejection(
                "future",
                f"created {envelope.created}, more than "
                f"{cfg.clock_skew_s}s ahead of this host's clock",
            )
    if envelope.timeout_s > cfg.timeout_max_s:
        raise Rejection(
            "policy_timeout",
            f"timeout_s {envelope.timeout_s} exceeds this node's maximum {cfg.timeout_max_s}",
        )
    if envelope.max_output_bytes > cfg.max_output_bytes_max:
        raise Rejection(
            "policy_output",
            f"max_output_bytes {envelope.max_output_bytes} exceeds "
            f"this node's maximum {cfg.max_output_bytes_max}",
        )
    if envelope.hops > cfg.max_hops:
        raise Rejection(
            "too_many_hops", f"hops {envelope.hops} exceeds DISPATCH_MAX_HOPS {cfg.max_hops}"
        )
    if envelope.require_dangerous and cfg.dangerous is DangerousPolicy.DENY:
        raise Rejection(
            "dangerous_denied",
            "require_dangerous, and this node denies it (DISPATCH_DANGEROUS=deny)",
        )
    return envelope.require_ack or (
        envelope.require_dangerous and cfg.dangerous is DangerousPolicy.ACK
    )
