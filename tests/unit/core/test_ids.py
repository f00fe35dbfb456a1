"""Task ids as people type them: plain `send` prints the id alone, every command that takes an
id takes a unique prefix of it, Ctrl-C while waiting says where the task is, and shell
completion offers ids and peers. The real CLI, as a subprocess."""

from __future__ import annotations

import os
import pty
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dispatch.core import ids
from dispatch.core.errors import NotFound, UsageError
from dispatch.core.wire import new_id, valid_id
from tests.conftest import Pair
from tests.unit.helpers import BIN, cli, drain, env_for, lane_in, wait_for

SEND = [sys.executable, "-m", "dispatch", "send", "--to", "gpubox"]


def test_resolve_whole_ids_prefixes_and_ambiguity() -> None:
    a, b = "8564902e-1111-4111-8111-111111111111", "8564aaaa-2222-4222-8222-222222222222"
    assert ids.resolve("8564902e", [a, b]) == a
    assert ids.resolve("8564902E", [a, b]) == a  # as typed from a screen
    with pytest.raises(UsageError, match=r"matches 2 tasks .*8564902e-111.*8564aaaa-222"):
        ids.resolve("8564", [a, b])
    with pytest.raises(NotFound, match="no task id starts with 'ffff'"):
        ids.resolve("ffff", [a, b])
    with pytest.raises(UsageError, match="not a task id or id prefix"):
        ids.resolve("../../etc/passwd", [a, b])
    # A whole id stands for itself, known or not (the command then says what it lacks).
    other = new_id()
    assert ids.resolve(other, []) == other


def test_plain_send_prints_the_id_alone_and_it_feeds_the_next_command(pair: Pair) -> None:
    proc = cli(pair.sender, "send", "--to", "gpubox", "--request", "hello")
    assert proc.returncode == 0, proc.stderr
    task_id = proc.stdout.strip()
    assert proc.stdout == task_id + "\n" and valid_id(task_id)
    # The path goes to stderr, for people.
    assert str(lane_in(pair).inbox / f"{task_id}.json") in proc.stderr
    drain(pair.receiver.node())
    shown = cli(pair.sender, "result", task_id)
    assert shown.returncode == 0 and "hello" in shown.stdout, shown.stderr


def test_every_id_command_takes_a_unique_prefix(pair: Pair) -> None:
    sent = cli(pair.sender, "send", "--to", "gpubox", "--request", "by prefix").stdout.strip()
    held = cli(
        pair.sender, "send", "--to", "gpubox", "--request", "held", "--require-ack"
    ).stdout.strip()
    prefix = sent[:8]
    drain(pair.receiver.node())
    for args in (("result", prefix), ("wait", prefix, "--timeout", "5"), ("logs", prefix)):
        proc = cli(pair.sender, *args)
        assert proc.returncode == 0, (args, proc.stderr)
    assert "by prefix" in cli(pair.sender, "result", prefix).stdout
    # cancel: a finished task is left alone, named by its whole id.
    proc = cli(pair.sender, "cancel", prefix)
    assert proc.returncode == 0 and f"task {sent} already finished (ok)" in proc.stdout
    # ack, on the receiver, by the held task's prefix.
    proc = cli(pair.receiver, "ack", held[:6])
    assert proc.returncode == 0 and held in proc.stdout, proc.stderr
    # A prefix nothing starts with says so, exit 2.
    proc = cli(pair.sender, "result", "ffffffff")
    assert proc.returncode == 2 and "no task id starts with 'ffffffff'" in proc.stderr


def test_ctrl_c_while_waiting_says_the_task_goes_on_and_how_to_come_back(pair: Pair) -> None:
    env = env_for(pair.sender)
    proc = subprocess.Popen(
        [*SEND, "--request", "long", "--wait"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lane = lane_in(pair)
    wait_for(lambda: bool(lane.task_ids(lane.inbox)), what="the task in the inbox")
    [task_id] = lane.task_ids(lane.inbox)
    time.sleep(0.3)  # into the waiting loop
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "aborted" not in err
    assert f"task {task_id} keeps running on gpubox" in err
    assert f"dispatch wait {task_id}" in err and f"dispatch cancel {task_id}" in err
    assert err.count("\n") == 1


def test_send_wait_on_a_terminal_ends_with_the_whole_id_in_view(pair: Pair) -> None:
    watcher = subprocess.Popen(
        [sys.executable, "-m", "dispatch", "watch", "--quiet"],
        env=env_for(pair.receiver),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            [*SEND, "--request", "hi", "--wait", "--wait-timeout", "30"],
            env=env_for(pair.sender),
            stdout=subprocess.PIPE,
            stderr=slave,
            text=True,
            timeout=60,
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
        watcher.wait(10)
    assert proc.returncode == 0 and "hi" in proc.stdout
    [task_id] = [r["task_id"] for r in pair.agent_runs()]
    # The live line is erased; what stays is the whole id, the status and the time taken.
    last = shown.decode().replace("\r\n", "\n").split("\r")[-1]
    assert f"{task_id} ok " in last and "on gpubox" in last, shown


def _complete(setup_env: dict[str, str], words: str) -> list[str]:
    env = {
        **setup_env,
        "_DISPATCH_COMPLETE": "bash_complete",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)),
    }
    proc = subprocess.run(
        [str(BIN / "dispatch")], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return [line.split(",", 1)[1] for line in proc.stdout.splitlines() if "," in line]


def test_shell_completion_offers_ids_and_peers(pair: Pair) -> None:
    task_id = cli(pair.sender, "send", "--to", "gpubox", "--request", "x").stdout.strip()
    env = env_for(pair.sender)
    assert _complete(env, f"dispatch result {task_id[:4]}") == [task_id]
    assert task_id in _complete(env, "dispatch wait ")
    assert _complete(env, "dispatch send --to g") == ["gpubox"]
    # A broken config offers nothing, and no traceback reaches the shell.
    broken = {**env, "DISPATCH_CONFIG": str(Path(env["DISPATCH_CONFIG"]).parent / "none")}
    assert _complete(broken, "dispatch result 1") == []


def test_a_mistyped_command_gets_a_suggestion(pair: Pair) -> None:
    proc = cli(pair.sender, "sned", "--to", "gpubox")
    assert proc.returncode == 2 and "Did you mean 'send'?" in proc.stderr
