"""A process's identity: its pid and the kernel's start time, against real processes."""

from __future__ import annotations

import os
import subprocess

from dispatch.core.pids import execution_alive, process_start_time


def test_a_live_process_has_a_start_time_and_a_reaped_one_has_none() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        started = process_start_time(child.pid)
        assert started is not None and started.isdigit()
        assert execution_alive({"pid": child.pid, "pid_start": started})
        # A recycled pid has another start time.
        assert not execution_alive({"pid": child.pid, "pid_start": str(int(started) + 1)})
    finally:
        child.kill()
        child.wait()
    assert process_start_time(child.pid) is None
    assert not execution_alive({"pid": child.pid, "pid_start": started})


def test_a_zombie_is_not_alive() -> None:
    child = subprocess.Popen(["true"])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
    try:
        assert process_start_time(child.pid) is None
    finally:
        child.wait()


def test_markers_without_an_identity_are_not_alive() -> None:
    assert not execution_alive({})
    assert not execution_alive({"pid": "1", "pid_start": "1"})
    assert not execution_alive({"pid": 0, "pid_start": "1"})
