"""`dispatch exec`: the watchdog, the output cap, outcomes, signals, and re-verification of
the task file at execution time. Real agents (the fake agent, /bin/sh), real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dispatch.core.model import TIMEOUT_EXIT, Stage, Status
from dispatch.core.pids import process_start_time
from dispatch.core.spool import Lane, set_killswitch
from dispatch.core.wire import new_id
from dispatch.receive.executor import execute
from dispatch.receive.supervise import GRACE_S
from dispatch.send import results
from tests.conftest import Pair
from tests.unit.helpers import (
    cli,
    configure,
    drain,
    drop,
    env_for,
    envelope,
    lane_in,
    pgid_alive,
    promote_once,
    result_json,
    runs_of,
    wait_for,
)


def queued(pair: Pair, **overrides: Any) -> tuple[dict[str, Any], Lane]:
    """Admit a task into processing/ without starting it (the killswitch holds it)."""
    lane = lane_in(pair)
    (pair.root / "KILLSWITCH").write_text("hold\n")
    obj = envelope(pair, **overrides)
    drop(lane, obj)
    report = promote_once(pair.receiver.node())
    assert report.admitted == 1 and report.started == []
    os.unlink(pair.root / "KILLSWITCH")
    assert (lane.processing / f"{obj['id']}.json").exists()
    return obj, lane


def gone(pid: int) -> bool:
    """Exited (a zombie waiting for a reaper counts as exited)."""
    return process_start_time(pid) is None


def exec_proc(pair: Pair, task_id: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dispatch", "exec", task_id],
        env=env_for(pair.receiver),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_ok_run_records_everything(pair: Pair) -> None:
    obj, lane = queued(pair, request="hello agent")
    res = execute(pair.receiver.node(), obj["id"])
    assert res is not None and res.status is Status.OK and res.exit_code == 0
    assert res.final_text == "fake agent (acceptEdits) did: hello agent"
    assert res.perm_mode == "acceptEdits" and res.truncated is False
    assert res.log_path == f"devbox-to-gpubox/done/{obj['id']}.log"
    log = (pair.root / res.log_path).read_text()
    assert '"type": "result"' in log and "status=ok" in log
    assert res.output_bytes == len(res.output_tail.encode())
    published = result_json(lane, obj["id"])
    signed_for = ("kid", "sig", "from", "to")  # added when it is signed for its lane
    assert {k: v for k, v in published.items() if k not in signed_for} == {
        k: v for k, v in res.to_json().items() if k not in signed_for
    }
    assert (published["kind"], published["from"], published["to"]) == ("result", "devbox", "gpubox")
    assert results.get(pair.sender.node(), obj["id"]).status is Status.OK  # verifies
    assert not (lane.processing / f"{obj['id']}.json").exists()
    entry = pair.receiver.node().state.entry(obj["id"])
    assert entry is not None and entry.stage is Stage.DONE
    assert [r["task_id"] for r in pair.agent_runs()] == [obj["id"]]


def test_signal_handlers_are_restored_after_an_execution(pair: Pair) -> None:
    obj, _ = queued(pair)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    execute(pair.receiver.node(), obj["id"])
    after = {s: signal.getsignal(s) for s in before}
    assert after == before


def test_silent_agent_is_stopped_at_its_timeout(pair: Pair) -> None:
    obj, lane = queued(pair, request="say nothing hang=30", timeout_s=2)
    began = time.monotonic()
    res = execute(pair.receiver.node(), obj["id"])
    took = time.monotonic() - began
    assert res is not None
    assert res.status is Status.TIMEOUT and res.exit_code == TIMEOUT_EXIT == 124
    assert "timeout_s=2" in res.reason
    assert took < 15  # the 30 s hang did not run out
    pid = int(str(runs_of(pair, obj["id"])[0]["pid"]))
    assert gone(pid)
    assert not pgid_alive(pid)
    assert "status=timeout" in lane.log_path(obj["id"]).read_text()


def test_timeout_kills_the_agents_whole_process_group(pair: Pair, tmp_path: Path) -> None:
    pidfile = tmp_path / "bg.pid"
    configure(
        pair.receiver,
        DISPATCH_AGENT_PROFILE="generic",
        DISPATCH_AGENT_BIN=f"/bin/sh -c 'sleep 60 & echo $! > {pidfile}; sleep 60'",
    )
    obj, _ = queued(pair, timeout_s=2)
    res = execute(pair.receiver.node(), obj["id"])
    assert res is not None and res.status is Status.TIMEOUT
    background = int(pidfile.read_text())
    wait_for(lambda: gone(background), timeout=10, what="the agent's background child")


def test_output_over_the_cap_is_truncated_in_the_log_too(pair: Pair) -> None:
    cap = 10_000
    obj, lane = queued(pair, request="chatty spam=300000", max_output_bytes=cap)
    res = execute(pair.receiver.node(), obj["id"])
    assert res is not None and res.status is Status.OK
    assert res.truncated is True
    assert 300_000 <= res.output_bytes < 300_000 + 4096  # everything the agent printed
    log = lane.log_path(obj["id"])
    assert log.stat().st_size <= cap + 1024  # the cap plus a small header and footer
    text = log.read_text()
    assert f"# output truncated at {cap} bytes" in text
    # The answer after the spam is still read from the stream.
    assert res.final_text.startswith("fake agent (acceptEdits) did: chatty")


def test_output_under_the_cap_is_not_truncated(pair: Pair) -> None:
    obj, lane = queued(pair, request="spam=5000", max_output_bytes=100_000)
    res = execute(pair.receiver.node(), obj["id"])
    assert res is not None and res.truncated is False and res.output_bytes > 5000
    assert "truncated" not in lane.log_path(obj["id"]).read_text()


def test_nonzero_exit_is_an_error(pair: Pair) -> None:
    obj, _ = queued(pair, request="fail exit=3")
    res = execute(pair.receiver.node(), obj["id"])
    assert res is not None
    assert res.status is Status.ERROR and res.exit_code == 3
    assert "status 3" in res.reason


def test_missing_agent_binary(pair: Pair) -> None:
    configure(pair.receiver, DISPATCH_AGENT_BIN="/nonexistent/agent")
    obj, lane = queued(pair)
    res = execute(pair.receiver.node(), obj["id"])
    assert res is not None and res.status is Status.ERROR and res.exit_code == 127
    assert "/nonexistent/agent" in res.reason
    assert result_json(lane, obj["id"])["status"] == "error"


def test_agent_environment_and_generic_profile(pair: Pair) -> None:
    configure(
        pair.receiver,
        DISPATCH_AGENT_PROFILE="generic",
        DISPATCH_AGENT_BIN="/bin/sh -c 'read line; "
        'echo "$DISPATCH_TASK_ID $DISPATCH_HOPS $DISPATCH_NODE $line"\'',
    )
    parent = new_id()
    obj, _ = queued(pair, request="from stdin", hops=2, parent=parent)
    res = execute(pair.receiver.node(), obj["id"])
    assert res is not None and res.status is Status.OK, res
    assert res.final_text == f"{obj['id']} 2 gpubox from stdin"


def test_sigterm_to_exec_ends_killed(pair: Pair) -> None:
    obj, lane = queued(pair, request="long hang=30")
    proc = exec_proc(pair, obj["id"])
    try:
        wait_for(lambda: bool(runs_of(pair, obj["id"])), what="the agent to start")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    res = result_json(lane, obj["id"])
    assert res["status"] == "killed"
    assert "SIGTERM" in res["reason"]
    pid = int(str(runs_of(pair, obj["id"])[0]["pid"]))
    assert gone(pid)


def test_hard_killswitch_reason_in_the_killed_result(pair: Pair) -> None:
    obj, lane = queued(pair, request="long hang=30")
    proc = exec_proc(pair, obj["id"])
    try:
        wait_for(lambda: bool(runs_of(pair, obj["id"])), what="the agent to start")
        set_killswitch(pair.receiver.node().spool, hard=True, reason="disk on fire")
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=20)
    finally:
        proc.kill()
    res = result_json(lane, obj["id"])
    assert res["status"] == "killed"
    assert res["reason"] == "hard KILLSWITCH: disk on fire"


def test_killswitch_on_at_exec_time_runs_nothing(pair: Pair) -> None:
    obj, lane = queued(pair)
    (pair.root / "KILLSWITCH").write_text("wait\n")
    assert execute(pair.receiver.node(), obj["id"]) is None
    assert (lane.processing / f"{obj['id']}.json").exists()
    assert pair.receiver.node().state.started(obj["id"]) is None
    assert pair.agent_runs() == []


@pytest.mark.parametrize("swap", ["resigned", "garbage", "symlink", "other_id"])
def test_task_file_swapped_after_admission_is_rejected_at_exec(pair: Pair, swap: str) -> None:
    obj, lane = queued(pair, request="the admitted request")
    path = lane.processing / f"{obj['id']}.json"
    path.unlink()
    if swap == "resigned":  # validly signed, same id, different content
        path.write_text(json.dumps(envelope(pair, id=obj["id"], request="rm -rf ~")))
        code = "tampered"
    elif swap == "garbage":
        path.write_text("{")
        code = "malformed"
    elif swap == "symlink":
        target = pair.root.parent / "evil.json"
        target.write_text(json.dumps(envelope(pair, id=obj["id"], request="evil")))
        os.symlink(target, path)
        code = "symlink"
    else:
        path.write_text(json.dumps(envelope(pair, request="another task")))
        code = "name_mismatch"
    proc = cli(pair.receiver, "exec", obj["id"])
    assert proc.returncode == 0, proc.stderr
    name = f"{obj['id']}.json"
    assert os.path.lexists(lane.rejected / name)
    assert json.loads((lane.rejected / f"{name}.reason.json").read_text())["reason"] == code
    assert not os.path.lexists(path)
    res = result_json(lane, obj["id"])
    assert res["status"] == "rejected" and res["reason"].startswith(code)
    assert pair.agent_runs() == []


def test_second_exec_of_a_started_task_refuses(pair: Pair) -> None:
    obj, lane = queued(pair)
    rx = pair.receiver.node()
    assert rx.state.mark_started(
        obj["id"], {"started_at": "2025-01-01T00:00:00Z", "pid": 999999999}
    )
    proc = cli(pair.receiver, "exec", obj["id"])
    assert proc.returncode == 0, proc.stderr
    res = result_json(lane, obj["id"])
    assert res["status"] == "interrupted"
    assert pair.agent_runs() == []
    assert not (lane.processing / f"{obj['id']}.json").exists()


def test_exec_after_completion_does_nothing(pair: Pair) -> None:
    obj, lane = queued(pair)
    assert cli(pair.receiver, "exec", obj["id"]).returncode == 0
    first = lane.result_path(obj["id"]).read_bytes()
    proc = cli(pair.receiver, "exec", obj["id"])
    assert proc.returncode == 0, proc.stderr
    assert lane.result_path(obj["id"]).read_bytes() == first
    assert len(pair.agent_runs()) == 1


def test_exec_while_the_first_execution_still_runs(pair: Pair) -> None:
    obj, lane = queued(pair, request="slow sleep=2")
    first = exec_proc(pair, obj["id"])
    try:
        wait_for(lambda: bool(runs_of(pair, obj["id"])), what="the agent to start")
        second = cli(pair.receiver, "exec", obj["id"])
        assert second.returncode == 0, second.stderr
        first.communicate(timeout=30)
    finally:
        first.kill()
    assert len(pair.agent_runs()) == 1
    # The one result is the real outcome, not an `interrupted` written by the refusal.
    assert result_json(lane, obj["id"])["status"] == "ok"


def test_exec_usage_errors(pair: Pair) -> None:
    proc = cli(pair.receiver, "exec", "not-an-id")
    assert proc.returncode == 2 and "not a task id" in proc.stderr
    proc = cli(pair.receiver, "exec", new_id())
    assert proc.returncode == 2 and "not queued" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_planted_symlink_at_the_log_path_is_not_followed(pair: Pair) -> None:
    """done/ is on the share: a link planted at done/<id>.log must not make the executor
    truncate and write a file elsewhere (as whatever user it runs as)."""
    obj, lane = queued(pair, request="write my log")
    victim = pair.root.parent / "victim.txt"
    victim.write_text("precious\n")
    os.symlink(victim, lane.log_path(obj["id"]))
    res = execute(pair.receiver.node(), obj["id"])
    assert victim.read_text() == "precious\n"
    assert res is not None and res.status is Status.OK
    log = lane.log_path(obj["id"])
    assert not log.is_symlink() and "write my log" in log.read_text()
    planted = lane.rejected / log.name
    assert planted.is_symlink()  # kept, with its reason: nothing deleted silently
    assert json.loads(Path(f"{planted}.reason.json").read_text())["reason"] == "foreign_log"


def test_agent_that_ignores_sigterm_is_killed_after_the_grace(pair: Pair) -> None:
    configure(
        pair.receiver,
        DISPATCH_AGENT_PROFILE="generic",
        DISPATCH_AGENT_BIN="/bin/sh -c \"trap '' TERM; while :; do sleep 1; done\"",
    )
    obj, _ = queued(pair, timeout_s=1)
    began = time.monotonic()
    res = execute(pair.receiver.node(), obj["id"])
    assert res is not None and res.status is Status.TIMEOUT and res.exit_code == 124
    assert time.monotonic() - began < 1 + GRACE_S + 5


def test_descendant_that_escaped_the_group_does_not_hold_the_execution(pair: Pair) -> None:
    """A child in its own session keeps the output pipe open after the agent exits; the
    execution still ends (under systemd the unit's cgroup takes care of the child)."""
    obj, _ = queued(pair, request="leave a child fork=8")
    began = time.monotonic()
    res = execute(pair.receiver.node(), obj["id"])
    assert res is not None and res.status is Status.OK
    assert time.monotonic() - began < 7


def test_the_agent_never_runs_as_root_by_default(pair: Pair) -> None:
    """Issue 12, finding 4: DISPATCH_RUN_AS unset ran the agent as root, able to read the
    node's keys. An executor running as root with no user to drop to refuses instead."""
    if os.geteuid() != 0:
        pytest.skip("the executor drops privileges only when it runs as root")
    configure(pair.receiver, DISPATCH_RUN_AS="")
    obj = envelope(pair)
    drop(lane_in(pair), obj)
    drain(pair.receiver.node())
    res = result_json(lane_in(pair), obj["id"])
    assert res["status"] == "error" and "DISPATCH_RUN_AS is unset" in res["reason"], res
    assert runs_of(pair, obj["id"]) == []


def test_the_agent_environment_holds_no_secret(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Under systemd the unit reads dispatch.conf into the executor's environment.
    monkeypatch.setenv("DISPATCH_WEBHOOK_URL", "https://hooks.example/api/webhooks/1/s3cr3t")
    monkeypatch.setenv("DISPATCH_KEY_DIR", str(pair.receiver.node().cfg.key_dir))
    agent = tmp_path / "env-agent"
    agent.write_text("#!/bin/sh\nenv\n")
    agent.chmod(0o755)
    configure(pair.receiver, DISPATCH_AGENT_PROFILE="generic", DISPATCH_AGENT_BIN=str(agent))
    obj = envelope(pair, callback="none")  # no post to the (made-up) webhook
    drop(lane_in(pair), obj)
    drain(pair.receiver.node())
    res = result_json(lane_in(pair), obj["id"])
    assert res["status"] == "ok", res
    seen = res["output_tail"]
    assert f"DISPATCH_TASK_ID={obj['id']}" in seen
    assert "s3cr3t" not in seen and "DISPATCH_KEY_DIR" not in seen
    assert "DISPATCH_STATE_DIR" not in seen
