"""Acks, given and checked in one place. An ack is a schema-4 object of kind `ack`, signed
with this host's own key (the one that signs its results) for one task, its lane and the
digest of the envelope it admitted, so a `<id>.ack` file dropped on the share by anyone
else, or copied to another task or lane, releases nothing (invariant 5)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from dispatch.core import ids
from dispatch.core.errors import NotFound, Rejection, SigningFailed
from dispatch.core.fsio import atomic_write, dump_json, read_regular, rename_new
from dispatch.core.model import SCHEMA, Kind, Stage, Status
from dispatch.core.node import Node
from dispatch.core.signing import sign_object, verify_signed
from dispatch.core.spool import ACK_SUFFIX, Lane
from dispatch.core.wire import loads_strict, now_utc, rfc3339
from dispatch.receive.promote import placement, recovery
from dispatch.receive.promote.placement import Placement
from dispatch.receive.promote.report import Pass


@dataclass(frozen=True)
class Acked:
    task_id: str
    lane: str
    path: Path


def ack_body(lane: Lane, task_id: str, sha256: str) -> dict[str, object]:
    """What an ack says, before its signature: this task, in this lane into this node, as
    the envelope of this digest."""
    return {
        "schema": SCHEMA,
        "kind": Kind.ACK.value,
        "id": task_id,
        "from": lane.from_,
        "to": lane.to,
        "sha256": sha256,
        "acked_at": rfc3339(now_utc()),
    }


def write_ack(node: Node, lane: Lane, task_id: str) -> Path:
    entry = node.state.entry(task_id)
    if entry is None:
        raise Rejection("not_admitted", f"task {task_id} was never admitted on this node")
    path = lane.ack_path(task_id)
    atomic_write(path, dump_json(sign_object(node.keys, ack_body(lane, task_id, entry.sha256))))
    return path


def genuine(node: Node, lane: Lane, task_id: str, sha256: str, record: object) -> bool:
    """An ack this node gave for exactly this task, lane and envelope."""
    if not isinstance(record, dict):
        return False
    said = (record.get("kind"), record.get("id"), record.get("from"), record.get("to"))
    if said != (Kind.ACK.value, task_id, lane.from_, lane.to) or lane.to != node.name:
        return False
    if record.get("sha256") != sha256:
        return False
    try:
        verify_signed(node.keys, record, Kind.ACK, "ack")
    except Rejection:
        return False
    return True


def give_ack(node: Node, prefix: str) -> Acked:
    """`dispatch ack PREFIX`: release the one pending task whose id starts with it."""
    pending = {
        task_id: lane
        for lane in node.spool.lanes_in(node.cfg)
        for task_id in lane.task_ids(lane.pending_ack)
    }
    try:
        task_id = ids.resolve(prefix, pending)
    except NotFound:
        task_id = ""
    if task_id not in pending:
        raise NotFound(f"no pending task matching {prefix.strip()[:60]!r} on {node.name}")
    lane = pending[task_id]
    path = write_ack(node, lane, task_id)
    node.emit("ack_given", "local ack written", task_id=task_id, from_=lane.from_, to=lane.to)
    return Acked(task_id, lane.name, path)


def check_pending(run: Pass, lane: Lane) -> None:
    """Every task waiting for an ack: quarantine what intake did not put there, cancel what
    waited past the TTL, release what has a genuine ack."""
    try:
        names = sorted(os.listdir(lane.pending_ack))
    except OSError:
        return
    present = set(names)
    for name in names:
        if lane.in_progress(name) or name.endswith(ACK_SUFFIX):
            continue
        try:
            _check_one(run, lane, name)
        except OSError as exc:
            # One entry that cannot be moved must not stop the others (or the pass).
            run.fault(lane, lane.pending_ack, name, exc)
        except SigningFailed as exc:
            run.unsigned(lane, lane.task_id_of(name), exc)
    for name in names:
        if name.endswith(ACK_SUFFIX):
            try:
                _release(run, lane, name, present)
            except OSError as exc:
                run.fault(lane, lane.pending_ack, name, exc)


def _check_one(run: Pass, lane: Lane, name: str) -> None:
    if placement.place(run, lane, lane.pending_ack, name) is not Placement.IN_PLACE:
        return
    task_id = lane.task_id_of(name)
    entry = run.node.state.entry(task_id)
    ttl = run.node.cfg.ack_ttl_s
    # Fail closed: an ack that never comes cancels the task, it never runs it.
    if entry is not None and time.time() - entry.at > ttl:
        reason = f"no ack within DISPATCH_ACK_TTL={ttl}s"
        recovery.end_unstarted(run, lane, lane.pending_ack, task_id, Status.CANCELLED, reason)
        return
    run.report.pending_ack += 1


def _release(run: Pass, lane: Lane, name: str, present: set[str]) -> None:
    task_id = name[: -len(ACK_SUFFIX)]
    entry = run.node.state.entry(task_id) if lane.valid_task_id(task_id) else None
    forged = Rejection(
        "forged_ack",
        "ack not signed by this host's key for this task: only "
        "`dispatch ack` on the receiving host releases a task (re-run it there)",
    )
    if entry is None or lane.task_name(task_id) not in present:
        orphan = Rejection("orphan_ack", "ack for no pending task")
        run.refuse(lane, name, orphan, source=lane.pending_ack)
        return
    try:
        record = loads_strict(read_regular(lane.pending_ack / name))
    except Rejection:
        run.refuse(lane, name, forged, source=lane.pending_ack)
        return
    if not genuine(run.node, lane, task_id, entry.sha256, record):
        run.refuse(lane, name, forged, source=lane.pending_ack)
        return
    if entry.stage is not Stage.PENDING_ACK:
        run.refuse(lane, name, Rejection("orphan_ack", "ack for a task not waiting for one"))
        return
    task_name = lane.task_name(task_id)
    # The ledger first: a crash before the move leaves a released task in pending-ack/,
    # which the next pass moves on; never a task the ledger holds back sitting queued.
    run.node.state.mark(task_id, Stage.QUEUED)
    rename_new(lane.pending_ack / task_name, lane.processing / task_name)
    os.unlink(lane.pending_ack / name)
    run.report.released += 1
    run.report.pending_ack -= 1
    run.node.emit(
        "task_acked",
        f"released by local ack of {record.get('acked_at')}",
        task_id=task_id,
        from_=lane.from_,
        to=lane.to,
    )
