"""`dispatch exec <id>`: run one admitted task, exactly once, and publish its signed result.

The started marker is written before the agent starts, so whatever dies afterwards the task
is never started again (invariant 1). A watchdog ends the agent's whole process group at its
deadline even when it prints nothing. Output is capped in the log as well as in memory."""

from __future__ import annotations

import os
import threading
import time

from dispatch.core import events, fsio
from dispatch.core.config import LauncherKind
from dispatch.core.errors import NotFound, Rejection, SigningFailed, UsageError
from dispatch.core.fsio import DirRefused, read_regular
from dispatch.core.lanedirs import HeldLane, hold
from dispatch.core.model import Callback, Envelope, Result, Stage, Status
from dispatch.core.node import Node
from dispatch.core.pids import execution_alive, process_start_time
from dispatch.core.signing import sign_result
from dispatch.core.spool import Lane
from dispatch.core.wire import now_utc, rfc3339, valid_id
from dispatch.receive.agent import invocation
from dispatch.receive.intake import Admitted, examine
from dispatch.receive.output import Outcome
from dispatch.receive.quickstart import QuickStart, abandon
from dispatch.receive.supervise import run_agent
from dispatch.signer.records import forget_executor, mark_agent_ended, record_executor

# What a lane's refusal says when the share itself is gone rather than wrong: the server
# does not answer (dir_unreadable: EIO, ENOTCONN, ETIMEDOUT) or the mount is not there
# (the root or the lane missing: an unmounted share shows its empty mount point).
SHARE_GONE = frozenset({"dir_unreadable", "root_missing", "lane_missing"})
# Between looks at a share that does not answer, while an agent runs (seconds).
SHARE_LOOKS_S = (0.25, 0.5, 1.0, 2.0)


def locate(node: Node, task_id: str) -> HeldLane | None:
    """The lane the ledger admitted the task in (never whichever lane shows a file of that
    name: anyone can plant one), when the ledger says it was released and its file is in
    that lane's processing/."""
    entry = node.state.entry(task_id)
    if entry is None:
        return None
    if entry.stage in (Stage.INBOX, Stage.PENDING_ACK):
        raise UsageError(
            f"task {task_id} is {entry.stage.value} on this node: only a local "
            "`dispatch ack` releases it, whatever its file's place on the share"
        )
    for lane in node.spool.lanes_in(node.cfg):
        if lane.name == entry.lane and entry.stage in (Stage.QUEUED, Stage.RUNNING):
            # Held open from the root down: nothing the execution writes (its log, its
            # result) can be sent outside the lane by a directory swapped for a link.
            held_lane = hold(lane)
            try:
                os.lstat(held_lane.processing / lane.task_name(task_id))
            except FileNotFoundError:
                held_lane.close()
                return None
            except BaseException:
                held_lane.close()
                raise  # the share did not answer: not the same as no file
            return held_lane
    return None


def _hold_for_running_agent(node: Node, task_id: str, quick: QuickStart) -> HeldLane | None:
    """`locate`, for an agent the quick start has started. The quick start last reached the
    share before the agent started; a share that stops answering since (its server
    restarting, the network cut, the mount gone) is waited for while the agent goes on, up
    to the task's deadline, rather than ending an agent that does not need the share for its
    work. The full executor holds its lane before its agent starts: only this window needs
    it. Meanwhile nothing reads the agent's output: it goes on until its pipe is full."""
    deadline = quick.spawned_mono + quick.timeout_s
    # A look at a share that hangs (a hard NFS mount) may not return by then: the agent is
    # ended at its deadline all the same, never left running unwatched past it.
    ended = threading.Event()

    def end_at_deadline() -> None:
        ended.set()
        abandon(quick)

    guard = threading.Timer(max(0.0, deadline - time.monotonic()), end_at_deadline)
    guard.daemon = True
    guard.start()
    try:
        lane = _locate_patiently(node, task_id, deadline)
    finally:
        guard.cancel()
    if ended.is_set():
        if lane is not None:
            lane.close()
        raise DirRefused(
            "share_timeout", "the share did not answer before the task's deadline: agent ended"
        )
    return lane


def _locate_patiently(node: Node, task_id: str, deadline: float) -> HeldLane | None:
    looks = 0
    while True:
        try:
            lane = locate(node, task_id)
        except (DirRefused, OSError) as exc:
            if isinstance(exc, DirRefused) and exc.reason not in SHARE_GONE:
                raise  # the lane is not what the layout says: refused, not waited for
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise
            if looks == 0:
                why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                node.emit(
                    "share_waited",
                    f"share unreachable ({why}): the agent goes on, followed once it answers",
                    task_id=task_id,
                    level=events.WARNING,
                )
            time.sleep(min(SHARE_LOOKS_S[min(looks, len(SHARE_LOOKS_S) - 1)], remaining))
            looks += 1
            continue
        if looks:
            node.emit("share_back", "the share answers again; following the agent", task_id=task_id)
        return lane


def execute(
    node: Node, task_id: str, unit: str = "", quick: QuickStart | None = None
) -> Result | None:
    """Run the task; return its result, or None when nothing ran (killswitch, or it had
    already been started and is now answered as interrupted). With `quick`, the quick start
    (receive/quickstart.py) has claimed the execution and started its agent already."""
    if quick is not None:
        try:
            return _take_over(node, task_id, unit, quick)
        except BaseException:
            abandon(quick)  # nothing may run unwatched
            raise
    if not valid_id(task_id):
        raise UsageError(f"not a task id: {task_id[:60]!r}")
    lane = locate(node, task_id)
    if lane is None:
        from dispatch.send import results

        if results.locate(node, task_id) is not None:
            node.emit("exec_skipped", "already has a result", task_id=task_id)
            return None
        raise NotFound(f"task {task_id} is not queued on this node")
    # Before anything of the task runs: the signer signs this process (and no other of the
    # execution, its agent included) the task's result.
    record_executor(node.state, task_id)
    try:
        return _execute(node, lane, task_id, unit)
    finally:
        forget_executor(node.state, task_id)
        lane.close()


def _take_over(node: Node, task_id: str, unit: str, quick: QuickStart) -> Result | None:
    """The rest of an execution the quick start began: its task verified again (after the
    agent started, so that its start does not wait for OpenSSL and the keys), then followed,
    signed and published as any other."""
    lane = _hold_for_running_agent(node, task_id, quick)
    if lane is None:
        raise NotFound(f"task {task_id} is not queued on this node")
    try:
        admitted = admit(node, lane, task_id, quick.data)
        if admitted is None:
            # Changed policy or keys since admission (its bytes are the admitted ones): the
            # agent is ended within milliseconds of its start, and the task is rejected;
            # nothing a process it left behind asks is signed.
            abandon(quick)
            mark_agent_ended(node.state, task_id)
            return None
        envelope = admitted.envelope
        _announce(node, envelope, unit, quick)
        return _run(node, lane, envelope, quick.started_at, unit, quick)
    finally:
        forget_executor(node.state, task_id)
        lane.close()


def _announce(node: Node, envelope: Envelope, unit: str, quick: QuickStart | None) -> None:
    extra: dict[str, object] = {}
    if quick is not None:
        # When the agent really started: this event comes after it, once the rest is loaded.
        extra = {"quick_start": "yes", "spawned_at": f"{quick.spawned_at:.6f}"}
    node.emit(
        "exec_start",
        f"agent starting: {envelope.request[:80]}",
        task_id=envelope.id,
        from_=envelope.from_,
        to=envelope.to,
        timeout_s=envelope.timeout_s,
        unit=unit,
        **extra,
    )


def _execute(node: Node, lane: HeldLane, task_id: str, unit: str) -> Result | None:
    admitted = admit(node, lane, task_id)
    if admitted is None:
        return None
    envelope = admitted.envelope
    slurm = node.cfg.launcher is LauncherKind.SLURM
    previous = node.state.started(task_id) if slurm else None
    if previous and previous.get("launcher") == "slurm" and not execution_alive(previous):
        # Before the killswitch and cancel checks: the job was submitted and may be running;
        # only following it to its end (or cancelling it) answers the task.
        from dispatch.receive.slurm_job import follow_again

        return follow_again(node, lane, envelope, previous)
    killswitch = node.spool.killswitch()
    if killswitch.on:
        node.emit(
            "exec_held",
            f"KILLSWITCH on, not starting: {killswitch.reason}",
            task_id=task_id,
            level=events.NOTICE,
        )
        return None
    cancelled = node.state.cancel_reason(task_id)
    if cancelled is not None:
        # Publishing (history, webhooks) is imported where a result is due: not on the
        # way to the agent.
        from dispatch.receive import publish

        publish.verdict(
            node,
            lane,
            task_id,
            envelope.request,
            Status.CANCELLED,
            cancelled,
            unit=unit,
            callback=envelope.callback,
        )
        _finish(node, lane, task_id)
        node.emit("task_cancelled", cancelled, task_id=task_id, level=events.NOTICE)
        return None
    started_at = rfc3339(now_utc())
    if not node.state.mark_started(
        task_id,
        {
            "started_at": started_at,
            "pid": os.getpid(),
            "pid_start": process_start_time(os.getpid()),
            "unit": unit,
            # Read by the local signer: a child this execution sends is one hop further.
            "hops": envelope.hops,
            # Read by recovery: this execution's work may outlive its executor.
            **({"launcher": "slurm"} if slurm else {}),
        },
    ):
        previous = node.state.started(task_id) or {}
        if execution_alive(previous):
            # The first execution is still at work: its result is the one to publish.
            node.emit(
                "exec_refused",
                "this task is running in another execution; it is never run twice",
                task_id=task_id,
                level=events.WARNING,
            )
            return None
        node.emit(
            "exec_refused",
            "this task was started before; it is never run twice",
            task_id=task_id,
            level=events.WARNING,
        )
        prev_start = previous.get("started_at")
        from dispatch.receive import publish

        publish.verdict(
            node,
            lane,
            task_id,
            envelope.request,
            Status.INTERRUPTED,
            "execution ended without a result; not run again",
            started_at=prev_start if isinstance(prev_start, str) else None,
            unit=unit,
        )
        _finish(node, lane, task_id)
        return None
    _announce(node, envelope, unit, None)
    return _run(node, lane, envelope, started_at, unit, None)


def _run(
    node: Node,
    lane: HeldLane,
    envelope: Envelope,
    started_at: str,
    unit: str,
    quick: QuickStart | None,
) -> Result | None:
    task_id = envelope.id
    slurm = node.cfg.launcher is LauncherKind.SLURM
    # Elapsed from the agent's start, which the quick start made before this process loaded.
    began = time.monotonic() if quick is None else quick.spawned_mono
    inv = invocation(node.cfg, envelope)
    log_path = lane.log_path(task_id)
    if os.path.lexists(log_path):
        # Only this one execution writes done/<id>.log: an entry already there was planted
        # on the share (a symlink would redirect our writes). Keep it, out of the way.
        lane.reject(
            log_path.name,
            Rejection("foreign_log", "entry at the task's log path before its execution"),
            node=node.name,
            source=lane.done,
            task_id=task_id,
        )
    if slurm and quick is None:
        from dispatch.receive.slurm_job import run_job

        slurm_outcome = run_job(node, envelope, inv.argv, inv.stdin, log_path, started_at)
        if slurm_outcome is None:
            return None  # left to a later executor (see slurm_job.run_job)
        outcome = slurm_outcome
    else:
        outcome = run_agent(node, envelope, inv.argv, inv.stdin, log_path, quick)
    return conclude(
        node,
        lane,
        envelope,
        outcome,
        elapsed_s=time.monotonic() - began,
        started_at=started_at,
        perm_mode=inv.perm_mode,
        unit=unit,
    )


def conclude(
    node: Node,
    lane: Lane,
    envelope: Envelope,
    outcome: Outcome,
    *,
    elapsed_s: float,
    started_at: str,
    perm_mode: str,
    unit: str,
) -> Result:
    """Sign and publish the result of an execution that ran, and clean up after it."""
    task_id = envelope.id
    result = Result(
        id=task_id,
        answered_by=node.name,
        answered_at=rfc3339(now_utc()),
        request=envelope.request,
        status=outcome.status,
        exit_code=outcome.exit_code,
        elapsed_s=round(elapsed_s, 3),
        log_path=lane.relative(lane.log_path(task_id)),
        final_text=outcome.final_text,
        output_tail=outcome.output_tail,
        output_bytes=outcome.output_bytes,
        perm_mode=perm_mode,
        started_at=started_at,
        truncated=outcome.truncated,
        unit=outcome.unit or unit,
        reason=outcome.reason,
        kid="",
        sig="",
    )
    if _publish(node, lane, result, outcome.log_rest, envelope.callback):
        _finish(node, lane, task_id)
    node.emit(
        "exec_end",
        f"{outcome.status} exit={outcome.exit_code} "
        f"elapsed={result.elapsed_s}s{' (' + outcome.reason + ')' if outcome.reason else ''}",
        task_id=task_id,
        from_=envelope.from_,
        to=envelope.to,
        status=outcome.status.value,
        exit_code=outcome.exit_code,
        level=events.INFO if outcome.status is Status.OK else events.WARNING,
    )
    return result


def admit(node: Node, lane: Lane, task_id: str, data: bytes | None = None) -> Admitted | None:
    """Verify again what promote admitted: processing/ is on the share, and its file could
    have been swapped since. It must be the very bytes the ledger recorded. `data`: the
    bytes the quick start read from that file (and checked against the ledger's sha256)."""
    path = lane.processing / lane.task_name(task_id)
    entry = node.state.entry(task_id)
    try:
        if data is None:
            data = read_regular(path)
        admitted = examine(node.cfg, node.keys, lane, path.name, data, check_fresh=False)
        if entry is None or entry.sha256 != admitted.sha256 or entry.lane != lane.name:
            raise Rejection("tampered", "task file differs from the one this node admitted")
    except FileNotFoundError:
        raise NotFound(f"task {task_id} is not queued on this node") from None
    except Rejection as exc:
        from dispatch.receive import publish

        # The result first: a sender's `wait` that sees the file in rejected/ must find it.
        if entry is not None:
            publish.verdict(node, lane, task_id, "", Status.REJECTED, f"{exc.reason}: {exc}")
            node.state.mark(task_id, Stage.REJECTED)
        lane.reject(path.name, exc, node=node.name, source=lane.processing, task_id=task_id)
        node.emit(
            "task_rejected",
            f"at execution: {exc.reason}: {exc}",
            task_id=task_id,
            from_=lane.from_,
            to=lane.to,
            reason=exc.reason,
            level=events.WARNING,
        )
        return None
    return admitted


def _publish(
    node: Node, lane: Lane, result: Result, log_rest: bytes, callback: Callback | None = None
) -> bool:
    """Write the signed result (and the end of the log the share refused so far). If the
    share does not answer (its server restarting, the network cut), the agent's work is
    done all the same: keep the result in node-local state, and the next promote pass
    publishes it once the share is back (invariant 2). False when deferred."""
    from dispatch.receive import publish

    try:
        signed = sign_result(node.keys, result, lane).to_json()
    except SigningFailed as exc:
        publish.keep_unsigned(node, lane, result, log_rest, exc)
        return False
    log_rest = fsio.append(lane.log_path(result.id), log_rest)
    try:
        written = publish.write_signed(node, lane, result.id, signed, callback)
    except OSError as exc:
        node.state.defer_result(result.id, lane.name, signed, log_rest)
        node.emit(
            "result_deferred",
            f"share unreachable ({exc.strerror or exc}): "
            f"{result.status} result kept on this host; the next promote pass "
            "publishes it",
            task_id=result.id,
            from_=lane.from_,
            to=lane.to,
            level=events.ERR,
        )
        return False
    if not written:
        node.emit(
            "result_exists",
            "a result was already published; this one is dropped",
            task_id=result.id,
            level=events.WARNING,
        )
    if log_rest:
        node.emit(
            "log_incomplete",
            f"{len(log_rest)} bytes of output could not be written to {lane.log_path(result.id)}",
            task_id=result.id,
            level=events.WARNING,
        )
    return True


def _finish(node: Node, lane: Lane, task_id: str) -> None:
    # The ledger first: its record is the task's stage, the file only follows it.
    node.state.mark(task_id, Stage.DONE)
    try:
        os.unlink(lane.processing / lane.task_name(task_id))
    except FileNotFoundError:
        pass
    except OSError as exc:
        # The share stopped answering: the result is out, and promote removes the task file
        # (the ledger says done, the result stands) once the share is back.
        node.emit(
            "cleanup_deferred",
            f"cannot remove the task file: {exc.strerror or exc}",
            task_id=task_id,
            level=events.WARNING,
        )
