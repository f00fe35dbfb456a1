"""The ack gate holds whatever is done to files on the share: a task's stage is what the
node-local ledger says (issue 12, finding 1), and a file found in a stage the ledger did not
put it in is moved back or quarantined, never run."""

from __future__ import annotations

import json
import os

from dispatch.core.model import Stage
from dispatch.receive.launch.process import ProcessLauncher
from dispatch.receive.promote import promote
from dispatch.receive.promote.admission import admit_inbox
from dispatch.receive.promote.report import Pass
from tests.conftest import Pair
from tests.unit.helpers import (
    cli,
    drop,
    envelope,
    lane_in,
    promote_once,
    reason_of,
    result_json,
    runs_of,
)


def _pending(pair: Pair) -> str:
    lane = lane_in(pair)
    obj = envelope(pair, require_ack=True)
    drop(lane, obj)
    promote_once(pair.receiver.node())
    assert (lane.pending_ack / f"{obj['id']}.json").exists()
    task_id: str = obj["id"]
    return task_id


def test_a_pending_task_moved_to_processing_by_hand_never_runs(pair: Pair) -> None:
    lane = lane_in(pair)
    task_id = _pending(pair)
    name = f"{task_id}.json"
    os.rename(lane.pending_ack / name, lane.processing / name)
    report = promote_once(pair.receiver.node())
    assert runs_of(pair, task_id) == [] and report.started == []
    # The pass put it back where the ledger says it is: still waiting for its ack.
    assert (lane.pending_ack / name).exists() and not (lane.processing / name).exists()
    entry = pair.receiver.node().state.entry(task_id)
    assert entry is not None and entry.stage is Stage.PENDING_ACK
    # `dispatch exec` by hand refuses it too, whatever the share shows.
    os.rename(lane.pending_ack / name, lane.processing / name)
    proc = cli(pair.receiver, "exec", task_id)
    assert proc.returncode != 0 and "ack" in proc.stderr, proc.stderr
    assert runs_of(pair, task_id) == []
    assert not lane.result_path(task_id).exists()
    # The genuine ack still releases it, once.
    promote_once(pair.receiver.node())
    assert cli(pair.receiver, "ack", task_id).returncode == 0
    promote_once(pair.receiver.node())
    promote_once(pair.receiver.node())
    assert len(runs_of(pair, task_id)) == 1
    assert result_json(lane, task_id)["status"] == "ok"


def test_a_misplaced_file_that_differs_from_the_admitted_one_is_quarantined(pair: Pair) -> None:
    lane = lane_in(pair)
    task_id = _pending(pair)
    name = f"{task_id}.json"
    # Another validly signed envelope under the pending task's name, put in processing/.
    other = envelope(pair, id=task_id, request="something else")
    (lane.processing / name).write_text(json.dumps(other))
    promote_once(pair.receiver.node())
    assert runs_of(pair, task_id) == []
    assert reason_of(lane, name)["reason"] == "misplaced"
    assert (lane.pending_ack / name).exists()


def test_a_released_task_moved_back_to_pending_ack_is_repaired(pair: Pair) -> None:
    lane = lane_in(pair)
    task_id = _pending(pair)
    name = f"{task_id}.json"
    node = pair.receiver.node()
    # A crash between the ledger's record and the move: the ledger leads, the pass follows.
    node.state.mark(task_id, Stage.QUEUED)
    promote_once(node)
    promote_once(node)
    assert len(runs_of(pair, task_id)) == 1
    assert not (lane.pending_ack / name).exists()


def test_a_queued_file_moved_back_to_the_inbox_is_not_lost(pair: Pair) -> None:
    lane = lane_in(pair)
    obj = envelope(pair)
    name = f"{obj['id']}.json"
    drop(lane, obj)
    node = pair.receiver.node()
    admit_inbox(Pass(node, ProcessLauncher(node)), lane)  # admitted, not started yet
    assert (lane.processing / name).exists()
    os.rename(lane.processing / name, lane.inbox / name)
    launcher = ProcessLauncher(node)
    promote(node, launcher)
    launcher.wait_all(60)
    assert len(runs_of(pair, obj["id"])) == 1
    assert not os.path.lexists(lane.rejected / name)
