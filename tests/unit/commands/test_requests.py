"""Requests and answers of real size: a request from a file or stdin, up to the envelope's
limit (stated when exceeded), reaching the agent on stdin when it is too long for one
argument; every cut of the answer marked; each waiting flag says which clock it sets; what
`wait` shows of a long task, on a terminal and off one."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from typing import Any

from tests.conftest import Pair
from tests.unit.helpers import cli, drain, env_for, lane_in, run, runs_of


def _sent(pair: Pair, task_id: str) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads((lane_in(pair).inbox / f"{task_id}.json").read_text())
    return obj


def _send(pair: Pair, *args: str, stdin: str | None = None) -> Any:
    return run(
        [sys.executable, "-m", "dispatch", "send", "--to", "gpubox", *args],
        env_for(pair.sender),
        stdin=stdin,
    )


def test_a_long_request_from_a_file_reaches_the_agent_on_stdin(pair: Pair, tmp_path: Any) -> None:
    request = "summarise this " + "x" * 600_000
    path = tmp_path / "request.txt"
    path.write_text(request)
    proc = _send(pair, "--request-file", str(path))
    assert proc.returncode == 0, proc.stderr
    task_id = proc.stdout.strip()
    assert _sent(pair, task_id)["request"] == request
    drain(pair.receiver.node())
    [ran] = runs_of(pair, task_id)
    # Over one argument's 128 KiB: on stdin, whole.
    assert ran["request_from"] == "stdin" and ran["request_chars"] == len(request)
    assert json.loads(cli(pair.sender, "result", task_id, "--json").stdout)["status"] == "ok"
    # A short one still travels as the argument of -p.
    short = cli(pair.sender, "send", "--to", "gpubox", "--request", "short").stdout.strip()
    drain(pair.receiver.node())
    assert runs_of(pair, short)[0]["request_from"] == "argv"


def test_request_from_stdin(pair: Pair) -> None:
    for flags in (("--request", "-"), ("--request-file", "-")):
        proc = _send(pair, *flags, stdin="from stdin\nline two\n")
        assert proc.returncode == 0, proc.stderr
        assert _sent(pair, proc.stdout.strip())["request"] == "from stdin\nline two\n"


def test_the_envelope_limit_is_stated_when_exceeded(pair: Pair) -> None:
    proc = _send(pair, "--request", "-", stdin="y" * 2_000_000)
    assert proc.returncode == 2 and "over 1048576 bytes" in proc.stderr
    assert "1 MiB" in proc.stderr and proc.stderr.count("\n") == 1
    # Under the limit as a request, over it as a signed envelope.
    proc = _send(pair, "--request", "-", stdin="z" * 1_048_300)
    assert proc.returncode == 2 and "1048576-byte (1 MiB) limit" in proc.stderr
    assert "the request is 1048300 bytes" in proc.stderr
    proc = _send(pair)
    assert proc.returncode == 2 and "--request TEXT, or --request-file PATH" in proc.stderr
    assert lane_in(pair).task_ids(lane_in(pair).inbox) == []


def test_a_cut_answer_is_marked_and_wait_points_to_the_log(pair: Pair) -> None:
    task_id = cli(pair.sender, "send", "--to", "gpubox", "--request", "answer=120000").stdout
    task_id = task_id.strip()
    drain(pair.receiver.node())
    result = json.loads(cli(pair.sender, "result", task_id, "--json").stdout)
    assert result["truncated"] is True
    assert result["final_text"].startswith("fake agent (acceptEdits) did: answer=120000")
    assert result["final_text"].endswith(
        "\n[dispatch: final_text truncated: 65536 of 120000 characters kept; "
        "the whole output is in the task's log]"
    )
    waited = cli(pair.sender, "wait", task_id, "--wait-timeout", "10")
    assert waited.returncode == 0
    log = lane_in(pair).log_path(task_id)
    assert (
        f"output truncated; the whole output (up to the task's max_output_bytes) is in the "
        f"log: {log}, dispatch logs {task_id[:8]}" in waited.stderr
    )
    assert len(log.read_text()) > 120_000
    # An answer that fits is not marked.
    whole = cli(pair.sender, "send", "--to", "gpubox", "--request", "fits").stdout.strip()
    drain(pair.receiver.node())
    fits = json.loads(cli(pair.sender, "result", whole, "--json").stdout)
    assert fits["truncated"] is False and "truncated" not in fits["final_text"]


def test_each_waiting_flag_says_which_clock_it_sets(pair: Pair) -> None:
    send_help = " ".join(cli(pair.sender, "send", "--help").stdout.split())
    assert "the task's own clock" in send_help and "the waiting clock only" in send_help
    wait_help = " ".join(cli(pair.sender, "wait", "--help").stdout.split())
    assert "--wait-timeout" in wait_help and "The waiting clock only" in wait_help
    never = cli(pair.sender, "send", "--to", "gpubox", "--request", "later").stdout.strip()
    proc = cli(pair.sender, "wait", never, "--wait-timeout", "0.3")
    assert proc.returncode == 4 and "(last seen: inbox)" in proc.stderr


def _watching(pair: Pair) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "dispatch", "watch", "--quiet"],
        env=env_for(pair.receiver),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_wait_progress_off_a_terminal_prints_each_stage(pair: Pair) -> None:
    task_id = cli(pair.sender, "send", "--to", "gpubox", "--request", "slow sleep=2").stdout
    task_id = task_id.strip()
    watcher = _watching(pair)
    try:
        proc = cli(pair.sender, "wait", task_id, "--progress", "--wait-timeout", "60")
    finally:
        watcher.terminate()
        watcher.wait(20)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    stages = [line.split()[1] for line in lines[:-1]]
    assert "running" in stages and len(stages) == len(set(stages))  # one line per change
    assert all(line.startswith(task_id[:8] + " ") for line in lines[:-1])
    assert lines[-1].startswith(f"{task_id} ok ") and lines[-1].endswith("on gpubox")


def test_wait_on_a_terminal_shows_the_latest_output(pair: Pair) -> None:
    task_id = cli(pair.sender, "send", "--to", "gpubox", "--request", "slow sleep=3").stdout
    task_id = task_id.strip()
    watcher = _watching(pair)
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "dispatch", "wait", task_id, "--wait-timeout", "60"],
            env=env_for(pair.sender),
            stdout=subprocess.PIPE,
            stderr=slave,
            timeout=90,
            check=False,
        )
        os.close(slave)
        shown = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(master)
        watcher.terminate()
        watcher.wait(20)
    assert proc.returncode == 0
    frames = shown.decode().split("\r\x1b[2K")
    # The stage, the time so far, and the agent's latest words (its text, not raw JSON).
    assert any(
        frame.startswith(f"{task_id[:8]} running ") and frame.rstrip().endswith("working...")
        for frame in frames
    ), frames
