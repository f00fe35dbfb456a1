"""Acks, given and checked in one place. An ack is valid only with a MAC under this host's
own ack secret (node-local state), so a `<id>.ack` file dropped on the share by anyone else
releases nothing (invariant 5)."""

from __future__ import annotations

import hmac
import os
import time
from dataclasses import dataclass
from pathlib import Path

from dispatch.core import ids
from dispatch.core.errors import NotFound, Rejection
from dispatch.core.fsio import atomic_write, dump_json, read_regular, rename_new
from dispatch.core.model import Stage, Status
from dispatch.core.node import Node
from dispatch.core.signing import mac_text
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


def ack_mac(node: Node, lane: Lane, task_id: str, sha256: str) -> str:
    return mac_text(node.state.ack_secret(), f"ack:{node.name}:{lane.name}:{task_id}:{sha256}")


def write_ack(node: Node, lane: Lane, task_id: str) -> Path:
    entry = node.state.entry(task_id)
    if entry is None:
        raise Rejection("not_admitted", f"task {task_id} was never admitted on this node")
    path = lane.ack_path(task_id)
    record = {
        "id": task_id,
        "node": node.name,
        "acked_at": rfc3339(now_utc()),
        "mac": ack_mac(node, lane, task_id, entry.sha256),
    }
    atomic_write(path, dump_json(record))
    return path


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
        "ack not signed by this host's ack secret: only "
        "`dispatch ack` on the receiving host releases a task",
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
    expected = ack_mac(run.node, lane, task_id, entry.sha256)
    if not hmac.compare_digest(str(record.get("mac", "")), expected):
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
