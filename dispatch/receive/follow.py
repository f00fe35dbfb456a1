"""Following a running agent to its end under the execution's guards: the deadline
(timeout_s, from the task's start), the stall guard (DISPATCH_STALL_S: no output for that
long), a stop signal (systemctl stop: a cancel, the hard killswitch, a shutdown) and, for an
agent that runs outside the unit and hears none of its signals, a cancel in the ledger.

One loop for every way of running the agent; each way says how it is seen to end and how it
is asked to end: a child process of the executor (`supervise`), or a Slurm job followed
through its output file (`slurm_follow`). Why a guarded run ended (timeout, stall, which
stop) is decided here too; how an agent ended by itself is the backend's to read."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from dispatch.core.model import TIMEOUT_EXIT, Status
from dispatch.core.node import Node
from dispatch.core.wire import now_utc, rfc3339
from dispatch.receive.output import Output, ShareLog


class StopSignals:
    """SIGTERM/SIGINT/SIGHUP (systemctl stop, hard killswitch, cancel) become a request to
    end the agent and still publish a `killed` result."""

    def __init__(self) -> None:
        self.signum = 0
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.old_fd = signal.set_wakeup_fd(self.write_fd)
        self.old_handlers = {
            signum: signal.signal(signum, self._handle)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }

    def _handle(self, signum: int, _frame: object) -> None:
        self.signum = signum

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.read_fd, 512)

    def close(self) -> None:
        signal.set_wakeup_fd(self.old_fd)
        for signum, handler in self.old_handlers.items():
            signal.signal(signum, handler)
        os.close(self.read_fd)
        os.close(self.write_fd)


class Phase(StrEnum):
    RUNNING = "running"
    EXITING = "exiting"  # it ended; its last output is still on its way (no stall guard)
    ENDED = "ended"


class Running(Protocol):
    """A running agent as the guards see it."""

    # When it last showed life, the stall guard's clock; None: not started (a pending job is
    # silent by nature).
    last_output: float | None
    # A cancel recorded in the ledger ends it: it runs where the unit's stop does not reach.
    polls_cancel: bool

    def poll(self, now: float) -> Phase:
        """Take the output that came and look whether it ended (before any guard acts: an
        agent that ended while nobody watched is concluded from how it ended)."""
        ...

    def end(self, now: float) -> None:
        """Called on every pass while a guard wants it ended: ask, insist, escalate."""
        ...

    def gave_up(self, now: float) -> bool:
        """Asked to end long ago and still no sign it did: stop waiting for it."""
        ...

    def detach(self) -> bool:
        """On a stop signal: leave it running for the executor after the restart (a host
        shutting down must not take it along)? Not once it was asked to end."""
        ...

    def wait(self, wake_in: float) -> None:
        """Block for output, a stop signal (its StopSignals' read_fd), or at most about
        `wake_in` seconds (when the next guard falls due)."""
        ...


@dataclass(frozen=True)
class Ending:
    """Which guards fired while it ran (the agent may still have ended by itself)."""

    timed_out: bool
    stalled: bool
    signum: int


def follow(
    node: Node,
    task_id: str,
    agent: Running,
    stop: StopSignals,
    deadline: float,
    log: ShareLog,
) -> Ending | None:
    """Follow `agent` until it ended (or was given up on) and say which guards fired. None:
    detached, it runs on and a later executor follows it."""
    stall_s = node.cfg.stall_s
    timed_out = stalled = False
    while True:
        now = time.monotonic()
        phase = agent.poll(now)
        log.flush()
        if phase is Phase.ENDED:
            break
        if not (timed_out or stalled or stop.signum) and now >= deadline:
            timed_out = True
        elif (
            stall_s
            and not (timed_out or stalled or stop.signum)
            and phase is Phase.RUNNING
            and agent.last_output is not None
        ):
            stalled = now - agent.last_output >= stall_s
        if stop.signum and agent.detach():
            return None
        if (
            timed_out
            or stalled
            or stop.signum
            or (agent.polls_cancel and node.state.cancel_reason(task_id) is not None)
        ):
            agent.end(now)
        if agent.gave_up(now):
            break
        wakes = [deadline - now]
        if stall_s and agent.last_output is not None:
            wakes.append(agent.last_output + stall_s - now)
        agent.wait(max(0.0, min(wakes)))
        stop.drain()
    return Ending(timed_out, stalled, stop.signum)


def stalled_outcome(node: Node, output: Output) -> tuple[Status, int, str]:
    """A task ended by the stall guard, with the agent's last line of output."""
    last = output.reader.output_tail().rstrip("\n").rpartition("\n")[2]
    return (
        Status.STALLED,
        TIMEOUT_EXIT,
        f"no output for {node.cfg.stall_s}s (DISPATCH_STALL_S); last output: "
        + (repr(last[-200:]) if last else "none"),
    )


def stopped_outcome(
    node: Node, task_id: str, returncode: int, signum: int, elapsed: float
) -> tuple[Status, int, str]:
    """Why were we asked to stop? The answer decides the result's status."""
    cancelled = node.state.cancel_reason(task_id)
    if cancelled is not None:
        return Status.CANCELLED, returncode, cancelled
    ceiling = os.environ.get("DISPATCH_RUNTIME_MAX_S", "")
    if ceiling.isdigit() and elapsed >= int(ceiling) - 1:
        return (
            Status.TIMEOUT,
            TIMEOUT_EXIT,
            f"unit RuntimeMaxSec={ceiling} reached (the hard ceiling above timeout_s)",
        )
    killswitch = node.spool.killswitch()
    if killswitch.hard:
        return Status.KILLED, returncode, f"hard KILLSWITCH: {killswitch.reason}"
    if host_stopping():
        return (
            Status.INTERRUPTED,
            returncode,
            "host shutting down: execution stopped; not run again",
        )
    return Status.KILLED, returncode, f"execution stopped by {signal.Signals(signum).name}"


def host_stopping() -> bool:
    """systemd says `stopping` while it shuts the system down."""
    if not os.environ.get("INVOCATION_ID"):
        return False  # not started by systemd
    from dispatch.core.runner import run

    try:
        return run(["systemctl", "is-system-running"], timeout=5).stdout.strip() == "stopping"
    except Exception:
        return False


def ended_line(status: Status, exit_code: int, reason: str) -> bytes:
    """The share log's last line: how the execution ended."""
    return (
        f"\n# ended {rfc3339(now_utc())} status={status} exit={exit_code}"
        f"{' reason=' + reason if reason else ''}\n".encode()
    )
