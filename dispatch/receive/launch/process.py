"""Executions as child processes (the liveness check all backends share is core/pids.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

from dispatch.core.node import Node
from dispatch.core.pids import process_start_time
from dispatch.core.runner import dispatch_argv, spawn_detached


class ProcessLauncher:
    """Executions as child processes, for hosts where systemd is not PID 1. Each start
    records `run/<id>` = "<pid> <start time>" in node-local state, so a later promote pass in
    another process still counts it (a specific pid is checked, /proc is never scanned)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.run_dir = node.state.run_dir()
        self.children: dict[str, subprocess.Popen[bytes]] = {}

    def running(self) -> set[str]:
        for task_id, child in list(self.children.items()):
            if child.poll() is not None:
                del self.children[task_id]
        alive: set[str] = set()
        for entry in os.scandir(self.run_dir):
            try:
                pid_text, started = Path(entry.path).read_text().split()
                pid = int(pid_text)
            except (OSError, ValueError):
                continue
            if process_start_time(pid) == started:
                alive.add(entry.name)
            else:
                Path(entry.path).unlink(missing_ok=True)
        return alive

    def stopping(self) -> set[str]:
        return set()  # a child that ended is reaped by running(): nothing to wait for

    def start(self, task_id: str) -> None:
        # The child reads the same config file, whatever this process's environment says.
        env = dict(os.environ, DISPATCH_CONFIG=str(self.node.cfg.config_path))
        child = spawn_detached(dispatch_argv("exec", task_id), env=env)
        self.children[task_id] = child
        started = process_start_time(child.pid)
        if started is not None:
            (self.run_dir / task_id).write_text(f"{child.pid} {started}\n")

    def stop(self, task_id: str) -> None:
        try:
            pid = int((self.run_dir / task_id).read_text().split()[0])
            os.killpg(pid, signal.SIGTERM)
        except (OSError, ValueError, IndexError):
            pass

    def resume(self, task_id: str, marker: Mapping[str, object]) -> bool:
        return False  # the agent was the executor's child: it died with it

    def unit(self, task_id: str) -> str:
        return ""

    def wait_all(self, timeout: float | None = None) -> None:
        for child in list(self.children.values()):
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout)
