"""Following a Slurm job to its end: its output file (written by slurmstepd on the compute
node) read into the capped share log, the guards of `follow` applied (scancel, repeated until
Slurm reports the end), and how it ended read from Slurm. `slurm_job` submits the job and
takes it over after a crash; this is what follows it either way."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import signal
import time
from pathlib import Path

from dispatch.core import events
from dispatch.core.model import TIMEOUT_EXIT, Envelope, Status
from dispatch.core.node import Node
from dispatch.receive.follow import (
    Phase,
    StopSignals,
    ended_line,
    follow,
    host_stopping,
    stalled_outcome,
    stopped_outcome,
)
from dispatch.receive.launch import slurm as backend
from dispatch.receive.output import Outcome, Output, ShareLog

POLL_S = 1.0  # one scontrol call per running job per second
READ_S = 0.2  # how often the output file is read
# After scancel: Slurm's KillWait (SIGTERM, then SIGKILL) plus its bookkeeping. Past this the
# end is taken as unconfirmed rather than waited for forever.
CANCEL_WAIT_S = 120.0
CANCEL_AGAIN_S = 10.0  # scancel again until Slurm reports the end (a lost request)
TAIL_BYTES = 8192


def follow_job(
    node: Node,
    envelope: Envelope,
    job_id: str,
    out: Path,
    log: ShareLog,
    output: Output,
    deadline: float,
    *,
    already_logged: int = 0,
) -> Outcome | None:
    """Follow the job to its end. None: the gateway is shutting down; the job runs on and
    the executor after the restart follows it (slurm_job.follow_again)."""
    task_id = envelope.id
    stop = StopSignals()
    began = time.monotonic()
    reader = _OutputFile(out, already_logged, output)
    job = _FollowedJob(node, task_id, job_id, reader, stop)
    try:
        ending = follow(node, task_id, job, stop, deadline, log)
        if ending is None:
            log.close()
            return None
        job.tail += reader.drain()
        del job.tail[:-TAIL_BYTES]
        info = job.info
        if ending.stalled and (info is None or not info.terminal or info.state == "CANCELLED"):
            status, exit_code, reason = stalled_outcome(node, output)
        else:
            status, exit_code, reason = classify_job(
                node,
                task_id,
                info,
                job.known,
                ending.timed_out,
                ending.signum,
                envelope,
                bytes(job.tail),
                began,
            )
        log.write(ended_line(status, exit_code, reason))
    finally:
        stop.close()
        reader.close()
    rest = log.close()
    if info is None or info.terminal:
        # The capped output is in the share log (or goes with the result): the job's files
        # would only pile up in DISPATCH_SLURM_DIR, the prompt with them.
        for path in backend.spool_paths(node.cfg, task_id):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
    done = output.outcome(status, exit_code, reason, rest)
    return dataclasses.replace(done, unit=f"slurm:{job_id}")


class _FollowedJob:
    """The agent as a Slurm job: ended when Slurm reports it terminal (or forgets it), asked
    to end with scancel; its stall clock starts when it leaves PENDING."""

    polls_cancel = True  # the job runs outside this unit: stopping the unit does not reach it

    def __init__(
        self,
        node: Node,
        task_id: str,
        job_id: str,
        reader: _OutputFile,
        stop: StopSignals,
    ) -> None:
        self.node = node
        self.task_id = task_id
        self.job_id = job_id
        self.reader = reader
        self.stop_fd = stop.read_fd
        self.info: backend.JobInfo | None = None
        self.known = True
        self.tail = bytearray()
        self.last_output: float | None = None
        self.next_poll = 0.0
        self.cancel_at: float | None = None
        self.last_cancel = 0.0

    def poll(self, now: float) -> Phase:
        chunk = self.reader.read()
        self.tail += chunk
        del self.tail[:-TAIL_BYTES]
        if chunk and self.last_output is not None:
            self.last_output = now
        if now < self.next_poll:
            return Phase.RUNNING
        self.next_poll = now + POLL_S
        try:
            info = backend.show_job(self.job_id)
        except backend.SlurmUnavailable:
            return Phase.RUNNING  # the last state stands; the deadline still holds
        self.info = info
        if info is None:
            self.known = False
            return Phase.ENDED
        if info.terminal:
            return Phase.ENDED
        if self.last_output is None and info.state != "PENDING":
            self.last_output = now
        return Phase.RUNNING

    def end(self, now: float) -> None:
        if self.cancel_at is not None and now - self.last_cancel <= CANCEL_AGAIN_S:
            return
        try:
            backend.cancel([self.job_id])
        except backend.SlurmUnavailable as exc:
            self.node.emit("slurm_cancel_failed", str(exc), task_id=self.task_id, level=events.ERR)
        self.cancel_at = now if self.cancel_at is None else self.cancel_at
        self.last_cancel = now
        self.next_poll = min(self.next_poll, now + 0.5)

    def gave_up(self, now: float) -> bool:
        return self.cancel_at is not None and now - self.cancel_at > CANCEL_WAIT_S

    def detach(self) -> bool:
        if self.cancel_at is not None or not host_stopping():
            return False
        self.node.emit(
            "slurm_detached",
            f"gateway shutting down; Slurm job {self.job_id} runs on and is followed again "
            "after the restart",
            task_id=self.task_id,
            level=events.NOTICE,
        )
        return True

    def wait(self, wake_in: float) -> None:
        # The output is a file, not a pipe: read every READ_S whatever the guards' next time.
        with contextlib.suppress(InterruptedError):
            select.select([self.stop_fd], [], [], READ_S)


def classify_job(
    node: Node,
    task_id: str,
    job: backend.JobInfo | None,
    known: bool,
    timed_out: bool,
    signum: int,
    envelope: Envelope,
    tail: bytes,
    began: float,
) -> tuple[Status, int, str]:
    """How a followed job ended: a guard that fired counts only if the job did not end by
    itself first (Slurm says how then); `job` is the last state Slurm gave, None when it
    forgot the job (`known` False) or never answered."""
    ended_by_us = job is None or not job.terminal or job.state == "CANCELLED"
    if not known:
        return (
            Status.INTERRUPTED,
            -1,
            "Slurm job vanished while followed (no longer known to Slurm); not run again",
        )
    if timed_out and ended_by_us:
        return Status.TIMEOUT, TIMEOUT_EXIT, f"exceeded timeout_s={envelope.timeout_s}"
    if signum and ended_by_us:
        return stopped_outcome(node, task_id, -signal.SIGTERM, signum, time.monotonic() - began)
    assert job is not None
    if job.state == "CANCELLED" or not job.terminal:
        cancelled = node.state.cancel_reason(task_id)
        if cancelled is not None:
            return Status.CANCELLED, -job.signal or -15, cancelled
        killswitch = node.spool.killswitch()
        if killswitch.hard:
            return Status.KILLED, -job.signal or -15, f"hard KILLSWITCH: {killswitch.reason}"
        if not job.terminal:
            return (
                Status.KILLED,
                -1,
                f"Slurm job {job.job_id} did not confirm its end after scancel ({job.state})",
            )
    return backend.outcome(job, memory_max=node.cfg.memory_max, output_tail=tail)


class _OutputFile:
    """Reads the job's output file as it grows (written by slurmstepd on the compute node)."""

    def __init__(self, path: Path, already_logged: int, output: Output) -> None:
        self.path = path
        self.output = output
        self.skip = already_logged
        self.fd: int | None = None

    def read(self) -> bytes:
        if self.fd is None:
            try:
                self.fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError:
                return b""
        got = bytearray()
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            if self.skip:
                seen, chunk = chunk[: self.skip], chunk[self.skip :]
                self.skip -= len(seen)
                self.output.feed(seen, already_logged=True)
            if chunk:
                self.output.feed(chunk)
                got += chunk
        return bytes(got)

    def drain(self) -> bytes:
        """After the job's end: a shared filesystem may show the last writes late, so read
        until the size holds still for a moment."""
        got = bytearray()
        deadline = time.monotonic() + 3.0
        quiet = 0
        while time.monotonic() < deadline and quiet < 2:
            chunk = self.read()
            got += chunk
            quiet = 0 if chunk else quiet + 1
            time.sleep(0.1)
        return bytes(got)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
