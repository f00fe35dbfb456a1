"""Who is asking, from the kernel: SO_PEERCRED gives the pid, uid and gid at connect time;
/proc gives its supplementary groups and whether it belongs to an execution. Nothing the
caller says about itself is used."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import struct
from pathlib import Path

from dispatch.core.fsio import atomic_write
from dispatch.core.model import Stage
from dispatch.core.state import NodeState
from dispatch.core.wire import valid_id
from dispatch.receive.launch.process import process_start_time
from dispatch.signer.rules import Caller, Execution

AGENT_ENDED = "agent_ended"
_EXEC_UNIT = re.compile(r"/dispatch-exec@([0-9a-f-]{36})\.service(?:/|$)")


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def groups_of(pid: int) -> frozenset[int]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("Groups:"):
            return frozenset(int(g) for g in line.split()[1:] if g.isdigit())
    return frozenset()


def cgroup_execution(pid: int) -> str:
    """The task id of the `dispatch-exec@<id>.service` whose cgroup holds `pid`; a process
    cannot leave its unit's cgroup without being root."""
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        found = _EXEC_UNIT.search(line.split(":", 2)[-1])
        if found and valid_id(found.group(1)):
            return found.group(1)
    return ""


def session_of(pid: int) -> tuple[int, int]:
    """(process group, session) of `pid`, or (0, 0)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0, 0
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[2]), int(fields[3])


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
    pid = os.getpid()
    path = executor_path(state, task_id)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    atomic_write(path, f"{pid} {process_start_time(pid)}".encode(), mode=0o600)


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


def process_execution(state: NodeState, pid: int) -> str:
    """The task whose agent session holds `pid`: a process can move only to a process group
    of its own session, and the agent leads its session, so pgid = sid = the agent's pid."""
    pgid, sid = session_of(pid)
    if pgid <= 1 or pgid != sid:
        return ""
    try:
        task_id = agent_path(state, pgid).read_text().strip()
    except OSError:
        return ""
    return task_id if valid_id(task_id) else ""


def identify(conn: socket.socket, state: NodeState) -> Caller:
    pid, uid, gid = peer_credentials(conn)
    execution = cgroup_execution(pid) or process_execution(state, pid)
    return Caller(pid, uid, gid, groups_of(pid), execution, process_start_time(pid) or "")


def execution_info(state: NodeState, task_id: str) -> Execution | None:
    """Running means: its started marker is there, its agent has not ended and the ledger
    does not say done."""
    if not task_id:
        return None
    entry = state.entry(task_id)
    lane = entry.lane if entry is not None else ""
    ended = entry is not None and entry.stage in (Stage.DONE, Stage.REJECTED)
    executor = recorded_executor(state, task_id)
    marker = state.started(task_id)
    if marker is None:
        return Execution(task_id, None, False, executor, lane, ended)
    running = entry is not None and not ended and not marker.get(AGENT_ENDED)
    hops = marker.get("hops")
    valid_hops = isinstance(hops, int) and not isinstance(hops, bool) and hops >= 0
    return Execution(task_id, hops if valid_hops else None, running, executor, lane, ended)
