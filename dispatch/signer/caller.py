"""Who is asking, from the kernel: SO_PEERCRED gives the pid, uid and gid at connect time;
/proc gives its supplementary groups and whether it belongs to an execution. Nothing the
caller says about itself is used."""

from __future__ import annotations

import re
import socket
import struct
from pathlib import Path

from dispatch.core.model import Stage
from dispatch.core.pids import process_start_time
from dispatch.core.state import NodeState
from dispatch.core.wire import valid_id
from dispatch.signer.records import AGENT_ENDED, agent_path, recorded_executor
from dispatch.signer.rules import Caller, Execution

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
