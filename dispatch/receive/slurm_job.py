"""The executor's side of a Slurm execution (DISPATCH_LAUNCHER=slurm): submit the task's one
batch job and follow it (`slurm_follow`: its output into the capped share log, the guards,
how it ended). `follow_again` is the executor that takes over a job whose first executor
died (gateway crash or reboot).

At most once, across crashes: the started marker (node-local, fsynced, created exclusively)
is written before sbatch runs, and every later executor of the task finds it and never
submits. A crash between the marker and sbatch's answer leaves one of two worlds, and the
follower tells them apart by asking Slurm for the job by name (`dispatch-<id>`, with this
node's comment): the job exists (followed to its end) or it does not (the task is answered
`interrupted`). The job id is added to the marker as soon as sbatch prints it; the name
lookup covers the window before. A job can vanish only by being forgotten by slurmctld
(MinJobAge) with no accounting or jobcomp record: `interrupted` again, never a rerun.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from dispatch.core import events
from dispatch.core.errors import DispatchError
from dispatch.core.model import Envelope, Result, Status
from dispatch.core.node import Node
from dispatch.core.pids import process_start_time
from dispatch.core.runner import slurm
from dispatch.core.spool import Lane
from dispatch.core.wire import now_utc, rfc3339
from dispatch.receive import publish
from dispatch.receive.agent import invocation
from dispatch.receive.executor import _finish, conclude
from dispatch.receive.launch import slurm as backend
from dispatch.receive.output import HEADER_END, Outcome, Output, ShareLog, log_header
from dispatch.receive.slurm_follow import follow_job
from dispatch.receive.supervise import agent_env


def run_job(
    node: Node,
    envelope: Envelope,
    argv: list[str],
    stdin: bytes | None,
    log_path: Path,
    started_at: str,
) -> Outcome | None:
    """Submit and follow. None: the gateway is shutting down; the job runs on and the next
    executor (after the restart) follows it."""
    cfg = node.cfg
    task_id = envelope.id
    user = cfg.run_as if cfg.run_as and os.geteuid() == 0 else None
    spool = backend.ensure_spool(cfg)
    if user:
        # The job runs as DISPATCH_RUN_AS: it must reach its files.
        pw = pwd.getpwnam(user)
        os.chown(spool, pw.pw_uid, pw.pw_gid)
    out, inp = backend.spool_paths(cfg, task_id)
    # The marker was claimed just now, so nothing of this task's job exists: any file here
    # is a leftover (a crash after a failed submission) and the job appends to its output.
    for path in (out, inp):
        path.unlink(missing_ok=True)
    _create(out, b"", user)
    if stdin is not None:
        _create(inp, stdin, user)
    log = ShareLog(node, task_id, log_path)
    output = Output(node, envelope, log)
    log.write(log_header(envelope))
    submit = backend.sbatch_argv(
        cfg,
        task_id,
        argv,
        timeout_s=envelope.timeout_s,
        output=out,
        stdin=inp if stdin is not None else None,
        user=user,
    )
    why = ""
    job_id: str | None = None
    unsure = False
    try:
        proc = slurm(submit[0], *submit[1:], env=agent_env(node, envelope), timeout=60)
        job_id = backend.parse_sbatch(proc.stdout) if proc.returncode == 0 else None
        why = backend.refusal(proc.stderr, proc.returncode)
        unsure = job_id is None and backend.ambiguous(proc.stderr)
    except DispatchError as exc:
        why, unsure = str(exc), True
    if job_id is None:
        # The answer can be lost while the submission went through: look before concluding.
        try:
            found = backend.find_jobs(node.name, task_id)
            job_id = found[0].job_id if found else None
        except backend.SlurmUnavailable:
            unsure = True
    if job_id is None and unsure:
        # No answer is not a refusal: the job may exist. Leave the task to the executor the
        # next pass starts (follow_again), which follows the job or answers `interrupted`.
        node.emit(
            "slurm_submit_unsure",
            f"sbatch gave no clear answer ({why}); the next pass looks the job up",
            task_id=task_id,
            level=events.ERR,
        )
        log.close()
        return None
    if job_id is None:
        log.write(f"# Slurm refused the job: {why}\n".encode())
        node.emit("slurm_refused", why, task_id=task_id, level=events.ERR)
        return output.outcome(Status.ERROR, 1, f"Slurm refused the job: {why}", log.close())
    marker = node.state.started(task_id) or {}
    node.state.update_started(task_id, {**marker, "slurm_job": job_id})
    node.emit(
        "slurm_submitted",
        f"Slurm job {job_id} ({backend.job_name(task_id)})",
        task_id=task_id,
        slurm_job=job_id,
    )
    return follow_job(node, envelope, job_id, out, log, output, _deadline(started_at, envelope))


def follow_again(
    node: Node, lane: Lane, envelope: Envelope, marker: Mapping[str, Any]
) -> Result | None:
    """Take over a Slurm execution whose executor died: follow the job to its end and
    publish the signed result, or answer `interrupted` when Slurm has no trace of it."""
    task_id = envelope.id
    with _follow_lock(node, task_id) as mine:
        if not mine:
            node.emit("exec_refused", "another executor follows this job", task_id=task_id)
            return None
        current = node.state.started(task_id) or dict(marker)
        me = {"pid": os.getpid(), "pid_start": process_start_time(os.getpid())}
        node.state.update_started(task_id, {**current, **me})
        job_id = current.get("slurm_job")
        try:
            if isinstance(job_id, str) and job_id:
                job = backend.show_job(job_id)
            else:
                found = backend.find_jobs(node.name, task_id)
                job = found[0] if found else None
        except backend.SlurmUnavailable as exc:
            # Unknown is not vanished: the marker names a dead executor again once we exit,
            # and the next pass tries again.
            node.emit(
                "slurm_unreachable",
                f"cannot look up the job: {exc}; trying again later",
                task_id=task_id,
                level=events.ERR,
            )
            return None
        started_at = str(current.get("started_at") or rfc3339(now_utc()))
        if job is None:
            what = f"Slurm job {job_id}" if job_id else "no Slurm job was submitted for it"
            reason = (
                f"{what}: not known to Slurm (the gateway died before or while submitting, or "
                "the job was forgotten); not run again"
            )
            publish.verdict(
                node,
                lane,
                task_id,
                envelope.request,
                Status.INTERRUPTED,
                reason,
                started_at=started_at,
                unit=f"slurm:{job_id}" if job_id else "",
                callback=envelope.callback,
            )
            _finish(node, lane, task_id)
            node.emit("task_interrupted", reason, task_id=task_id, level=events.WARNING)
            return None
        if not job_id:
            node.state.update_started(task_id, {**current, **me, "slurm_job": job.job_id})
        node.emit(
            "slurm_followed",
            f"following Slurm job {job.job_id} ({job.state}) again after the executor died",
            task_id=task_id,
            slurm_job=job.job_id,
            level=events.NOTICE,
        )
        log_path = lane.log_path(task_id)
        log = ShareLog(node, task_id, log_path)
        output = Output(node, envelope, log)
        logged = _logged_body(log_path, envelope.max_output_bytes)
        if logged is None:
            log.write(log_header(envelope))
            logged = 0
        else:
            log.created = True  # append to what the first executor wrote
        out, _ = backend.spool_paths(node.cfg, task_id)
        outcome = follow_job(
            node,
            envelope,
            job.job_id,
            out,
            log,
            output,
            _deadline(started_at, envelope),
            already_logged=logged,
        )
        if outcome is None:
            return None
        began = _parse_time(started_at)
        return conclude(
            node,
            lane,
            envelope,
            outcome,
            elapsed_s=time.time() - began if began else 0.0,
            started_at=started_at,
            perm_mode=invocation(node.cfg, envelope).perm_mode,
            unit="",
        )


def _logged_body(log_path: Path, cap: int) -> int | None:
    """How many output bytes the first executor put in the share log (after its header);
    None when it wrote no log at all."""
    try:
        data = log_path.read_bytes()
    except OSError:
        return None
    head = data.find(HEADER_END)
    if head < 0:
        return None
    body = data[head + len(HEADER_END) :]
    if b"\n# output truncated at " in body:
        return cap
    return len(body)


def _deadline(started_at: str, envelope: Envelope) -> float:
    """timeout_s counts from the task's start, across executors."""
    began = _parse_time(started_at) or time.time()
    return time.monotonic() + (began + envelope.timeout_s - time.time())


def _parse_time(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _create(path: Path, data: bytes, user: str | None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if user:
            # The job runs as DISPATCH_RUN_AS and writes its own output file.
            pw = pwd.getpwnam(user)
            os.fchown(fd, pw.pw_uid, pw.pw_gid)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _follow_lock(node: Node, task_id: str) -> Iterator[bool]:
    """One follower per job: two passes may both see the dead executor before the first
    follower has written its pid."""
    lock_dir = node.state.path / "slurm"
    lock_dir.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(lock_dir / f"{task_id}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
