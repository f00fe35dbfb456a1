"""What an execution records for the signer, read back as the signer reads it."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from dispatch.core.model import Stage
from dispatch.core.pids import process_start_time
from dispatch.core.state import NodeState
from dispatch.signer.caller import execution_info, process_execution
from dispatch.signer.records import (
    AGENT_ENDED,
    forget_agent,
    forget_executor,
    mark_agent_ended,
    record_agent,
    record_executor,
    recorded_executor,
)


def _state(tmp_path: Path) -> NodeState:
    state = NodeState(tmp_path / "state")
    state.ensure()
    return state


def test_the_executor_is_known_by_pid_and_start_time_until_it_forgets(tmp_path: Path) -> None:
    state, task_id = _state(tmp_path), str(uuid.uuid4())
    assert recorded_executor(state, task_id) is None
    record_executor(state, task_id)
    assert recorded_executor(state, task_id) == (os.getpid(), process_start_time(os.getpid()))
    assert (state.path / "executors" / task_id).stat().st_mode & 0o777 == 0o600
    forget_executor(state, task_id)
    assert recorded_executor(state, task_id) is None


def test_an_ended_agent_leaves_its_execution_not_running(tmp_path: Path) -> None:
    state, task_id = _state(tmp_path), str(uuid.uuid4())
    mark_agent_ended(state, task_id)  # no marker yet: nothing to say, nothing made
    assert state.started(task_id) is None
    assert state.claim(task_id, "0" * 64, "devbox-to-gpubox") is None  # this call claimed it
    state.mark(task_id, Stage.RUNNING)
    assert state.mark_started(task_id, {"hops": 1})
    running = execution_info(state, task_id)
    assert running is not None and running.running and running.hops == 1
    mark_agent_ended(state, task_id)
    marker = state.started(task_id)
    assert marker is not None and marker[AGENT_ENDED] is True and marker["hops"] == 1
    info = execution_info(state, task_id)
    assert info is not None and not info.running


def test_an_agents_session_names_its_task_until_forgotten(tmp_path: Path) -> None:
    state, task_id = _state(tmp_path), str(uuid.uuid4())
    # This process leads no session of its own, so the record must be for its pgid = sid.
    pgid, sid = os.getpgid(0), os.getsid(0)
    record_agent(state, sid, task_id)
    expected = task_id if pgid == sid else ""
    assert process_execution(state, os.getpid()) == expected
    forget_agent(state, sid)
    assert process_execution(state, os.getpid()) == ""
