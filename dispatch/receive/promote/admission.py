"""Admission: every inbox entry is verified (intake) and moves on with a ledger record, or
is quarantined with its reason; sender temp files that were abandoned are swept."""

from __future__ import annotations

import os

from dispatch.core import events, history
from dispatch.core.errors import Rejection
from dispatch.core.fsio import read_regular, rename_new
from dispatch.core.model import Stage
from dispatch.core.spool import Lane
from dispatch.receive import notify
from dispatch.receive.intake import Admitted, examine
from dispatch.receive.promote import placement, queue
from dispatch.receive.promote.report import Pass


def admit_inbox(run: Pass, lane: Lane) -> None:
    try:
        names = sorted(os.listdir(lane.inbox))
    except OSError as exc:
        run.node.emit("lane_unreadable", f"{lane.inbox}: {exc.strerror}", level=events.ERR)
        run.report.errors += 1
        return
    for name in names:
        if lane.in_progress(name):
            continue  # a sender mid-write (the original writes inbox/<id>.json.tmp)
        run.report.seen.add(f"{lane.name}/{name}")
        try:
            _admit_one(run, lane, name)
        except FileNotFoundError:
            continue  # gone meanwhile (another pass, or the sender took it back)
        except OSError as exc:
            # Invariant 6: one entry that cannot be handled must not stop the others.
            run.fault(lane, lane.inbox, name, exc)


def _admit_one(run: Pass, lane: Lane, name: str) -> None:
    node = run.node
    try:
        data = read_regular(lane.inbox / name)
        admitted = examine(node.cfg, node.keys, lane, name, data)
    except Rejection as exc:
        run.refuse(lane, name, exc, answer=True)
        return
    envelope = admitted.envelope
    previous = node.state.claim(envelope.id, admitted.sha256, lane.name)
    same = (
        previous is not None and previous.sha256 == admitted.sha256 and previous.lane == lane.name
    )
    if previous is not None and same and previous.stage in placement.LIVE:
        # The very file admitted, back in inbox/ (moved by hand, or a crash between the
        # ledger's record and the move): it goes where the ledger says, or it is a replay.
        restored = placement.restore(run, lane, lane.inbox, name, previous, refusal="replay")
        if restored and previous.stage is Stage.QUEUED:
            queue.index(node.state, envelope)
        return
    if previous is not None and not (same and previous.stage is Stage.INBOX):
        seen = f"task id {envelope.id} was already seen by this node ({previous.stage.value})"
        run.refuse(lane, name, Rejection("replay", seen))
        return
    stage = Stage.PENDING_ACK if admitted.needs_ack else Stage.QUEUED
    # The ledger first, then the move, then the index (which stands for "released").
    node.state.mark(envelope.id, stage)
    rename_new(lane.inbox / name, lane.stage_dir(stage) / name)
    if stage is Stage.QUEUED:
        queue.index(node.state, envelope)
    history.record_received(node, envelope, lane)
    run.report.admitted += 1
    if admitted.needs_ack:
        _ask_for_ack(run, admitted)
    node.emit(
        "task_pending_ack" if admitted.needs_ack else "task_queued",
        f"{envelope.priority} task admitted ({stage}): {envelope.request[:80]}",
        task_id=envelope.id,
        from_=envelope.from_,
        to=envelope.to,
        schema=envelope.schema,
        kid=envelope.kid or "-",
    )


def _ask_for_ack(run: Pass, admitted: Admitted) -> None:
    envelope = admitted.envelope
    payload = notify.task_payload(
        run.node,
        "task_pending_ack",
        task_id=envelope.id,
        from_=envelope.from_,
        to=envelope.to,
        request=envelope.request,
    )
    notify.enqueue(run.node, payload, envelope.callback)


def sweep_stale(run: Pass, lane: Lane, now: float) -> None:
    for path in lane.stale_tmp(now):
        exc = Rejection("stale_tmp", "temporary file older than an hour: its sender died mid-write")
        try:
            run.refuse(lane, path.name, exc, source=path.parent)
        except OSError as err:
            run.node.emit("intake_error", f"{path}: {err}", level=events.ERR)
