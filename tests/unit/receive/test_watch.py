"""`dispatch watch`: the promote/exec loop without systemd."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from dispatch.send import task as sender
from tests.conftest import Pair
from tests.unit.helpers import (
    cli,
    configure,
    drop,
    env_for,
    envelope,
    lane_in,
    result_json,
    wait_for,
)


def test_watch_once_drains_everything_and_returns(pair: Pair) -> None:
    configure(pair.receiver, DISPATCH_MAX_PARALLEL=2)
    tx = pair.sender.node()
    ids = [
        sender.deliver(tx, sender.build(tx, to="gpubox", request=f"job {i}")).envelope.id
        for i in range(5)
    ]
    held = sender.deliver(
        tx, sender.build(tx, to="gpubox", request="held", require_ack=True)
    ).envelope.id
    proc = cli(pair.receiver, "watch", "--once", "--quiet", timeout=60)
    assert proc.returncode == 0, proc.stderr
    lane = lane_in(pair)
    for task_id in ids:
        assert result_json(lane, task_id)["status"] == "ok"
    assert sorted(str(r["task_id"]) for r in pair.agent_runs()) == sorted(ids)
    assert os.listdir(lane.inbox) == [] and os.listdir(lane.processing) == []
    assert (lane.pending_ack / f"{held}.json").exists()  # waits for its ack, not for watch


def test_watch_once_with_the_killswitch_on_returns_without_running(pair: Pair) -> None:
    (pair.root / "KILLSWITCH").write_text("stop\n")
    lane = lane_in(pair)
    obj = envelope(pair)
    drop(lane, obj)
    began = time.monotonic()
    proc = cli(pair.receiver, "watch", "--once", timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - began < 15
    assert (lane.processing / f"{obj['id']}.json").exists()
    assert pair.agent_runs() == []
    assert "killswitch_hold" in proc.stderr  # events are echoed without --quiet


def test_watch_picks_up_tasks_as_they_arrive(pair: Pair) -> None:
    watcher = subprocess.Popen(
        [sys.executable, "-m", "dispatch", "watch", "--quiet"],
        env=env_for(pair.receiver),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        time.sleep(0.5)
        lane = lane_in(pair)
        first = envelope(pair, request="first")
        drop(lane, first)
        wait_for(
            lambda: lane.result_path(first["id"]).exists(), timeout=30, what="the first result"
        )
        second = envelope(pair, request="second")
        drop(lane, second)
        wait_for(
            lambda: lane.result_path(second["id"]).exists(), timeout=30, what="the second result"
        )
        assert watcher.poll() is None  # still watching
    finally:
        os.killpg(watcher.pid, signal.SIGTERM)
        watcher.communicate(timeout=10)
    assert [r["request"] for r in pair.agent_runs()] == ["first", "second"]
    assert json.loads(lane.result_path(second["id"]).read_text())["status"] == "ok"
