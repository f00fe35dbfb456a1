"""`dispatch cancel`: a signed request from the sender, honoured by the receiver's promote.
Queued or waiting for an ack, the task never runs; running, it is stopped; finished, it is
left alone. A forged request changes nothing, and an ack that never comes cancels (fail
closed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dispatch.core.spool import clear_killswitch, set_killswitch
from dispatch.core.wire import canonical, new_id, now_utc, rfc3339
from dispatch.send import task as sender
from tests.conftest import Pair
from tests.unit.helpers import (
    cli,
    configure,
    drain,
    env_for,
    lane_in,
    node_key,
    pgid_alive,
    promote_once,
    reason_of,
    result_json,
    runs_of,
    sender_key,
    signed,
    verifies,
    wait_for,
)


def send(pair: Pair, request: str, **kwargs: Any) -> str:
    tx = pair.sender.node()
    return sender.deliver(tx, sender.build(tx, to="gpubox", request=request, **kwargs)).envelope.id


def cancel_json(pair: Pair, task_id: str, *args: str) -> tuple[int, dict[str, Any]]:
    proc = cli(pair.sender, "cancel", task_id, "--json", *args)
    assert proc.stdout.strip(), proc.stderr
    out: dict[str, Any] = json.loads(proc.stdout)
    return proc.returncode, out


def test_cancel_a_queued_task_it_never_runs(pair: Pair) -> None:
    set_killswitch(pair.receiver.node().spool, hard=False, reason="holding")
    task_id = send(pair, "queued job")
    promote_once(pair.receiver.node())
    lane = lane_in(pair)
    assert (lane.processing / f"{task_id}.json").exists()

    code, out = cancel_json(pair, task_id)
    assert code == 0
    assert out == {
        "id": task_id,
        "requested": True,
        "lane": "devbox-to-gpubox",
        "path": str(lane.cancel / f"{task_id}.json"),
        "finished": None,
    }
    # The request is signed by the sender, over every field.
    request = json.loads((lane.cancel / f"{task_id}.json").read_text())
    kid, private = sender_key(pair)
    assert request["kind"] == "cancel" and request["kid"] == kid
    assert request["schema"] == 4 and verifies(private, request)

    promote_once(pair.receiver.node())  # the killswitch still holds: cancel works anyway
    result = result_json(lane, task_id)
    assert result["status"] == "cancelled"
    assert result["reason"].startswith("cancelled by devbox")
    assert not (lane.processing / f"{task_id}.json").exists()
    assert os.listdir(lane.cancel) == []
    clear_killswitch(pair.receiver.node().spool)
    drain(pair.receiver.node())
    assert runs_of(pair, task_id) == []
    # The sender's wait sees the signed result: a cancelled task failed (exit 1).
    wait = cli(pair.sender, "wait", task_id, "--timeout", "5")
    assert wait.returncode == 1 and "cancelled" in wait.stderr


def test_cancel_a_task_waiting_for_its_ack(pair: Pair) -> None:
    task_id = send(pair, "needs an ack", require_ack=True)
    promote_once(pair.receiver.node())
    lane = lane_in(pair)
    assert (lane.pending_ack / f"{task_id}.json").exists()
    assert cli(pair.sender, "cancel", task_id).returncode == 0
    promote_once(pair.receiver.node())
    assert result_json(lane, task_id)["status"] == "cancelled"
    assert os.listdir(lane.pending_ack) == []
    # An ack now releases nothing: the task is over.
    ack = cli(pair.receiver, "ack", task_id)
    assert ack.returncode != 0
    drain(pair.receiver.node())
    assert runs_of(pair, task_id) == []


def test_cancel_a_running_task_under_dispatch_watch(pair: Pair) -> None:
    watcher = subprocess.Popen(
        [sys.executable, "-m", "dispatch", "watch", "--quiet"],
        env=env_for(pair.receiver),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        task_id = send(pair, "long job sleep=120", timeout_s=600)
        wait_for(lambda: bool(runs_of(pair, task_id)), timeout=30, what="the agent to start")
        agent_pid = int(str(runs_of(pair, task_id)[0]["pid"]))
        began = time.monotonic()
        code, out = cancel_json(pair, task_id, "--wait", "--timeout", "30")
        assert code == 0, out
        assert time.monotonic() - began < 20
        result = out["result"]
        assert result["status"] == "cancelled", result
        assert result["reason"].startswith("cancelled by devbox")
        assert result["started_at"] and result["elapsed_s"] > 0  # it had really started
        assert watcher.poll() is None
        # The agent's whole process group is gone.
        wait_for(lambda: not pgid_alive(agent_pid), timeout=10, what="the agent to end")
    finally:
        os.killpg(watcher.pid, signal.SIGTERM)
        watcher.communicate(timeout=10)
    assert len(runs_of(pair, task_id)) == 1
    assert json.loads(lane_in(pair).result_path(task_id).read_text())["status"] == "cancelled"


def test_cancel_a_finished_task_leaves_it_alone(pair: Pair) -> None:
    task_id = send(pair, "quick job")
    drain(pair.receiver.node())
    lane = lane_in(pair)
    before = lane.result_path(task_id).read_bytes()
    proc = cli(pair.sender, "cancel", task_id)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"task {task_id} already finished (ok); left alone"
    code, out = cancel_json(pair, task_id)
    assert code == 0
    assert out == {
        "id": task_id,
        "requested": False,
        "lane": "devbox-to-gpubox",
        "path": None,
        "finished": "ok",
    }
    assert os.listdir(lane.cancel) == []
    promote_once(pair.receiver.node())
    assert lane.result_path(task_id).read_bytes() == before


def test_cancel_of_a_task_this_node_never_sent(pair: Pair) -> None:
    proc = cli(pair.sender, "cancel", new_id())
    assert proc.returncode == 2 and "no record of sending task" in proc.stderr
    proc = cli(pair.sender, "cancel", "../../etc/passwd")
    assert proc.returncode == 2 and "not a task id" in proc.stderr


def _plant_cancel(pair: Pair, task_id: str, obj: dict[str, Any]) -> Path:
    lane = lane_in(pair)
    path = lane.cancel / f"{task_id}.json"
    path.write_bytes(canonical(obj) + b"\n")
    return path


def test_forged_or_unsigned_cancel_is_refused_with_a_reason(pair: Pair) -> None:
    set_killswitch(pair.receiver.node().spool, hard=False, reason="holding")
    forged_id, unsigned_id = send(pair, "keep me"), send(pair, "keep me too")
    by_rx_id = send(pair, "and me")
    promote_once(pair.receiver.node())
    kid, _ = sender_key(pair)
    body = {
        "schema": 4,
        "kind": "cancel",
        "id": forged_id,
        "from": "devbox",
        "to": "gpubox",
        "created": rfc3339(now_utc()),
        "kid": kid,
    }
    forged = signed(Ed25519PrivateKey.generate(), body)  # devbox's key id, another key
    _plant_cancel(pair, forged_id, forged)
    _plant_cancel(pair, unsigned_id, {**body, "id": unsigned_id})  # no signature at all
    # The receiver's own key cannot speak for the sender either.
    rx_kid, rx_private = node_key(pair.receiver)
    as_devbox = signed(rx_private, {**body, "id": by_rx_id, "kid": rx_kid})
    _plant_cancel(pair, by_rx_id, as_devbox)
    promote_once(pair.receiver.node())

    lane = lane_in(pair)
    assert reason_of(lane, f"{forged_id}.cancel.json")["reason"] == "bad_signature"
    assert reason_of(lane, f"{unsigned_id}.cancel.json")["reason"] == "malformed"
    assert reason_of(lane, f"{by_rx_id}.cancel.json")["reason"] == "unknown_key"
    assert os.listdir(lane.cancel) == []
    for task_id in (forged_id, unsigned_id, by_rx_id):
        assert (lane.processing / f"{task_id}.json").exists()  # still queued
        assert not lane.result_path(task_id).exists()
        # The refused request is not the task: the sender's wait still waits (exit 4),
        # it does not report the task as rejected.
        wait = cli(pair.sender, "wait", task_id, "--timeout", "0.5")
        assert wait.returncode == 4, wait.stderr
    clear_killswitch(pair.receiver.node().spool)
    drain(pair.receiver.node())
    for task_id in (forged_id, unsigned_id, by_rx_id):
        assert result_json(lane, task_id)["status"] == "ok"


def test_a_cancel_request_for_another_lane_is_refused(pair: Pair) -> None:
    set_killswitch(pair.receiver.node().spool, hard=False, reason="holding")
    task_id = send(pair, "keep me")
    promote_once(pair.receiver.node())
    kid, private = sender_key(pair)
    # Validly signed, but it claims another lane than the one it sits in.
    _plant_cancel(
        pair,
        task_id,
        signed(
            private,
            {
                "schema": 4,
                "kind": "cancel",
                "id": task_id,
                "from": "gpubox",
                "to": "devbox",
                "created": rfc3339(now_utc()),
                "kid": kid,
            },
        ),
    )
    promote_once(pair.receiver.node())
    lane = lane_in(pair)
    assert reason_of(lane, f"{task_id}.cancel.json")["reason"] == "wrong_lane"
    assert (lane.processing / f"{task_id}.json").exists()


def test_ack_ttl_expiry_cancels_the_task(pair: Pair) -> None:
    configure(pair.receiver, DISPATCH_ACK_TTL=1)
    task_id = send(pair, "nobody will ack this", require_ack=True)
    promote_once(pair.receiver.node())
    lane = lane_in(pair)
    assert (lane.pending_ack / f"{task_id}.json").exists()
    time.sleep(1.3)
    report = promote_once(pair.receiver.node())
    assert report.pending_ack == 0
    result = result_json(lane, task_id)
    assert result["status"] == "cancelled"
    assert result["reason"] == "no ack within DISPATCH_ACK_TTL=1s"
    assert os.listdir(lane.pending_ack) == []
    assert runs_of(pair, task_id) == []
    wait = cli(pair.sender, "wait", task_id, "--json", "--timeout", "5")
    assert wait.returncode == 1 and json.loads(wait.stdout)["status"] == "cancelled"


def test_an_ack_within_the_ttl_still_releases(pair: Pair) -> None:
    configure(pair.receiver, DISPATCH_ACK_TTL=3600)
    task_id = send(pair, "ack me", require_ack=True)
    promote_once(pair.receiver.node())
    assert cli(pair.receiver, "ack", task_id).returncode == 0
    drain(pair.receiver.node())
    assert result_json(lane_in(pair), task_id)["status"] == "ok"


def test_a_stale_cancel_request_is_refused(pair: Pair) -> None:
    set_killswitch(pair.receiver.node().spool, hard=False, reason="holding")
    task_id = send(pair, "keep me")
    promote_once(pair.receiver.node())
    kid, private = sender_key(pair)
    _plant_cancel(
        pair,
        task_id,
        signed(
            private,
            {
                "schema": 4,
                "kind": "cancel",
                "id": task_id,
                "from": "devbox",
                "to": "gpubox",
                "created": "2020-01-01T00:00:00Z",
                "kid": kid,
            },
        ),
    )
    promote_once(pair.receiver.node())
    lane = lane_in(pair)
    assert reason_of(lane, f"{task_id}.cancel.json")["reason"] == "stale"
    assert (lane.processing / f"{task_id}.json").exists()
