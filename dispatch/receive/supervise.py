"""Running the agent under supervision: its whole process group ended at the deadline even
when it prints nothing, output streamed to the share log and capped there as well as in
memory, and how it ended classified into a status."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from dispatch.core.errors import UsageError
from dispatch.core.model import TIMEOUT_EXIT, Envelope, Status
from dispatch.core.node import Node
from dispatch.core.runner import spawn_agent
from dispatch.receive.agent import agent_settings, agent_user
from dispatch.receive.courier import ChainBox, Courier, start_courier
from dispatch.receive.follow import (
    Phase,
    StopSignals,
    ended_line,
    follow,
    stalled_outcome,
    stopped_outcome,
)
from dispatch.receive.output import Outcome, Output, ShareLog, log_header
from dispatch.receive.quickstart import QuickStart, inherited_env
from dispatch.signer.records import forget_agent, mark_agent_ended, record_agent

GRACE_S = 5.0


def agent_env(node: Node, envelope: Envelope) -> dict[str, str]:
    return {**inherited_env(os.environ), **agent_settings(node, envelope)}


def _killpg(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


class _Child:
    """The agent as a child process leading its own session: ended when it exited and its
    output pipe closed; asked to end with SIGTERM to its process group, SIGKILL after
    GRACE_S."""

    polls_cancel = False  # a cancel stops the unit: the signal reaches us, then the group

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        output: Output,
        stop: StopSignals,
        courier: Courier | None = None,
    ) -> None:
        assert proc.stdout is not None
        self.courier = courier
        self.proc = proc
        self.output = output
        self.out_fd = proc.stdout.fileno()
        os.set_blocking(self.out_fd, False)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.out_fd, selectors.EVENT_READ)
        self.stop_fd = stop.read_fd
        self.sel.register(self.stop_fd, selectors.EVENT_READ)
        self.last_output: float | None = time.monotonic()
        self.kill_at: float | None = None
        self.exited_at: float | None = None
        self.eof = False

    def poll(self, now: float) -> Phase:
        if self.exited_at is None and self.proc.poll() is not None:
            self.exited_at = now
            # Children the agent left behind would hold the pipe open forever.
            _killpg(self.proc.pid, signal.SIGKILL)
        if self.exited_at is None:
            return Phase.RUNNING
        return Phase.ENDED if self.eof or now - self.exited_at > 2.0 else Phase.EXITING

    def end(self, now: float) -> None:
        if self.kill_at is None:
            _killpg(self.proc.pid, signal.SIGTERM)
            self.kill_at = now + GRACE_S
        if now >= self.kill_at:
            _killpg(self.proc.pid, signal.SIGKILL)
            self.kill_at = float("inf")

    def gave_up(self, now: float) -> bool:
        return False  # SIGKILL is not refused: the process is reaped below

    def detach(self) -> bool:
        return False  # a child dies with its unit; the shutdown is in its status

    def wait(self, wake_in: float) -> None:
        waits = [1.0, wake_in]
        if self.kill_at is not None and self.kill_at != float("inf"):
            waits.append(self.kill_at - time.monotonic())
        if self.eof:
            waits.append(0.05)
        for key, _ in self.sel.select(max(0.0, min(waits))):
            if key.fd == self.stop_fd:
                continue  # the follow loop reads the signal
            try:
                chunk = os.read(self.out_fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                self.eof = True
                self.sel.unregister(self.out_fd)
                continue
            self.last_output = time.monotonic()
            self.output.feed(chunk)
        if self.courier is not None:
            self.courier.sweep()

    def reap(self) -> int:
        self.sel.close()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return self.proc.wait()


def run_agent(
    node: Node,
    envelope: Envelope,
    argv: list[str],
    stdin: bytes | None,
    log_path: Path,
    quick: QuickStart | None = None,
) -> Outcome:
    """Start the agent (or take over the one the quick start started) and follow it to its
    end."""
    stop = StopSignals()
    agent_pgid = 0
    courier: Courier | None = None
    # The agent has been running since the quick start spawned it (the take-over may have
    # waited for the share meanwhile): its deadline counts from then.
    began = time.monotonic() if quick is None else quick.spawned_mono
    log = ShareLog(node, envelope.id, log_path)
    output = Output(node, envelope, log)
    try:
        log.write(log_header(envelope))
        started = (
            _spawn(node, envelope, argv, stdin, log)
            if quick is None
            else _adopt(node, envelope, argv, quick, log)
        )
        if isinstance(started, Outcome):
            return started
        proc, courier = started
        # The agent leads a new session: the local signer knows its processes by it.
        record_agent(node.state, proc.pid, envelope.id)
        agent_pgid = proc.pid
        if stdin is not None and proc.stdin is not None:
            _feed_stdin(proc.stdin, stdin)
        child = _Child(proc, output, stop, courier)
        deadline = began + envelope.timeout_s
        ending = follow(node, envelope.id, child, stop, deadline, log)
        assert ending is not None  # a child never detaches
        returncode = child.reap()
        if ending.stalled:
            status, exit_code, reason = stalled_outcome(node, output)
        else:
            status, exit_code, reason = _classify(
                node,
                envelope.id,
                returncode,
                ending.timed_out,
                ending.signum,
                envelope.timeout_s,
                time.monotonic() - began,
            )
        log.write(ended_line(status, exit_code, reason))
    finally:
        # Before the courier closes: what a leftover process asks the signer now is refused.
        mark_agent_ended(node.state, envelope.id)
        if courier is not None:
            courier.close()
        if agent_pgid:
            forget_agent(node.state, agent_pgid)
        stop.close()
        log_rest = log.close()
    return output.outcome(status, exit_code, reason, log_rest)


def _not_started(log: ShareLog, exit_code: int, why: str) -> Outcome:
    log.write(f"# {why}\n".encode())
    return Outcome(Status.ERROR, exit_code, why, 0, False, "", "", log.close())


def _spawn(
    node: Node, envelope: Envelope, argv: list[str], stdin: bytes | None, log: ShareLog
) -> tuple[subprocess.Popen[bytes], Courier | None] | Outcome:
    try:
        user = agent_user(node)
    except UsageError as exc:
        return _not_started(log, 126, f"agent not started: {exc}")
    env = agent_env(node, envelope)
    courier = start_courier(node, envelope, user, _note(log))
    if courier is not None:
        env.update(courier.agent_settings())
    try:
        proc = spawn_agent(argv, env=env, cwd=None, user=user, with_stdin=stdin is not None)
    except OSError as exc:
        if courier is not None:
            courier.close()
        return _not_started(log, 127, f"cannot start agent {argv[0]}: {exc.strerror}")
    return proc, courier


def _adopt(
    node: Node, envelope: Envelope, argv: list[str], quick: QuickStart, log: ShareLog
) -> tuple[subprocess.Popen[bytes], Courier | None] | Outcome:
    """The agent the quick start started, with the courier for the box it made."""
    courier = (
        None if quick.box is None else Courier(node, envelope, ChainBox(quick.box), _note(log))
    )
    if quick.proc is None:
        if courier is not None:
            courier.close()
        return _not_started(log, 127, f"cannot start agent {argv[0]}: {quick.error}")
    return quick.proc, courier


def _note(log: ShareLog) -> Callable[[str], None]:
    return lambda line: log.write(line.encode("utf-8", "replace") + b"\n")


def _feed_stdin(pipe: IO[bytes], data: bytes) -> None:
    import threading

    def feed() -> None:
        with contextlib.suppress(OSError):
            pipe.write(data)
        with contextlib.suppress(OSError):
            pipe.close()

    threading.Thread(target=feed, daemon=True).start()


def _classify(
    node: Node,
    task_id: str,
    returncode: int,
    timed_out: bool,
    signum: int,
    timeout_s: int,
    elapsed: float,
) -> tuple[Status, int, str]:
    if timed_out:
        return Status.TIMEOUT, TIMEOUT_EXIT, f"exceeded timeout_s={timeout_s}"
    if signum:
        return stopped_outcome(node, task_id, returncode, signum, elapsed)
    if returncode < 0:
        name = signal.Signals(-returncode).name
        why = f"agent killed by {name}"
        if -returncode == signal.SIGKILL and oom_kills() > 0:
            why += f" (out of memory: over MemoryMax={node.cfg.memory_max})"
        return Status.KILLED, returncode, why
    if returncode == 0:
        return Status.OK, 0, ""
    return Status.ERROR, returncode, f"agent exited with status {returncode}"


def oom_kills() -> int:
    """OOM kills in this process's memory cgroup: v2 `memory.events`, v1 `memory.oom_control`
    (these machines run the hybrid layout, memory on v1)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        _, controllers, path = line.split(":", 2)
        candidates = []
        if controllers == "":
            candidates.append(Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.events")
        elif "memory" in controllers.split(","):
            candidates.append(
                Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.oom_control"
            )
        for candidate in candidates:
            try:
                for stat_line in candidate.read_text().splitlines():
                    key, _, value = stat_line.partition(" ")
                    if key == "oom_kill" and int(value) > 0:
                        return int(value)
            except (OSError, ValueError):
                continue
    return 0
