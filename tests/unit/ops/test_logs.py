"""`dispatch logs` on the sender: the agent's output from done/<id>.log on the share, followed
with -f until the verified result, then its status line; nothing on the share blocks it."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import Pair
from tests.unit.helpers import cli, env_for, lane_in


def _send(pair: Pair, request: str) -> str:
    proc = cli(pair.sender, "send", "--to", "gpubox", "--request", request)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_logs_follow_on_the_sender_shows_the_output_until_the_result(pair: Pair) -> None:
    task_id = _send(pair, "report as you go sleep=2")
    follower = subprocess.Popen(
        [sys.executable, "-m", "dispatch", "logs", "-f", task_id[:8]],
        env=env_for(pair.sender),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watcher = subprocess.Popen(
        [sys.executable, "-m", "dispatch", "watch", "--quiet"],
        env=env_for(pair.receiver),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        out, err = follower.communicate(timeout=60)
    finally:
        watcher.terminate()
        watcher.wait(20)
    assert follower.returncode == 0, err
    lines = out.splitlines()
    assert "[task_sent]" not in out  # the agent's output, not the sender's own journal
    assert any("working..." in line for line in lines)
    assert any("fake agent (acceptEdits) did: report as you go" in line for line in lines)
    assert lines[-1].startswith(f"-- {task_id} ended ok after ")
    assert lines[-1].endswith("on gpubox (exit 0)")
    # Without -f, once done: the same output and status line, at once.
    again = cli(pair.sender, "logs", task_id)
    assert again.returncode == 0 and again.stdout.splitlines() == lines


def test_logs_of_a_task_not_started_yet_says_so(pair: Pair) -> None:
    task_id = _send(pair, "nobody runs me")
    proc = cli(pair.sender, "logs", task_id)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"-- no output yet from {task_id} (stage: inbox)"


def test_a_fifo_planted_as_the_log_does_not_block_logs(pair: Pair) -> None:
    task_id = _send(pair, "planted")
    lane = lane_in(pair)
    os.mkfifo(lane.log_path(task_id))
    proc = cli(pair.sender, "logs", task_id, timeout=20)
    assert proc.returncode == 3 and "not a regular file" in proc.stderr
    assert proc.stderr.count("\n") == 1
