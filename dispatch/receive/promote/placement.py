"""Local state is the only truth: a task's stage on this node is what its ledger entry
says, and the place of its file on the share is a cache of it. Every transition is recorded
in the ledger before the file moves, so after a crash, or after someone moved files on the
share by hand, the pass puts a file back where the ledger says it belongs (when it holds
the very bytes admitted and that place is free) or quarantines it with its reason. Only
what the ledger says is released (queued) is ever started."""

from __future__ import annotations

import contextlib
from enum import StrEnum
from pathlib import Path

from dispatch.core import events
from dispatch.core.digests import sha256_hex
from dispatch.core.errors import Rejection
from dispatch.core.fsio import read_regular, rename_new
from dispatch.core.model import Stage
from dispatch.core.spool import Lane
from dispatch.core.state import LedgerEntry
from dispatch.receive import publish
from dispatch.receive.promote.report import Pass

# Where a released task's file sits: queued and running share processing/.
RELEASED = (Stage.QUEUED, Stage.RUNNING)
# Stages whose file lives on the share, by the ledger.
LIVE = (Stage.PENDING_ACK, Stage.QUEUED, Stage.RUNNING)


class Placement(StrEnum):
    IN_PLACE = "in_place"  # the ledger put it here: carry on with it
    HANDLED = "handled"  # moved back, quarantined or cleaned up: nothing more this pass


def entry_in(run: Pass, lane: Lane, task_id: str) -> LedgerEntry | None:
    """This task's ledger entry when the ledger admitted it in this very lane."""
    entry = run.node.state.entry(task_id) if task_id else None
    return entry if entry is not None and entry.lane == lane.name else None


def home(lane: Lane, stage: Stage) -> Path:
    return lane.stage_dir(Stage.QUEUED if stage in RELEASED else stage)


def place(run: Pass, lane: Lane, directory: Path, name: str) -> Placement:
    """A task file found in `directory` (pending-ack/ or processing/): in place, or handled
    (put back where the ledger says, cleaned up, or quarantined)."""
    task_id = lane.task_id_of(name)
    entry = entry_in(run, lane, task_id)
    if entry is None or entry.stage is Stage.INBOX:
        where = directory.name
        exc = Rejection("not_admitted", f"file in {where}/ that did not come through intake")
        run.refuse(lane, name, exc, source=directory)
        return Placement.HANDLED
    if entry.stage in LIVE and home(lane, entry.stage) == directory:
        if _same_bytes(directory / name, entry.sha256):
            return Placement.IN_PLACE
        exc = Rejection("tampered", "task file differs from the one this node admitted")
        run.refuse(lane, name, exc, source=directory)
        return Placement.HANDLED
    finished = entry.stage in (Stage.DONE, Stage.REJECTED) and directory == lane.processing
    if finished and publish.result_standing(run.node, lane, task_id):
        # The execution wrote its result, then died before removing its task file.
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()
        return Placement.HANDLED
    restore(run, lane, directory, name, entry)
    return Placement.HANDLED


def restore(
    run: Pass,
    lane: Lane,
    directory: Path,
    name: str,
    entry: LedgerEntry,
    *,
    refusal: str = "misplaced",
) -> bool:
    """Put a task file back where the ledger says it belongs when it is the very file this
    node admitted and that place is free; else quarantine it (reason `refusal`). True when
    it was put back."""
    node = run.node
    target = home(lane, entry.stage) if entry.stage in LIVE else None
    why = f"ledger says {entry.stage.value}"
    if target is not None and _same_bytes(directory / name, entry.sha256):
        try:
            rename_new(directory / name, target / name)
        except FileExistsError:
            why += f", and {target.name}/ already holds a file of that name"
        else:
            node.emit(
                "task_restored",
                f"found in {directory.name}/, put back in {target.name}/ ({why})",
                task_id=entry.task_id,
                from_=lane.from_,
                to=lane.to,
                level=events.WARNING,
            )
            return True
    else:
        why += "" if target is None else ", and the file is not the one admitted"
    exc = Rejection(
        refusal, f"task file in {directory.name}/, where this node did not put it ({why})"
    )
    run.refuse(lane, name, exc, source=directory)
    return False


def _same_bytes(path: Path, sha256: str) -> bool:
    try:
        return bool(sha256) and sha256_hex(read_regular(path)) == sha256
    except (Rejection, OSError):
        return False
