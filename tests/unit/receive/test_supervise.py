"""The stall guard: an agent that prints nothing for DISPATCH_STALL_S ends `stalled` (exit 1
for the sender), with its last output in the result, long before its timeout; 0 turns the
guard off; an agent that keeps talking is not stalled."""

from __future__ import annotations

import time

from dispatch.core.model import Status
from dispatch.receive.executor import execute
from tests.conftest import Pair
from tests.unit.helpers import cli, configure, drain, pgid_alive, runs_of
from tests.unit.receive.test_executor import queued


def test_a_silent_agent_ends_stalled_with_its_last_output(pair: Pair) -> None:
    configure(pair.receiver, DISPATCH_STALL_S=1)
    obj, _lane = queued(pair, request="wait for a prompt hang=60", timeout_s=600)
    began = time.monotonic()
    res = execute(pair.receiver.node(), obj["id"])
    assert res is not None and res.status is Status.STALLED
    assert time.monotonic() - began < 15  # not the 600 s timeout, not the 60 s hang
    assert res.reason.startswith("no output for 1s (DISPATCH_STALL_S); last output: ")
    assert '"subtype": "init"' in res.reason  # what the agent said last
    assert '"subtype": "init"' in res.output_tail
    assert not pgid_alive(int(str(runs_of(pair, obj["id"])[0]["pid"])))
    # The sender: `stalled` is a failed task.
    proc = cli(pair.sender, "wait", obj["id"], "--wait-timeout", "10")
    assert proc.returncode == 1 and f"task {obj['id']} ended stalled" in proc.stderr


def test_output_keeps_the_guard_quiet_and_zero_turns_it_off(pair: Pair) -> None:
    configure(pair.receiver, DISPATCH_STALL_S=2)
    talking = cli(pair.sender, "send", "--to", "gpubox", "--request", "busy sleep=4").stdout
    drain(pair.receiver.node())
    assert cli(pair.sender, "result", talking.strip()).returncode == 0
    configure(pair.receiver, DISPATCH_STALL_S=0)
    quiet = cli(pair.sender, "send", "--to", "gpubox", "--request", "quiet hang=3").stdout
    drain(pair.receiver.node())
    assert cli(pair.sender, "result", quiet.strip()).returncode == 0
