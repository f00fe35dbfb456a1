"""Node-local state: replay ledger, started markers, queue index, lock."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from dispatch.core.model import Stage
from dispatch.core.state import NodeState, parse_index


def a_state(tmp_path: Path) -> NodeState:
    state = NodeState(tmp_path / "state")
    state.ensure()
    return state


def test_claim_is_first_come(tmp_path: Path) -> None:
    state = a_state(tmp_path)
    task_id = str(uuid.uuid4())
    assert state.entry(task_id) is None
    assert state.claim(task_id, "sha-a", "devbox-to-gpubox") is None
    again = state.claim(task_id, "sha-b", "other")
    assert again is not None
    assert (again.sha256, again.stage, again.lane) == ("sha-a", Stage.INBOX, "devbox-to-gpubox")
    state.mark(task_id, Stage.DONE)
    entry = state.entry(task_id)
    assert entry is not None
    assert (entry.sha256, entry.stage, entry.lane) == ("sha-a", Stage.DONE, "devbox-to-gpubox")
    assert (state.path / "seen" / task_id).stat().st_mode & 0o777 == 0o600


def test_torn_ledger_entry_still_counts_as_seen(tmp_path: Path) -> None:
    state = a_state(tmp_path)
    task_id = str(uuid.uuid4())
    (state.path / "seen" / task_id).write_text('{"id": "')
    entry = state.entry(task_id)
    assert entry is not None and entry.stage is Stage.QUEUED
    assert state.claim(task_id, "x", "lane") is not None


def test_prune_drops_only_old_finished_entries(tmp_path: Path) -> None:
    state = a_state(tmp_path)
    old_done, old_pending, new_done = (str(uuid.uuid4()) for _ in range(3))
    for task_id in (old_done, old_pending, new_done):
        state.claim(task_id, "a", "l")
    state.mark(old_done, Stage.DONE)
    state.mark(new_done, Stage.DONE)
    state.mark(old_pending, Stage.QUEUED)
    state.mark_started(old_done, {"started_at": "t"})
    past = time.time() - 3 * 86400
    for task_id in (old_done, old_pending):
        os.utime(state.path / "seen" / task_id, (past, past))
    assert state.prune(2 * 86400) == 1
    assert state.entry(old_done) is None and state.started(old_done) is None
    # still waiting for its ack: the ledger must keep guarding it
    assert state.entry(old_pending) is not None
    assert state.entry(new_done) is not None


def test_started_marker_is_claimed_once(tmp_path: Path) -> None:
    state = a_state(tmp_path)
    task_id = str(uuid.uuid4())
    assert state.started(task_id) is None
    assert state.mark_started(task_id, {"started_at": "t1", "pid": 1}) is True
    assert state.mark_started(task_id, {"started_at": "t2", "pid": 2}) is False
    assert state.started(task_id) == {"started_at": "t1", "pid": 1}
    (state.path / "started" / task_id).write_text("{torn")
    assert state.started(task_id) == {}  # unreadable, still "started"
    (state.path / "started" / task_id).unlink()
    assert state.started(task_id) is None


def test_queue_index_orders_by_rank_then_age(tmp_path: Path) -> None:
    state = a_state(tmp_path)
    ids = [str(uuid.uuid4()) for _ in range(4)]
    state.index_add(ids[0], 2, "2025-01-01T00:00:00.000001Z", "a-to-b")
    state.index_add(ids[1], 0, "2025-01-01T00:00:09.000000Z", "a-to-b")
    state.index_add(ids[2], 0, "2025-01-01T00:00:01.5+00:00", "c-to-b")
    state.index_add(ids[3], 1, "2024-12-31T23:59:59Z", "a-to-b")
    order = [parse_index(n) for n in state.index_names()]
    assert order == [(ids[2], "c-to-b"), (ids[1], "a-to-b"), (ids[3], "a-to-b"), (ids[0], "a-to-b")]
    state.index_remove(state.index_names()[0])
    assert len(state.index_names()) == 3
    assert parse_index("garbage") is None
    assert parse_index("1-2-short") is None


def test_lock_excludes_another_process(tmp_path: Path) -> None:
    state = a_state(tmp_path)
    probe = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "except BlockingIOError:\n    print('busy')\nelse:\n    print('free')\n"
    )
    lock_file = str(state.path / "promote.lock")
    with state.lock("promote"):
        held = subprocess.run(
            [sys.executable, "-c", probe, lock_file], capture_output=True, text=True, check=True
        ).stdout.strip()
    after = subprocess.run(
        [sys.executable, "-c", probe, lock_file], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert (held, after) == ("busy", "free")
