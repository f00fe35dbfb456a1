"""Sending from inside an execution whose agent runs as another user (DISPATCH_RUN_AS): the
child task, signed by the local signer, goes into the execution's outbox, and the executor's
courier (`receive/courier.py`) verifies it and delivers it into the outgoing lane. This
side waits for the courier's verdict, so a refusal is one line here, not a silent loss."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from dispatch.core import fsio
from dispatch.core.errors import UsageError
from dispatch.core.model import Envelope
from dispatch.core.node import Node
from dispatch.core.wire import canonical

OUTBOX_ENV = "DISPATCH_OUTBOX"
VERDICT_WAIT_S = 30.0


def from_env() -> Path | None:
    value = os.environ.get(OUTBOX_ENV, "")
    return Path(value) if value and os.path.isabs(value) else None


def hand_over(node: Node, envelope: Envelope, outbox: Path, wait_s: float = VERDICT_WAIT_S) -> Path:
    """Put the signed child in the outbox and wait for the courier: the inbox path it was
    delivered to, or UsageError with the courier's reason."""
    if not outbox.is_dir():
        raise UsageError(
            f"this execution's outbox {outbox} is gone: the execution has ended, and "
            "nothing more can be sent from it"
        )
    # Recorded first, as any sender does: `dispatch wait` from the agent follows this record.
    node.sent.record(envelope.id, envelope.from_, envelope.to)
    name = f"{envelope.id}.json"
    tmp = outbox / f".{name}.tmp"
    fsio.write_new(tmp, canonical(envelope.to_json()) + b"\n", mode=0o600)
    os.rename(tmp, outbox / name)
    verdict_path = outbox.parent / "verdict" / name
    deadline = time.monotonic() + wait_s
    while True:
        try:
            verdict = json.loads(fsio.read_regular(verdict_path, 65536))
        except FileNotFoundError:
            verdict = None
        except (OSError, ValueError) as exc:
            why = f"the executor's verdict on task {envelope.id} is unreadable: {exc}"
            raise UsageError(why) from None
        if isinstance(verdict, dict) and isinstance(verdict.get("delivered"), str):
            return Path(verdict["delivered"])
        if isinstance(verdict, dict):
            raise UsageError(
                f"the executor refused child task {envelope.id} "
                f"({verdict.get('refused')}): {str(verdict.get('detail'))[:300]}"
            )
        if time.monotonic() >= deadline:
            # Not "not delivered": the courier may still take it (a slow share), and an
            # agent told it failed would send the same work again under a new id.
            raise UsageError(
                f"child task {envelope.id} is not confirmed after {wait_s:.0f} s: it may "
                f"still be delivered (do not send it again; `dispatch wait {envelope.id}` "
                "follows it if so), or the execution has ended"
            )
        time.sleep(0.1)
