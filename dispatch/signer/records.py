"""What an execution records for the local signer, in the node-local state: the executor's
pid (it alone gets the task's result signed), the agent's session (under the process
launcher, how the signer knows the agent's processes), and the agent's end (nothing more of
the execution is signed). Written by `dispatch exec`, read by `dispatch signer`
(signer/caller.py). Apart from the signer's own rules and socket code: the executor writes
these on its way to the agent, where every import is latency."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from dispatch.core.fsio import atomic_write
from dispatch.core.pids import process_start_time

if TYPE_CHECKING:  # the quick start imports this module, and no state module, before its agent
    from dispatch.core.state import NodeState

AGENT_ENDED = "agent_ended"


def agent_path(state: NodeState, pgid: int) -> Path:
    return state.path / "agents" / str(pgid)


def record_agent(state: NodeState, pgid: int, task_id: str) -> None:
    """Under the process launcher the executor starts each agent as the leader of a new
    session; this says which task that session runs (removed when the agent ends)."""
    path = agent_path(state, pgid)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    tmp = path.with_name(f".{pgid}.tmp")
    tmp.write_text(task_id)
    os.replace(tmp, path)


def forget_agent(state: NodeState, pgid: int) -> None:
    agent_path(state, pgid).unlink(missing_ok=True)


def executor_path(state: NodeState, task_id: str) -> Path:
    return state.path / "executors" / task_id


def record_executor(state: NodeState, task_id: str) -> None:
    """`dispatch exec` says it is this task's executor (its pid and kernel start time),
    before anything of the task runs: the signer signs that process, and no other of its
    execution, the task's result (rules._own_result). Removed when it ends."""
    path = executor_path(state, task_id)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    write_executor_record(path)


def write_executor_record(path: Path) -> None:
    """The record itself, at a path a plan names (receive/quickstart.py) or ours above. Not
    synced: after a crash its pid is no one's, and it is removed when the executor ends."""
    pid = os.getpid()
    atomic_write(path, f"{pid} {process_start_time(pid)}".encode(), mode=0o600, durable=False)


def forget_executor(state: NodeState, task_id: str) -> None:
    executor_path(state, task_id).unlink(missing_ok=True)


def recorded_executor(state: NodeState, task_id: str) -> tuple[int, str] | None:
    try:
        pid, start = executor_path(state, task_id).read_text().split()
    except (OSError, ValueError):
        return None
    return (int(pid), start) if pid.isdigit() and start.isdigit() else None


def mark_agent_ended(state: NodeState, task_id: str) -> None:
    """The agent has ended: from now on nothing of its execution is signed, although its
    result is not published yet (a process it left behind may still ask)."""
    marker = state.started(task_id)
    if marker is None:
        return
    with contextlib.suppress(OSError):
        state.update_started(task_id, {**marker, AGENT_ENDED: True})
