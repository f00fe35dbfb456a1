"""`dispatch clean` and the heartbeat's retention (`DISPATCH_RETAIN_DAYS`): take finished
tasks' files off the share once their sender has seen the result.

Each lane is cleaned by its sender: only the sender knows it has seen a result, and it sees
it here, verifying the signature and recording the end in its own history (core.history)
before the result and log go, so `dispatch list` still knows how the task ended. The
receiver leaves its incoming lanes' results alone (their sender may not have read them
yet) unless forced, and cleans only its own quarantine (rejected/, old entries and their
reasons). A result that does not verify is evidence, kept unless forced. Nothing here
follows a link: a planted symlink is removed as a name, its target untouched."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass
from typing import Any

from dispatch.core import history
from dispatch.core.errors import Rejection
from dispatch.core.lanedirs import held_lanes
from dispatch.core.node import Node
from dispatch.core.spool import LOG_SUFFIX, REASON_SUFFIX, RESULT_SUFFIX, Lane
from dispatch.core.wire import parse_time, valid_id
from dispatch.send import results


@dataclass(frozen=True)
class Cleaned:
    task_id: str  # "" for a quarantined entry that names no task
    lane: str
    status: str
    age_s: float
    removed: tuple[str, ...]  # file names, relative to the lane (nothing on a dry run)
    kept: str = ""  # why it was left alone

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.task_id or None,
            "lane": self.lane,
            "status": self.status,
            "age_s": round(self.age_s, 1),
            "removed": list(self.removed),
            "kept": self.kept or None,
        }


def _remove(path: os.PathLike[str]) -> bool:
    try:
        os.unlink(path)
    except IsADirectoryError:
        shutil.rmtree(path)  # planted on the share; rmtree never follows links inside
    except FileNotFoundError:
        return False
    return True


def _result_ids(lane: Lane) -> list[str]:
    try:
        names = os.listdir(lane.done)
    except OSError:
        return []
    return sorted(
        task_id
        for name in names
        if name.endswith(RESULT_SUFFIX) and valid_id(task_id := name[: -len(RESULT_SUFFIX)])
    )


def _one_result(
    node: Node,
    lane: Lane,
    task_id: str,
    *,
    cutoff: float,
    statuses: tuple[str, ...],
    dry_run: bool,
    force: bool,
) -> Cleaned | None:
    path = lane.result_path(task_id)
    mine = lane.from_ == node.name
    try:
        result = results.read_bound(node, lane, task_id)
        status = result.status.value
        answered = parse_time(result.answered_at).timestamp()
    except FileNotFoundError:
        return None
    except (OSError, Rejection, ValueError) as exc:
        status, modified = "unverified", _mtime(path)
        if modified is None or modified > cutoff or (statuses and status not in statuses):
            return None
        answered = modified
        if not force:
            return Cleaned(task_id, lane.name, status, time.time() - answered, (), f"{exc}")
        result = None
    if answered > cutoff or (statuses and status not in statuses):
        return None
    age = time.time() - answered
    if not mine and not force:
        why = f"its sender {lane.from_} cleans it, having seen it (--force to clean here)"
        return Cleaned(task_id, lane.name, status, age, (), why)
    names = (path.name, f"{task_id}{LOG_SUFFIX}")
    if dry_run:
        return Cleaned(task_id, lane.name, status, age, names)
    if result is not None and mine:
        history.record_ended(node, task_id, lane, result)
    # The log first: a crash in between leaves the result, which a later clean finds again.
    removed = tuple(name for name in reversed(names) if _remove(lane.done / name))
    return Cleaned(task_id, lane.name, status, age, tuple(reversed(removed)))


def _mtime(path: os.PathLike[str]) -> float | None:
    try:
        return os.lstat(path).st_mtime
    except OSError:
        return None


def _quarantine(lane: Lane, cutoff: float, dry_run: bool) -> list[Cleaned]:
    """Old entries of this node's own rejected/ (it wrote every reason there)."""
    out: list[Cleaned] = []
    try:
        names = sorted(os.listdir(lane.rejected))
    except OSError:
        return out
    present = set(names)
    for name in names:
        if not name.endswith(REASON_SUFFIX):
            continue
        entry = name[: -len(REASON_SUFFIX)]
        when = _mtime(lane.rejected / name)
        if when is None or when > cutoff:
            continue
        stem = entry[: -len(".json")] if entry.endswith(".json") else ""
        task_id = stem if valid_id(stem) else ""
        gone = tuple(n for n in (entry, name) if n in present)
        if not dry_run:
            gone = tuple(n for n in gone if _remove(lane.rejected / n))
        out.append(Cleaned(task_id, lane.name, "rejected", time.time() - when, gone))
    return out


def clean(
    node: Node,
    *,
    older_than_s: float,
    statuses: tuple[str, ...] = (),
    peer: str | None = None,
    dry_run: bool = False,
    force: bool = False,
    limit: int | None = None,
) -> list[Cleaned]:
    """Clean what ended more than `older_than_s` ago; at most `limit` tasks a call (the
    heartbeat's share of a large backlog)."""
    cutoff = time.time() - older_than_s
    out: list[Cleaned] = []
    lanes = node.spool.lanes_out(node.cfg) + node.spool.lanes_in(node.cfg)
    # Through the lanes' directories held open from the root down: a lane or stage planted
    # as a symbolic link is refused (and recorded), never followed into what it names.
    with held_lanes(node, lanes) as held:
        _clean_lanes(node, held, out, peer, cutoff, statuses, dry_run, force, limit)
    return out


def _clean_lanes(
    node: Node,
    lanes: list[Lane],
    out: list[Cleaned],
    peer: str | None,
    cutoff: float,
    statuses: tuple[str, ...],
    dry_run: bool,
    force: bool,
    limit: int | None,
) -> None:
    for lane in lanes:
        if peer and peer not in (lane.from_, lane.to):
            continue
        for task_id in _result_ids(lane):
            if limit is not None and len(out) >= limit:
                return
            with contextlib.suppress(OSError):
                done = _one_result(
                    node,
                    lane,
                    task_id,
                    cutoff=cutoff,
                    statuses=statuses,
                    dry_run=dry_run,
                    force=force,
                )
                if done is not None:
                    out.append(done)
        if lane.to == node.name and (not statuses or "rejected" in statuses):
            out.extend(_quarantine(lane, cutoff, dry_run))


def retain(node: Node, limit: int = 500) -> list[Cleaned]:
    """What the heartbeat runs: `DISPATCH_RETAIN_DAYS` (0 keeps everything)."""
    if node.cfg.retain_days <= 0:
        return []
    return clean(node, older_than_s=node.cfg.retain_days * 86400.0, limit=limit)
