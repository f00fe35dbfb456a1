"""Two hosts, each with its own systemd and network namespace, sharing a root that a file
server exports over sshfs. Everything is driven from inside the hosts: systemctl,
journalctl and the dispatch CLI."""

from __future__ import annotations

import json
import time

from tests.e2e.cluster import SHARE
from tests.e2e.conftest import ClusterFactory


def test_round_trips_both_ways_at_once(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster("a", "b")
    a, b = cluster["a"], cluster["b"]
    to_b = a.send("b", "from a sleep=4")
    to_a = b.send("a", "from b sleep=4")
    res_b, res_a = cluster.parallel(lambda: a.wait(to_b), lambda: b.wait(to_a))
    # `dispatch wait --json` on each sender verified the signature of the other's result.
    assert res_b["status"] == "ok", json.dumps(res_b)
    assert res_a["status"] == "ok", json.dumps(res_a)
    assert (res_b["answered_by"], res_a["answered_by"]) == ("b", "a")
    assert res_b["final_text"].startswith("fake agent (acceptEdits) did: from a")
    assert res_a["final_text"].startswith("fake agent (acceptEdits) did: from b")
    # Both ran at once, each on its receiving host only, each once.
    runs_a, runs_b = a.agent_runs(), b.agent_runs()
    assert [r["task_id"] for r in runs_b] == [to_b]
    assert [r["task_id"] for r in runs_a] == [to_a]
    assert abs(runs_a[0]["at"] - runs_b[0]["at"]) < 4.0, (runs_a, runs_b)  # they overlapped
    # Each receiver's journal tells its task's story; the sender's tells only the sending.
    story = b.journal(f"DISPATCH_TASK_ID={to_b}", "-o", "json")
    events = {json.loads(line).get("DISPATCH_EVENT") for line in story.splitlines()}
    assert {"task_queued", "exec_launched", "exec_start", "exec_end"} <= events, events
    assert f"dispatch-exec@{to_b}.service" in b.journal("-u", f"dispatch-exec@{to_b}.service")
    sender_story = a.journal(f"DISPATCH_TASK_ID={to_b}", "-o", "json")
    sender_events = {json.loads(line).get("DISPATCH_EVENT") for line in sender_story.splitlines()}
    assert "task_sent" in sender_events and "exec_start" not in sender_events
    assert cluster.leftovers() == {}
    for node in (a, b):
        assert node.failed_units() == [], (node.name, node.failed_units())


def test_remote_writes_reach_the_receiver_by_timer_alone(make_cluster: ClusterFactory) -> None:
    # The polling fallback: b's sensor (which would see a's write) off by configuration.
    cluster = make_cluster("a", "b", settings={"b": {"DISPATCH_WATCH_MODE": "timer"}})
    a, b = cluster["a"], cluster["b"]
    # b's timer off, its path unit on: inotify on b never hears of a's write through a's mount.
    b.systemctl("stop", "dispatch-watch.timer")
    b.wait_until(
        "b's watch service idle",
        lambda: b.host.unit_property("dispatch-watch.service", "ActiveState") == "inactive",
    )
    before = b.invocation("dispatch-watch.service")
    assert b.host.unit_property("dispatch-watch.path", "ActiveState") == "active"
    task_id = a.send("b", "delivered by the timer")
    time.sleep(4)  # four poll periods
    assert b.lane_files("a-to-b", "inbox") == [f"{task_id}.json"]
    assert b.invocation("dispatch-watch.service") == before, "the path unit saw a remote write"
    assert b.agent_runs() == []
    # Now the path unit off for good, the timer on: the task goes through.
    b.systemctl("stop", "dispatch-watch.path")
    b.systemctl("start", "dispatch-watch.timer")
    result = a.wait(task_id)
    assert result["status"] == "ok", json.dumps(result)
    assert b.ran(task_id) == 1
    assert b.host.unit_property("dispatch-watch.path", "ActiveState") == "inactive"
    assert b.invocation("dispatch-watch.service") != before
    assert b.failed_units() == []


def test_ack_is_given_on_the_receiving_host_only(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster("a", "b")
    a, b = cluster["a"], cluster["b"]
    task_id = a.send("b", "needs a human's ok", "--require-ack")
    lane = "a-to-b"
    b.wait_until("pending on b", lambda: f"{task_id}.json" in b.lane_files(lane, "pending-ack"))
    # The sender cannot ack: the task is not pending on a.
    refused = a.dispatch("ack", task_id, check=False)
    assert refused.returncode == 2 and "no pending task" in refused.stderr, refused
    # An ack file forged on a's side of the share releases nothing.
    forged = {"id": task_id, "node": "b", "acked_at": "2030-01-01T00:00:00Z", "mac": "0" * 64}
    a.write(f"{SHARE}/{lane}/pending-ack/{task_id}.ack", json.dumps(forged))
    b.wait_until(
        "forged ack refused", lambda: f"{task_id}.ack.reason.json" in b.lane_files(lane, "rejected")
    )
    reason = json.loads(b.run(["cat", f"{SHARE}/{lane}/rejected/{task_id}.ack.reason.json"]).stdout)
    assert reason["reason"] == "forged_ack", reason
    time.sleep(2)
    assert b.lane_files(lane, "pending-ack") == [f"{task_id}.json"]
    assert b.agent_runs() == []
    # `dispatch ack` on the receiving host releases it.
    acked = b.dispatch("ack", task_id)
    assert f"acked: {task_id}" in acked.stdout
    result = a.wait(task_id)
    assert result["status"] == "ok", json.dumps(result)
    assert b.ran(task_id) == 1
    story = b.journal(f"DISPATCH_TASK_ID={task_id}", "-o", "json")
    events = [json.loads(line).get("DISPATCH_EVENT") for line in story.splitlines()]
    assert events.index("task_pending_ack") < events.index("task_acked"), events
    assert events.index("task_acked") < events.index("exec_start"), events
    refusals = b.journal("DISPATCH_EVENT=task_rejected", "-o", "cat")
    assert f"{task_id}.ack: forged_ack" in refusals, refusals


def test_heartbeats_and_peer_status(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster("a", "b")
    a, b = cluster["a"], cluster["b"]
    a.wait_until(
        "both heartbeats on the share",
        lambda: sorted(a.run(["ls", f"{SHARE}/heartbeats"]).stdout.split()) == ["a.json", "b.json"],
    )
    beat_b = json.loads(a.run(["cat", f"{SHARE}/heartbeats/b.json"]).stdout)
    assert beat_b["node"] == "b" and beat_b["killswitch"] is False
    for node, peer in ((a, "b"), (b, "a")):
        peers = {p["node"]: p for p in node.status()["peers"]}
        age = peers[peer]["heartbeat_age_s"]
        assert age is not None and 0 <= age < 30, peers
        assert peers[peer]["stale"] is False
    assert a.host.unit_property("dispatch-heartbeat.timer", "ActiveState") == "active"
