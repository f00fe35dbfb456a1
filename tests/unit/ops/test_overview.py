"""`dispatch status`: lanes, running executions, killswitch and peers, as a table and as
JSON; and what people see on a terminal (colour, the live line of `dispatch wait`)."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from typing import Any

import pytest

from dispatch.core.spool import set_killswitch
from dispatch.ops import overview
from dispatch.receive.launch import systemd as systemd_launcher
from dispatch.receive.launch.process import ProcessLauncher
from dispatch.receive.promote import promote
from dispatch.send import task as sender
from tests.conftest import Pair
from tests.unit.helpers import cli, drain, env_for, promote_once, runs_of, wait_for

LANE_KEYS = {"lane", "direction", "inbox", "pending_ack", "queued", "running", "done", "rejected"}
EXEC_KEYS = {"id", "lane", "unit", "state", "started_at", "elapsed_s", "memory_bytes"}


def send(pair: Pair, request: str, **kwargs: Any) -> str:
    tx = pair.sender.node()
    return sender.deliver(tx, sender.build(tx, to="gpubox", request=request, **kwargs)).envelope.id


def test_status_json_schema_and_counts(pair: Pair) -> None:
    send(pair, "done one")
    drain(pair.receiver.node())
    set_killswitch(pair.receiver.node().spool, hard=False, reason="upgrade")
    send(pair, "queued one")
    send(pair, "needs an ack", require_ack=True)
    promote_once(pair.receiver.node())
    send(pair, "in the inbox")
    overview.heartbeat(pair.sender.node())

    proc = cli(pair.receiver, "status", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert set(data) == {
        "node",
        "root",
        "version",
        "killswitch",
        "lanes",
        "executions",
        "peers",
        "faults",
        "root_problem",
    }
    assert (data["node"], data["root"]) == ("gpubox", str(pair.root))
    assert data["killswitch"] == {"on": True, "hard": False, "reason": "upgrade"}
    assert data["executions"] == []
    lanes = {(lane["lane"], lane["direction"]): lane for lane in data["lanes"]}
    assert all(set(lane) == LANE_KEYS for lane in data["lanes"])
    assert lanes["devbox-to-gpubox", "in"] == {
        "lane": "devbox-to-gpubox",
        "direction": "in",
        "inbox": 1,
        "pending_ack": 1,
        "queued": 1,
        "running": 0,
        "done": 1,
        "rejected": 0,
    }
    assert lanes["gpubox-to-devbox", "out"]["done"] == 0
    [peer] = data["peers"]
    assert peer["node"] == "devbox" and peer["stale"] is False
    assert 0 <= peer["heartbeat_age_s"] < 30 and peer["killswitch"] is True

    text = cli(pair.receiver, "status").stdout
    assert "\x1b[" not in text  # colour only on a terminal
    lines = text.splitlines()
    assert lines[0] == f"node gpubox  root {pair.root}  killswitch on: upgrade"
    assert lines[1].split() == [
        "lane",
        "inbox",
        "pending_ack",
        "queued",
        "running",
        "done",
        "rejected",
    ]
    assert lines[2].split() == ["devbox-to-gpubox", "(in)", "1", "1", "1", "0", "1", "0"]
    assert "running: none" in lines
    assert any(line.startswith("peer devbox: heartbeat ") for line in lines)


def test_a_peer_without_heartbeat(pair: Pair) -> None:
    data = json.loads(cli(pair.receiver, "status", "--json").stdout)
    assert data["peers"] == [
        {
            "node": "devbox",
            "heartbeat_age_s": None,
            "stale": True,
            "key_problem": "",
            "config_problem": "",
        }
    ]
    assert "peer devbox: no heartbeat STALE" in cli(pair.receiver, "status").stdout


def test_running_execution_under_the_process_launcher(pair: Pair) -> None:
    rx = pair.receiver.node()
    launcher = ProcessLauncher(rx)
    task_id = send(pair, "long job sleep=60")
    promote(rx, launcher)
    try:
        wait_for(lambda: bool(runs_of(pair, task_id)), timeout=30, what="the agent")
        time.sleep(1.1)
        data = json.loads(cli(pair.receiver, "status", "--json").stdout)
        text = cli(pair.receiver, "status").stdout
        # The sender tells running from queued by the log the execution opened.
        wait = cli(pair.sender, "wait", task_id, "--timeout", "0.3")
        assert wait.returncode == 4 and "(last seen: running)" in wait.stderr
    finally:
        launcher.stop(task_id)
        launcher.wait_all(30)
    [run] = data["executions"]
    assert set(run) == EXEC_KEYS
    assert (run["id"], run["lane"], run["unit"], run["state"], run["memory_bytes"]) == (
        task_id,
        "devbox-to-gpubox",
        None,
        "running",
        None,
    )
    assert run["started_at"] == rx.state.started(task_id)["started_at"]  # type: ignore[index]
    assert 1 <= run["elapsed_s"] < 30
    assert "running: 1" in text
    assert f"  {task_id}  (process)  devbox-to-gpubox  elapsed " in text
    assert text.rstrip().splitlines()[-2].endswith("memory -")


SHOW = """\
Id=dispatch-exec@{a}.service
ActiveState=active
SubState=running
MemoryCurrent=52428800
ActiveEnterTimestampMonotonic={since}
InactiveExitTimestampMonotonic={since}

Id=dispatch-exec@{b}.service
ActiveState=inactive
SubState=dead
MemoryCurrent=[not set]
ActiveEnterTimestampMonotonic=0
InactiveExitTimestampMonotonic=0

Id=dispatch-exec@{c}.service
ActiveState=deactivating
SubState=stop-sigterm
MemoryCurrent=18446744073709551615
ActiveEnterTimestampMonotonic=0
InactiveExitTimestampMonotonic={since}
"""


def test_running_executions_under_systemd_come_from_one_systemctl_show(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_killswitch(pair.receiver.node().spool, hard=False, reason="hold")
    a, b, c = send(pair, "a"), send(pair, "b"), send(pair, "c")
    promote_once(pair.receiver.node())
    rx = pair.receiver.node(DISPATCH_LAUNCHER="systemd")
    rx.state.mark_started(a, {"started_at": "2026-01-01T00:00:00Z", "unit": "x"})
    since = int((time.monotonic() - 42) * 1e6)
    calls: list[tuple[str, ...]] = []

    def systemctl(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        return subprocess.CompletedProcess(args, 0, SHOW.format(a=a, b=b, c=c, since=since), "")

    monkeypatch.setattr(systemd_launcher, "systemctl", systemctl)
    runs = {run["id"]: run for run in overview.executions(rx)}
    assert len(calls) == 1
    assert calls[0][0] == "show" and calls[0][-1] == "dispatch-exec@*.service"
    assert "MemoryCurrent" in calls[0][1] and "ActiveEnterTimestampMonotonic" in calls[0][1]
    assert set(runs) == {a, c}  # b is inactive
    assert runs[a]["unit"] == f"dispatch-exec@{a}.service"
    assert runs[a]["memory_bytes"] == 50 * 1024 * 1024
    assert runs[a]["state"] == "active (running)"
    assert 41 <= runs[a]["elapsed_s"] < 50  # from systemd, not from the marker's date
    assert runs[a]["started_at"] == "2026-01-01T00:00:00Z"
    assert runs[a]["lane"] == "devbox-to-gpubox"
    assert runs[c]["memory_bytes"] is None and runs[c]["state"] == "deactivating (stop-sigterm)"
    assert 41 <= runs[c]["elapsed_s"] < 50 and runs[c]["started_at"]


def test_without_systemctl_the_markers_still_say_what_runs(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_killswitch(pair.receiver.node().spool, hard=False, reason="hold")
    task_id = send(pair, "a")
    promote_once(pair.receiver.node())
    rx = pair.receiver.node(DISPATCH_LAUNCHER="systemd")
    rx.state.mark_started(task_id, {"started_at": "2026-01-01T00:00:00Z", "unit": "u"})
    monkeypatch.setenv("PATH", "/nonexistent")
    [run] = overview.executions(rx)
    assert (run["id"], run["unit"], run["memory_bytes"]) == (task_id, "u", None)


def _on_a_terminal(argv: list[str], env: dict[str, str], timeout: float = 30) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal; return (exit code, what it showed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env, close_fds=True
    )
    os.close(slave)
    chunks = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(10), b"".join(chunks).decode("utf-8", "replace")


def test_on_a_terminal_status_has_colour_and_wait_a_live_line(pair: Pair) -> None:
    env = env_for(pair.receiver)
    code, shown = _on_a_terminal([sys.executable, "-m", "dispatch", "status"], env)
    assert code == 0 and "killswitch \x1b[32m" in shown and "off\x1b[0m" in shown

    task_id = send(pair, "watched")
    code, shown = _on_a_terminal(
        [sys.executable, "-m", "dispatch", "wait", task_id, "--timeout", "1.5"],
        env_for(pair.sender),
    )
    assert code == 4
    assert f"\r\x1b[2K{task_id[:8]} inbox " in shown  # the stage and the elapsed time
    assert "s" in shown.split("inbox", 1)[1]
    assert f"no result for {task_id} after 1.5s (last seen: inbox)" in shown
