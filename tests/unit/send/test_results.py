"""Routing by local records, never by where files sit (issue 12, findings 3, 6 and 9): with
three nodes, what is planted in one lane changes nothing for a task of another; a result is
accepted only from the lane the task was sent on, answered by that lane's receiver, for the
task it names; junk at a result's place makes `wait` wait on."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from dispatch.core.model import Status
from dispatch.core.spool import Lane
from dispatch.receive import publish
from dispatch.receive.launch.process import ProcessLauncher
from dispatch.receive.promote.admission import admit_inbox
from dispatch.receive.promote.report import Pass
from dispatch.send import task as sender
from tests.conftest import Pair
from tests.unit.helpers import cli, configure, drain, lane_in, result_json, runs_of


@pytest.fixture
def three(pair: Pair) -> Pair:
    """devbox and gpubox each also peer with a node `third` that never answers."""
    configure(pair.sender, DISPATCH_PEERS="third,gpubox")
    configure(pair.receiver, DISPATCH_PEERS="third,devbox")
    for from_, to in (("devbox", "third"), ("third", "gpubox"), ("gpubox", "third")):
        Lane(pair.root, from_, to).ensure()
    return pair


def _send(pair: Pair, request: str) -> str:
    tx = pair.sender.node()
    return sender.deliver(tx, sender.build(tx, to="gpubox", request=request)).envelope.id


def _plant_rejection(lane: Lane, task_id: str) -> None:
    (lane.rejected / f"{task_id}.json").write_text("{}")
    reason = {"reason": "bad_signature", "message": "planted", "task_id": task_id}
    (lane.rejected / f"{task_id}.json.reason.json").write_text(json.dumps(reason))


def test_wait_result_and_cancel_follow_the_lane_a_task_was_sent_on(three: Pair) -> None:
    pair = three
    other = Lane(pair.root, "devbox", "third")
    waited, cancelled = _send(pair, "the real one"), _send(pair, "to be called back")
    for task_id in (waited, cancelled):
        _plant_rejection(other, task_id)
    proc = cli(pair.sender, "cancel", cancelled)
    assert proc.returncode == 0, proc.stderr
    assert (lane_in(pair).cancel / f"{cancelled}.json").exists()
    assert os.listdir(other.cancel) == []
    drain(pair.receiver.node())
    proc = cli(pair.sender, "wait", waited, "--timeout", "10")
    assert proc.returncode == 0 and "the real one" in proc.stdout, proc.stderr
    proc = cli(pair.sender, "result", cancelled, "--json")
    assert json.loads(proc.stdout)["status"] == "cancelled", proc.stderr
    assert [r["task_id"] for r in pair.agent_runs()] == [waited]


def test_a_result_copied_from_another_lane_is_not_an_outcome(three: Pair) -> None:
    """gpubox sent Z to devbox; a result gpubox itself signed for Z in the other lane (the
    oracle of finding 3 made one) copied into gpubox-to-devbox/done/ is not Z's outcome."""
    pair = three
    rx = pair.receiver.node()
    task_id = sender.deliver(rx, sender.build(rx, to="devbox", request="z")).envelope.id
    back = lane_in(pair)
    assert publish.verdict(rx, back, task_id, "", Status.REJECTED, "planted")
    out = Lane(pair.root, "gpubox", "devbox")
    shutil.copy(back.result_path(task_id), out.result_path(task_id))
    proc = cli(pair.receiver, "result", task_id)
    # Refused by what gpubox signed: the lane it answered for is part of the signature.
    assert proc.returncode == 3
    assert "result for lane devbox-to-gpubox found in gpubox-to-devbox" in proc.stderr
    proc = cli(pair.receiver, "wait", task_id, "--timeout", "1")
    assert proc.returncode == 4 and "ignored" in proc.stderr, proc.stderr


def test_a_result_copied_between_task_ids_or_junk_makes_wait_wait_on(three: Pair) -> None:
    pair = three
    lane = lane_in(pair)
    first = _send(pair, "first")
    drain(pair.receiver.node())
    second = _send(pair, "second")
    shutil.copy(lane.result_path(first), lane.result_path(second))
    proc = cli(pair.sender, "wait", second, "--timeout", "1")
    assert proc.returncode == 4 and "another task" in proc.stderr, proc.stderr
    lane.result_path(second).write_text("junk")
    proc = cli(pair.sender, "wait", second, "--timeout", "1")
    assert proc.returncode == 4 and "ignored" in proc.stderr, proc.stderr
    # The receiver quarantines what sits at the result's place and publishes the real one.
    drain(pair.receiver.node())
    proc = cli(pair.sender, "wait", second, "--timeout", "10")
    assert proc.returncode == 0 and "second" in proc.stdout, proc.stderr


def test_exec_runs_a_task_from_its_ledger_lane_not_a_planted_one(three: Pair) -> None:
    pair = three
    rx = pair.receiver.node()
    task_id = _send(pair, "mine")
    admit_inbox(Pass(rx, ProcessLauncher(rx)), lane_in(pair))
    planted = Lane(pair.root, "third", "gpubox")
    (planted.processing / f"{task_id}.json").write_text("{}")
    proc = cli(pair.receiver, "exec", task_id)
    assert proc.returncode == 0, proc.stderr
    assert result_json(lane_in(pair), task_id)["status"] == "ok"
    assert len(runs_of(pair, task_id)) == 1
    assert not os.path.lexists(planted.result_path(task_id))
