"""Promote passes: the ack gate, priority order, the parallel cap, recovery of executions
that died, the killswitch, and files that did not come through intake."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import datetime

from dispatch.core.model import Priority
from dispatch.core.spool import set_killswitch
from dispatch.core.wire import new_id, parse_time
from dispatch.receive.launch.process import ProcessLauncher
from dispatch.receive.promote import promote
from dispatch.receive.promote.acks import ack_body
from dispatch.send import task as sender
from tests.conftest import Pair
from tests.unit.helpers import (
    assert_rejected,
    cli,
    configure,
    drain,
    drop,
    env_for,
    envelope,
    lane_in,
    node_key,
    promote_once,
    reason_of,
    result_json,
    runs_of,
    signed,
    wait_for,
)

# -- the ack gate ----------------------------------------------------------------------------


def test_require_ack_waits_and_forged_acks_are_refused(pair: Pair) -> None:
    lane = lane_in(pair)
    obj = envelope(pair, require_ack=True)
    task_id = obj["id"]
    drop(lane, obj)
    report = promote_once(pair.receiver.node())
    assert report.pending_ack == 1 and report.started == []
    assert (lane.pending_ack / f"{task_id}.json").exists()

    # Whatever a share writer drops as <id>.ack releases nothing.
    forged_contents = [
        b"ack\n",  # what the original's dispatch-ack writes
        json.dumps({"id": task_id, "node": "gpubox", "acked_at": "now", "mac": "0" * 64}).encode(),
        b"",
    ]
    for content in forged_contents:
        (lane.pending_ack / f"{task_id}.ack").write_bytes(content)
        promote_once(pair.receiver.node())
        assert not (lane.pending_ack / f"{task_id}.ack").exists()
        assert (lane.pending_ack / f"{task_id}.json").exists()
    rejected = [n for n in os.listdir(lane.rejected) if n.endswith(".reason.json")]
    assert len(rejected) == len(forged_contents)
    for name in rejected:
        assert json.loads((lane.rejected / name).read_text())["reason"] == "forged_ack"
    # A well-formed ack signed with another host's key (the sender's) is forged, and so is
    # the receiver's own genuine ack for another envelope digest; so is a symlink.
    entry = pair.receiver.node().state.entry(task_id)
    assert entry is not None
    kid, devbox = node_key(pair.sender)
    body = {**ack_body(lane, task_id, entry.sha256), "kid": kid}
    fake = signed(devbox, body)
    rx_kid, gpubox = node_key(pair.receiver)
    other_digest = signed(gpubox, {**body, "kid": rx_kid, "sha256": "0" * 64})
    for planted in (fake, other_digest):
        (lane.pending_ack / f"{task_id}.ack").write_text(json.dumps(planted))
        promote_once(pair.receiver.node())
        assert not (lane.pending_ack / f"{task_id}.ack").exists()
        assert (lane.pending_ack / f"{task_id}.json").exists()
    os.symlink("/dev/null", lane.pending_ack / f"{task_id}.ack")
    promote_once(pair.receiver.node())
    assert not os.path.lexists(lane.pending_ack / f"{task_id}.ack")
    assert (lane.pending_ack / f"{task_id}.json").exists()
    assert pair.agent_runs() == []

    # The sender cannot ack: the task is not in any of its incoming lanes.
    proc = cli(pair.sender, "ack", task_id[:8])
    assert proc.returncode == 2 and "no pending task" in proc.stderr
    # The receiver can, by a prefix.
    proc = cli(pair.receiver, "ack", task_id[:8])
    assert proc.returncode == 0, proc.stderr
    assert task_id in proc.stdout
    drain(pair.receiver.node())
    assert result_json(lane, task_id)["status"] == "ok"
    assert len(runs_of(pair, task_id)) == 1
    # Nothing left pending; a second pass runs nothing again.
    assert os.listdir(lane.pending_ack) == []
    drain(pair.receiver.node())
    assert len(pair.agent_runs()) == 1


def test_ack_cannot_be_copied_to_another_task(pair: Pair) -> None:
    lane = lane_in(pair)
    first, second = envelope(pair, require_ack=True), envelope(pair, require_ack=True)
    drop(lane, first)
    drop(lane, second)
    promote_once(pair.receiver.node())
    assert cli(pair.receiver, "ack", first["id"]).returncode == 0
    ack = (lane.pending_ack / f"{first['id']}.ack").read_bytes()
    (lane.pending_ack / f"{second['id']}.ack").write_bytes(ack)
    promote_once(pair.receiver.node())
    assert result_json(lane, first["id"])["status"] == "ok"
    assert (lane.pending_ack / f"{second['id']}.json").exists()
    assert [r["task_id"] for r in pair.agent_runs()] == [first["id"]]


def test_ack_prefix_errors(pair: Pair) -> None:
    lane = lane_in(pair)
    ids = []
    for _ in range(2):
        task_id = "abcdef12" + new_id()[8:]  # still a canonical uuid4
        ids.append(task_id)
        drop(lane, envelope(pair, id=task_id, require_ack=True))
    promote_once(pair.receiver.node())
    proc = cli(pair.receiver, "ack", "abcdef")
    assert proc.returncode == 2
    assert "matches 2 tasks" in proc.stderr and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr
    assert cli(pair.receiver, "ack", "0000").returncode == 2
    assert cli(pair.receiver, "ack", "../x").returncode == 2
    proc = cli(pair.receiver, "ack", ids[1], "--json")
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["id"] == ids[1]
    assert not (lane.pending_ack / f"{ids[0]}.ack").exists()


def test_orphan_ack_is_quarantined(pair: Pair) -> None:
    lane = lane_in(pair)
    name = f"{new_id()}.ack"
    (lane.pending_ack / name).write_text("ack\n")
    promote_once(pair.receiver.node())
    assert reason_of(lane, name)["reason"] == "orphan_ack"


# -- files that skipped intake ----------------------------------------------------------------


def test_files_placed_directly_in_processing_or_pending_ack_never_run(pair: Pair) -> None:
    lane = lane_in(pair)
    direct = envelope(pair)  # validly signed, but it never went through this node's intake
    (lane.processing / f"{direct['id']}.json").write_text(json.dumps(direct))
    parked = envelope(pair)
    (lane.pending_ack / f"{parked['id']}.json").write_text(json.dumps(parked))
    (lane.pending_ack / f"{parked['id']}.ack").write_text("ack\n")
    promote_once(pair.receiver.node())
    assert reason_of(lane, f"{direct['id']}.json")["reason"] == "not_admitted"
    assert reason_of(lane, f"{parked['id']}.json")["reason"] == "not_admitted"
    assert pair.agent_runs() == []
    assert os.listdir(lane.processing) == []


# -- priority and the cap ---------------------------------------------------------------------


def test_priority_order_high_normal_low_oldest_first(pair: Pair) -> None:
    configure(pair.receiver, DISPATCH_MAX_PARALLEL=1)
    tx = pair.sender.node()
    set_killswitch(tx.spool, hard=False, reason="filling the queue")
    sent: dict[str, str] = {}
    for label, priority in (
        ("low1", "low"),
        ("normal1", "normal"),
        ("high1", "high"),
        ("low2", "low"),
        ("high2", "high"),
        ("normal2", "normal"),
    ):
        env = sender.build(tx, to="gpubox", request=f"task {label}", priority=Priority(priority))
        sender.deliver(tx, env)
        sent[env.id] = label
        time.sleep(0.002)
    rx = pair.receiver.node()
    report = promote_once(rx)
    assert report.admitted == 6 and report.started == [] and len(report.queued) == 6
    assert pair.agent_runs() == []
    os.unlink(pair.root / "KILLSWITCH")
    drain(rx)
    order = [sent[str(r["task_id"])] for r in pair.agent_runs()]
    assert order == ["high1", "high2", "normal1", "normal2", "low1", "low2"]


def test_never_more_than_max_parallel(pair: Pair) -> None:
    configure(pair.receiver, DISPATCH_MAX_PARALLEL=2)
    lane = lane_in(pair)
    ids = []
    for i in range(6):
        obj = envelope(pair, request=f"job {i} sleep=1")
        drop(lane, obj)
        ids.append(obj["id"])
    drain(pair.receiver.node())
    spans: list[tuple[datetime, datetime]] = []
    for task_id in ids:
        res = result_json(lane, task_id)
        assert res["status"] == "ok", res
        spans.append((parse_time(res["started_at"]), parse_time(res["answered_at"])))
    assert len(pair.agent_runs()) == 6
    # The most executions alive at any one moment, from the results' own intervals.
    points = sorted(
        [(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda p: (p[0], p[1])
    )
    alive = peak = 0
    for _, delta in points:
        alive += delta
        peak = max(peak, alive)
    assert peak <= 2
    assert peak == 2  # the cap is used, not just respected


# -- recovery ---------------------------------------------------------------------------------


def test_started_task_without_execution_ends_interrupted(pair: Pair) -> None:
    lane = lane_in(pair)
    (pair.root / "KILLSWITCH").write_text("hold\n")
    obj = envelope(pair, request="must not run twice")
    drop(lane, obj)
    rx = pair.receiver.node()
    promote_once(rx)
    assert (lane.processing / f"{obj['id']}.json").exists()
    # A crash after the started marker: the marker is there, no execution is alive.
    assert rx.state.mark_started(
        obj["id"], {"started_at": "2025-01-01T00:00:00Z", "pid": 999999999, "unit": ""}
    )
    os.unlink(pair.root / "KILLSWITCH")
    report = promote_once(pair.receiver.node())
    assert report.recovered == 1 and report.started == []
    res = result_json(lane, obj["id"])
    assert res["status"] == "interrupted" and res["request"] == "must not run twice"
    assert res["started_at"] == "2025-01-01T00:00:00Z"
    assert not (lane.processing / f"{obj['id']}.json").exists()
    drain(pair.receiver.node())
    assert pair.agent_runs() == []


def test_leftover_task_file_with_a_result_is_cleaned_not_rerun(pair: Pair) -> None:
    lane = lane_in(pair)
    obj = envelope(pair)
    drop(lane, obj)
    data = json.dumps(obj)
    drain(pair.receiver.node())
    result = lane.result_path(obj["id"]).read_bytes()
    # The executor died after publishing the result, before removing its task file.
    (lane.processing / f"{obj['id']}.json").write_text(data)
    promote_once(pair.receiver.node())
    assert not (lane.processing / f"{obj['id']}.json").exists()
    assert lane.result_path(obj["id"]).read_bytes() == result
    assert len(pair.agent_runs()) == 1


# -- the killswitch ---------------------------------------------------------------------------


def test_soft_killswitch_holds_queued_tasks(pair: Pair) -> None:
    lane = lane_in(pair)
    assert cli(pair.receiver, "killswitch", "on", "--reason", "upgrade").returncode == 0
    obj = envelope(pair)
    drop(lane, obj)
    for _ in range(2):
        report = promote_once(pair.receiver.node())
        assert report.started == [] and report.queued == [obj["id"]]
    assert pair.agent_runs() == []
    assert cli(pair.receiver, "killswitch", "off").returncode == 0
    drain(pair.receiver.node())
    assert result_json(lane, obj["id"])["status"] == "ok"


def test_hard_killswitch_stops_running_executions(pair: Pair) -> None:
    lane = lane_in(pair)
    obj = envelope(pair, request="long hang=30")
    drop(lane, obj)
    rx = pair.receiver.node()
    launcher = ProcessLauncher(rx)
    report = promote(rx, launcher)
    assert report.started == [obj["id"]]
    wait_for(lambda: bool(pair.agent_runs()), what="the agent to start")
    set_killswitch(rx.spool, hard=True, reason="runaway")
    began = time.monotonic()
    report = promote(pair.receiver.node(), ProcessLauncher(pair.receiver.node()))
    assert report.running == {obj["id"]}
    launcher.wait_all(30)
    assert time.monotonic() - began < 20
    res = result_json(lane, obj["id"])
    assert res["status"] == "killed"
    assert "hard KILLSWITCH" in res["reason"] and "runaway" in res["reason"]
    assert not (lane.processing / f"{obj['id']}.json").exists()
    # Nothing new starts while it is on.
    later = envelope(pair)
    drop(lane, later)
    assert promote_once(pair.receiver.node()).started == []
    assert (lane.processing / f"{later['id']}.json").exists()
    assert runs_of(pair, later["id"]) == []


def test_a_rejected_entry_is_reported_in_the_pass_summary(pair: Pair) -> None:
    lane = lane_in(pair)
    drop(lane, b"not json", f"{new_id()}.json")
    proc = cli(pair.receiver, "promote", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["rejected"] == 1 and summary["admitted"] == 0
    assert set(summary) == {
        "admitted",
        "rejected",
        "released",
        "recovered",
        "pending_ack",
        "queued",
        "running",
        "started",
        "errors",
    }
    name = next(n for n in os.listdir(lane.rejected) if not n.endswith(".reason.json"))
    assert_rejected(lane, name, "malformed")


def test_promote_leaves_a_manually_started_execution_alone(pair: Pair) -> None:
    """`dispatch exec ID` run by hand (not by this launcher) is alive: a pass must neither
    answer it `interrupted` nor start it a second time."""
    lane = lane_in(pair)
    (pair.root / "KILLSWITCH").write_text("hold\n")
    obj = envelope(pair, request="by hand sleep=2")
    drop(lane, obj)
    promote_once(pair.receiver.node())
    os.unlink(pair.root / "KILLSWITCH")
    manual = subprocess.Popen(
        [sys.executable, "-m", "dispatch", "exec", obj["id"]],
        env=env_for(pair.receiver),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: bool(runs_of(pair, obj["id"])), what="the agent to start")
        report = promote_once(pair.receiver.node())
        assert report.recovered == 0 and report.started == []
        manual.communicate(timeout=30)
    finally:
        manual.kill()
    assert result_json(lane, obj["id"])["status"] == "ok"
    assert len(pair.agent_runs()) == 1


def test_special_files_planted_on_the_share_do_not_wedge_a_pass(pair: Pair) -> None:
    """A FIFO named KILLSWITCH, or at this node's audit log, must not block a pass (a plain
    open() of a FIFO waits for the other end); a symlinked audit log is not followed."""
    lane = lane_in(pair)
    os.mkfifo(pair.root / "KILLSWITCH")
    victim = pair.root.parent / "victim.txt"
    victim.write_text("precious\n")
    os.symlink(victim, pair.root / "logs" / "gpubox.jsonl")
    obj = envelope(pair)
    drop(lane, obj)
    proc = cli(pair.receiver, "promote", "--json", timeout=30)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    # A KILLSWITCH that exists is on, whatever it is: nothing starts.
    assert summary["admitted"] == 1 and summary["started"] == []
    assert victim.read_text() == "precious\n"
    status = cli(pair.receiver, "killswitch", "status", "--json", timeout=30)
    assert json.loads(status.stdout)["on"] is True
    os.unlink(pair.root / "KILLSWITCH")
    os.unlink(pair.root / "logs" / "gpubox.jsonl")
    os.mkfifo(pair.root / "logs" / "gpubox.jsonl")
    proc = cli(pair.receiver, "watch", "--once", "--quiet", timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert result_json(lane, obj["id"])["status"] == "ok"


def test_refill_starts_the_index_head_up_to_the_cap_and_no_more(pair: Pair) -> None:
    """The promoter's quick refill (used while it lingers over a backlog) starts tasks in
    priority order from the queue index, never past the cap, never a cancelled one."""
    from dispatch.receive.launch.process import ProcessLauncher
    from dispatch.receive.promote import refill

    configure(pair.receiver, DISPATCH_MAX_PARALLEL=2)
    node = pair.receiver.node()
    lane = lane_in(pair)
    set_killswitch(node.spool, hard=False, reason="hold")
    low = envelope(pair, priority="low", request="low one")
    high = envelope(pair, priority="high", request="high one")
    normal = envelope(pair, priority="normal", request="normal one")
    cancelled = envelope(pair, priority="high", request="cancelled one")
    for obj in (low, high, normal, cancelled):
        drop(lane, obj)
    promote_once(node)  # admitted and indexed, held by the killswitch
    node.state.request_cancel(cancelled["id"], "cancelled by test")
    (node.spool.killswitch_path).unlink()
    launcher = ProcessLauncher(node)
    report = refill(node, launcher)
    launcher.wait_all(60)
    assert report.started == [high["id"], normal["id"]]
    assert low["id"] in report.queued and cancelled["id"] not in report.started
    report = refill(node, ProcessLauncher(node))
    assert report.started == [low["id"]]
    # the cancelled one is left to a full pass, which answers it `cancelled`
    promote_once(node)
    assert result_json(lane, cancelled["id"])["status"] == "cancelled"
    assert runs_of(pair, cancelled["id"]) == []
