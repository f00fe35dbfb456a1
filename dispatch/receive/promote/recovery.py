"""Recovery: what the share and node-local state say about tasks past admission. Results a
down share refused are published; processing/ is classified (running, died, finished,
cancelled, queued); tasks that end without running are answered."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from dispatch.core import events, fsio
from dispatch.core.errors import Rejection, SigningFailed
from dispatch.core.fsio import read_regular
from dispatch.core.model import Stage, Status, parse_envelope
from dispatch.core.pids import execution_alive
from dispatch.core.signing import sign_object
from dispatch.core.spool import Lane
from dispatch.core.state import parse_index
from dispatch.core.wire import loads_strict
from dispatch.receive import publish
from dispatch.receive.promote import placement
from dispatch.receive.promote.placement import Placement
from dispatch.receive.promote.report import Pass


def publish_deferred(run: Pass, lanes: list[Lane], running: set[str]) -> None:
    """Results an execution could not write (the share was down when it ended) or could
    not have signed (the local signer did not answer): signed here, then published."""
    state = run.node.state
    by_name = {lane.name: lane for lane in lanes}
    for task_id, lane_name, signed, log_rest in state.deferred_results():
        lane = by_name.get(lane_name)
        run.deferred.add(task_id)
        if lane is None or task_id in running or not lane.valid_task_id(task_id):
            continue
        if "sig" not in signed:
            try:
                signed = sign_object(run.node.keys, signed)
            except SigningFailed as exc:
                run.unsigned(lane, task_id, exc)
                continue
        try:
            rest = fsio.append(lane.log_path(task_id), log_rest)
            if rest != log_rest:
                # Keep what the share still refuses for the next try: the result may be
                # refused too, and the output must not be lost meanwhile.
                state.keep_log_rest(task_id, rest)
            if not publish.write_signed(run.node, lane, task_id, signed):
                run.node.emit(
                    "result_exists",
                    "a result was already published; the deferred one is dropped",
                    task_id=task_id,
                    level=events.WARNING,
                )
            state.mark(task_id, Stage.DONE)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lane.processing / lane.task_name(task_id))
        except OSError as exc:
            run.node.emit(
                "publish_error", f"deferred result: {exc}", task_id=task_id, level=events.ERR
            )
            run.report.errors += 1
            continue
        state.forget_result(task_id)
        run.deferred.discard(task_id)
        lost = f"; {len(rest)} bytes of its log lost" if rest else ""
        run.node.emit(
            "result_published",
            f"deferred {signed.get('status')} result published{lost}",
            task_id=task_id,
            from_=lane.from_,
            to=lane.to,
        )


def classify_processing(run: Pass, lanes: list[Lane], running: set[str]) -> list[str]:
    """Classify processing/: running, died (→ interrupted), finished (clean up), queued.
    Runs on every pass over every queued task, so each costs a stat or two: the queue
    index (node-local, written only at admission) stands in for a ledger read, and the
    cancel markers are listed once."""
    state = run.node.state
    queued = []
    indexed = {parsed for name in state.index_names() if (parsed := parse_index(name))}
    cancels = state.cancel_ids()
    for lane in lanes:
        try:
            names = sorted(os.listdir(lane.processing))
        except OSError:
            continue
        for name in names:
            if name.startswith(".") or lane.in_progress(name):
                continue
            try:
                if _classify_one(run, lane, name, indexed, cancels, running):
                    queued.append(lane.task_id_of(name))
                    run.lane_of[lane.task_id_of(name)] = lane
            except OSError as exc:
                # One entry that cannot be moved must not stop the others (or the pass).
                run.fault(lane, lane.processing, name, exc)
            except SigningFailed as exc:
                run.unsigned(lane, lane.task_id_of(name), exc)
    return queued


def _classify_one(
    run: Pass,
    lane: Lane,
    name: str,
    indexed: set[tuple[str, str]],
    cancels: set[str],
    running: set[str],
) -> bool:
    """Handle one processing/ entry; True when it is a task waiting for a slot."""
    state = run.node.state
    task_id = lane.task_id_of(name)
    # The index is written only for what the ledger released: it stands in for a ledger
    # read. Anything else is placed by the ledger (put back, or quarantined).
    if (task_id, lane.name) not in indexed and (
        placement.place(run, lane, lane.processing, name) is not Placement.IN_PLACE
    ):
        return False
    if task_id in running or task_id in run.deferred:
        return False
    if publish.result_standing(run.node, lane, task_id):
        finish(run, lane, task_id)
        return False
    marker = state.started(task_id)
    if marker is not None:
        if execution_alive(marker):
            # An execution this launcher did not start (`dispatch exec` by hand) is
            # alive: it is running, and it counts toward the cap.
            running.add(task_id)
        elif resume(run, task_id, marker):
            running.add(task_id)
        else:
            interrupt(run, lane, task_id, marker)
        return False
    cancelled = state.cancel_reason(task_id) if task_id in cancels else None
    if cancelled is not None:
        end_unstarted(run, lane, lane.processing, task_id, Status.CANCELLED, cancelled)
        return False
    return True


def resume(run: Pass, task_id: str, marker: dict[str, object]) -> bool:
    """Offer a task whose executor died to the launcher: work that outlives its executor
    (a Slurm job) gets a new executor that follows it, and the task keeps its slot."""
    try:
        resumed = run.launcher.resume(task_id, marker)
    except Exception as exc:  # left for the next pass: never answered while unsure
        run.node.emit(
            "resume_failed", f"cannot start a follower: {exc}", task_id=task_id, level=events.ERR
        )
        return True
    if resumed:
        run.node.emit(
            "exec_resumed",
            "the executor had died; a new one follows the work",
            task_id=task_id,
            level=events.NOTICE,
        )
    return resumed


def finish(run: Pass, lane: Lane, task_id: str) -> None:
    # The execution wrote its result but died before removing its task file.
    run.node.state.mark(task_id, Stage.DONE)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(lane.processing / lane.task_name(task_id))
    run.node.emit(
        "task_cleanup",
        "result present; removed the leftover task file",
        task_id=task_id,
        from_=lane.from_,
        to=lane.to,
    )


def request_of(directory: Path, task_id: str) -> str:
    """The request text of a task file, for its answer; "" when it cannot be read."""
    with contextlib.suppress(Rejection, OSError):
        obj = loads_strict(read_regular(directory / f"{task_id}.json"))
        return parse_envelope(obj).request
    return ""


def end_unstarted(
    run: Pass, lane: Lane, directory: Path, task_id: str, status: Status, reason: str
) -> None:
    """Answer a task that never started (cancelled, or its ack never came) and remove
    its file: the result is its trace."""
    publish.verdict(run.node, lane, task_id, request_of(directory, task_id), status, reason)
    run.node.state.mark(task_id, Stage.DONE)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(directory / lane.task_name(task_id))
    run.node.emit(
        "task_cancelled",
        reason,
        task_id=task_id,
        from_=lane.from_,
        to=lane.to,
        level=events.NOTICE,
    )


def interrupt(run: Pass, lane: Lane, task_id: str, marker: dict[str, object]) -> None:
    """Started, no longer running, no result: the host or the executor died. Never rerun
    (invariant 1); answer `interrupted` (invariant 2)."""
    started_at = marker.get("started_at")
    publish.verdict(
        run.node,
        lane,
        task_id,
        request_of(lane.processing, task_id),
        Status.INTERRUPTED,
        "execution ended without a result (host, executor or unit died); not run again",
        started_at=started_at if isinstance(started_at, str) else None,
        unit=run.launcher.unit(task_id),
    )
    finish(run, lane, task_id)
    run.report.recovered += 1
    run.node.emit(
        "task_interrupted",
        "execution died without a result; not rerun",
        task_id=task_id,
        from_=lane.from_,
        to=lane.to,
        level=events.WARNING,
    )
