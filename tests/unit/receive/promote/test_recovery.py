"""Recovery when the local signer does not sign (stopped, hung): an execution's result is
kept unsigned on the node and the first pass that can sign publishes that very result, once;
a verdict a pass cannot sign leaves its task where it is. Nothing is lost, nothing answered
in its place."""

from __future__ import annotations

import socket

from dispatch.core.model import Stage, Status
from dispatch.core.node import Node
from dispatch.receive.executor import execute
from dispatch.send import results
from tests.conftest import Pair
from tests.unit.helpers import (
    cli,
    drop,
    envelope,
    events_of,
    lane_in,
    promote_once,
    result_json,
    runs_of,
)
from tests.unit.receive.test_executor import queued


def stopped_signer(pair: Pair) -> Node:
    """The receiver with a signer socket nobody serves (what `systemctl stop
    dispatch-signer.socket` leaves): it must not sign in-process instead."""
    path = pair.root.parent / "stopped-signer.sock"
    if not path.exists():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(str(path))
    return pair.receiver.node(DISPATCH_SIGNER_SOCKET=str(path))


def test_an_unsigned_result_is_kept_and_the_next_pass_that_can_sign_publishes_it(
    pair: Pair,
) -> None:
    obj, lane = queued(pair, request="work done while the signer is down")
    task_id = obj["id"]
    down = stopped_signer(pair)
    ran = execute(down, task_id)
    assert ran is not None and ran.status is Status.OK
    assert not lane.result_path(task_id).exists()
    [(kept_id, lane_name, body, _log)] = down.state.deferred_results()
    assert (kept_id, lane_name) == (task_id, lane.name)
    assert "sig" not in body and body["final_text"] == ran.final_text
    [unsigned] = events_of(pair, "result_unsigned")
    assert "systemctl status dispatch-signer.socket" in unsigned
    # A pass while the signer is still down: nothing published, and the task is neither
    # answered `interrupted` nor run again.
    promote_once(down)
    assert not lane.result_path(task_id).exists()
    entry = down.state.entry(task_id)
    assert entry is not None and entry.stage is not Stage.DONE
    assert len(down.state.deferred_results()) == 1
    assert events_of(pair, "verdict_unsigned"), "the pass says why it published nothing"
    shown = cli(pair.receiver, "status", DISPATCH_SIGNER_SOCKET=str(down.cfg.signer_socket))
    assert f"fault devbox-to-gpubox/signer/{task_id}: not signed: " in shown.stdout, shown
    assert "systemctl status dispatch-signer.socket" in shown.stdout
    # The signer is back (here: none at all, so in-process): the very result, signed.
    up = pair.receiver.node()
    promote_once(up)
    published = result_json(lane, task_id)
    assert {k: v for k, v in published.items() if k not in ("kid", "sig")} == {
        k: v for k, v in body.items() if k != "kid"
    }
    assert results.get(pair.sender.node(), task_id).status is Status.OK  # it verifies
    assert up.state.deferred_results() == []
    assert up.state.faults.all() == []  # cleared by the pass that signed it
    entry = up.state.entry(task_id)
    assert entry is not None and entry.stage is Stage.DONE
    assert not (lane.processing / f"{task_id}.json").exists()
    # Once: a later pass changes nothing, and the agent ran once.
    before = lane.result_path(task_id).read_bytes()
    promote_once(up)
    assert lane.result_path(task_id).read_bytes() == before
    assert len(runs_of(pair, task_id)) == 1


def test_a_rejection_the_signer_did_not_sign_waits_in_the_inbox_for_the_next_pass(
    pair: Pair,
) -> None:
    lane = lane_in(pair)
    # Genuine but stale: answered with a signed `rejected` (a forgery is never answered).
    stale = envelope(pair, created="2020-01-01T00:00:00Z")
    task_id = stale["id"]
    drop(lane, stale)
    down = stopped_signer(pair)
    promote_once(down)
    # Not claimed either: the next pass still answers it.
    assert (lane.inbox / f"{task_id}.json").exists()
    assert down.state.entry(task_id) is None
    assert not lane.result_path(task_id).exists()
    assert any(task_id in line for line in events_of(pair, "verdict_unsigned"))
    promote_once(pair.receiver.node())
    answer = result_json(lane, task_id)
    assert answer["status"] == "rejected" and answer["reason"].startswith("stale")
    assert (lane.rejected / f"{task_id}.json").exists()
    assert runs_of(pair, task_id) == []


def test_a_cancel_the_signer_did_not_sign_is_answered_by_a_later_pass(pair: Pair) -> None:
    obj, lane = queued(pair)
    task_id = obj["id"]
    (pair.root / "KILLSWITCH").write_text("hold\n")
    assert cli(pair.sender, "cancel", task_id).returncode == 0
    down = stopped_signer(pair)
    promote_once(down)
    assert not lane.result_path(task_id).exists()
    assert (lane.processing / f"{task_id}.json").exists()
    assert any(task_id in line for line in events_of(pair, "verdict_unsigned"))
    (pair.root / "KILLSWITCH").unlink()
    promote_once(pair.receiver.node())
    assert result_json(lane, task_id)["status"] == "cancelled"
    assert runs_of(pair, task_id) == []
