"""`dispatch audit` on synthetic roots: clean after real traffic, and each kind of violation
made by hand is reported, once, with exit 1 and one line per violation."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from dispatch.core.spool import Lane
from dispatch.core.wire import new_id
from dispatch.ops.audit import AuditReport, audit
from tests.conftest import Pair
from tests.unit.helpers import cli, drain, drop, envelope, lane_in


def run_audit(pair: Pair, *, settled: bool = True, verify: bool = True) -> AuditReport:
    node = pair.receiver.node()
    pair.agent_log.touch()
    ring = node.keys if verify else None
    return audit(
        pair.root,
        state_dirs=[node.cfg.state_dir],
        agent_logs=[pair.agent_log],
        ring=ring,
        settled=settled,
    )


def kinds(report: AuditReport) -> list[str]:
    return sorted(v.kind for v in report.violations)


def finished_tasks(pair: Pair, count: int = 2) -> list[str]:
    lane = lane_in(pair)
    ids = []
    for i in range(count):
        obj = envelope(pair, request=f"task {i}")
        drop(lane, obj)
        ids.append(obj["id"])
    drain(pair.receiver.node())
    return ids


def result_path(pair: Pair, task_id: str) -> Path:
    return lane_in(pair).result_path(task_id)


def ledger_write(pair: Pair, task_id: str, phase: str, lane: str = "devbox-to-gpubox") -> None:
    seen = pair.receiver.node().cfg.state_dir / "seen" / task_id
    seen.write_text(
        json.dumps({"id": task_id, "sha256": "", "phase": phase, "lane": lane, "at": 0})
    )


def test_clean_after_real_traffic_and_refusals(pair: Pair) -> None:
    ids = finished_tasks(pair, 3)
    lane = lane_in(pair)
    # refused entries of every sort are fine: a bad signature, junk, a replay
    bad = envelope(pair)
    bad["request"] = "tampered"
    drop(lane, bad)
    drop(lane, b"junk", name="junk.json")
    drop(lane, envelope(pair, id=ids[0], request="task 0"))
    drain(pair.receiver.node())
    report = run_audit(pair)
    assert report.ok, [v.line() for v in report.violations]
    assert report.executions == 3
    # The tampered one earned no signed result: nothing that did not authenticate does.
    assert report.statuses == {"ok": 3}
    assert report.rejected == 3


def test_cli_exit_codes_and_lines(pair: Pair) -> None:
    ids = finished_tasks(pair, 1)
    node = pair.receiver.node()
    args = [
        "audit",
        "--root",
        str(pair.root),
        "--state-dir",
        str(node.cfg.state_dir),
        "--agent-log",
        str(pair.agent_log),
        "--settled",
    ]
    proc = cli(pair.receiver, *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("audit: ok: 1 lanes") or "audit: ok:" in proc.stdout
    with pair.agent_log.open("a") as handle:
        handle.write(json.dumps({"task_id": ids[0], "pid": 1}) + "\n")
    result_path(pair, ids[0]).unlink()
    proc = cli(pair.receiver, *args)
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    assert sorted(line.split()[0] for line in lines) == ["executed_twice", "no_result"]
    assert all(ids[0] in line for line in lines)
    assert "2 violations" in proc.stderr
    data = json.loads(cli(pair.receiver, *args, "--json").stdout)
    assert data["ok"] is False and len(data["violations"]) == 2
    # Defaults come from the node's config: its root, state and keys.
    assert cli(pair.receiver, "audit").returncode == 1
    # Without any key, results cannot be verified: the summary says so.
    proc = cli(
        None,
        "audit",
        "--root",
        str(pair.root),
        env={
            "PATH": os.environ["PATH"],
            "DISPATCH_CONFIG": "/dev/null",
            "DISPATCH_KEY_DIR": str(pair.root / "no-keys"),
            "DISPATCH_STATE_DIR": str(pair.root / "no-state"),
        },
    )
    assert proc.returncode == 0, proc.stderr
    assert "not checked" in proc.stdout


def test_several_places(pair: Pair) -> None:
    lane = lane_in(pair)
    obj = envelope(pair)
    drop(lane, obj)
    shutil.copy(lane.inbox / f"{obj['id']}.json", lane.pending_ack / f"{obj['id']}.json")
    report = run_audit(pair, settled=False)
    assert kinds(report) == ["several_places"]
    assert "inbox" in report.violations[0].detail and "pending-ack" in report.violations[0].detail


def test_result_and_still_in_processing_only_counts_when_settled(pair: Pair) -> None:
    (task_id,) = finished_tasks(pair, 1)
    lane = lane_in(pair)
    (lane.processing / f"{task_id}.json").write_text("{}")
    assert run_audit(pair, settled=False).ok  # an execution between publish and cleanup
    assert kinds(run_audit(pair)) == ["several_places", "unfinished"]


def test_several_results(pair: Pair) -> None:
    (task_id,) = finished_tasks(pair, 1)
    other = Lane(pair.root, "gpubox", "devbox")
    shutil.copy(result_path(pair, task_id), other.result_path(task_id))
    # The copy is also refused where it lies: a result's signature binds it to its lane.
    assert kinds(run_audit(pair)) == ["several_results", "unverified_result"]
    assert kinds(run_audit(pair, verify=False)) == ["several_results"]


def test_terminal_conflict(pair: Pair) -> None:
    (task_id,) = finished_tasks(pair, 1)
    lane = lane_in(pair)
    (lane.rejected / f"{task_id}.json").write_text("{}")
    (lane.rejected / f"{task_id}.json.reason.json").write_text(
        json.dumps({"name": f"{task_id}.json", "from_dir": "inbox", "reason": "bad_signature"})
    )
    assert kinds(run_audit(pair)) == ["terminal_conflict"]
    # a refused replay of the same id is a trace of the copy, not a second outcome
    (lane.rejected / f"{task_id}.json.reason.json").write_text(
        json.dumps({"name": f"{task_id}.json", "from_dir": "inbox", "reason": "replay"})
    )
    assert run_audit(pair).ok
    ledger_write(pair, task_id, "rejected")
    assert kinds(run_audit(pair)) == ["ran_unadmitted", "terminal_conflict"]


def test_executed_twice(pair: Pair) -> None:
    (task_id,) = finished_tasks(pair, 1)
    with pair.agent_log.open("a") as handle:
        handle.write(json.dumps({"task_id": task_id}) + "\n")
    report = run_audit(pair)
    assert kinds(report) == ["executed_twice"]
    assert "2 times" in report.violations[0].line()


def test_ran_unadmitted(pair: Pair) -> None:
    lane = lane_in(pair)
    refused = envelope(pair)
    refused["timeout_s"] = 5
    drop(lane, refused)
    drain(pair.receiver.node())
    stranger = new_id()
    with pair.agent_log.open("a") as handle:
        for task_id in (refused["id"], stranger):
            handle.write(json.dumps({"task_id": task_id}) + "\n")
    report = run_audit(pair)
    assert kinds(report) == ["ran_unadmitted", "ran_unadmitted"]
    assert {v.task_id for v in report.violations} == {refused["id"], stranger}
    # Without node state, the signed result and the lanes still tell.
    report = audit(pair.root, agent_logs=[pair.agent_log], ring=pair.receiver.node().keys)
    assert {v.task_id for v in report.violations} == {refused["id"], stranger}
    assert kinds(report) == ["ran_unadmitted", "ran_unadmitted"]


def test_no_result_and_lost(pair: Pair) -> None:
    (a,) = finished_tasks(pair, 1)
    result_path(pair, a).unlink()
    admitted, seen = new_id(), new_id()
    ledger_write(pair, admitted, "accepted")
    ledger_write(pair, seen, "intake")
    report = run_audit(pair)
    assert sorted((v.kind, v.task_id) for v in report.violations) == sorted(
        [("no_result", a), ("no_result", admitted), ("lost", seen)]
    )


def test_unpublished_and_unfinished(pair: Pair) -> None:
    (task_id,) = finished_tasks(pair, 1)
    lane = lane_in(pair)
    node = pair.receiver.node()
    signed_result = json.loads(result_path(pair, task_id).read_text())
    result_path(pair, task_id).unlink()
    node.state.defer_result(task_id, lane.name, signed_result, b"")
    assert run_audit(pair, settled=False).ok  # deferred: found, published on the next pass
    assert kinds(run_audit(pair)) == ["unpublished"]
    drop(lane, envelope(pair))
    drop(lane, b"x", name="junk.json")
    assert kinds(run_audit(pair)) == ["unfinished", "unfinished", "unpublished"]
    # waiting for an ack is a state at rest
    drain(node)
    obj = envelope(pair, require_ack=True)
    drop(lane, obj)
    drain(node)
    report = run_audit(pair)
    assert report.ok and report.pending_ack == 1, [v.line() for v in report.violations]


def test_missing_reason(pair: Pair) -> None:
    lane = lane_in(pair)
    (lane.rejected / "orphan.json").write_text("{}")
    (lane.rejected / "bad.json.reason.json").write_text("not json")
    (lane.rejected / "bad.json").write_text("{}")
    assert kinds(run_audit(pair)) == ["missing_reason", "missing_reason"]


def test_unverified_result(pair: Pair) -> None:
    a, b = finished_tasks(pair, 2)
    path = result_path(pair, a)
    data: dict[str, Any] = json.loads(path.read_text())
    data["status"] = "error"
    path.write_text(json.dumps(data))
    shutil.copy(result_path(pair, b), result_path(pair, new_id()))  # another task's result
    report = run_audit(pair)
    assert kinds(report) == ["unverified_result", "unverified_result"]
    # without keys it cannot tell
    assert run_audit(pair, verify=False).ok


def test_torn_ledger_and_unreadable_agent_log(pair: Pair) -> None:
    (task_id,) = finished_tasks(pair, 1)
    (pair.receiver.node().cfg.state_dir / "seen" / task_id).write_bytes(b"")
    with pair.agent_log.open("a") as handle:
        handle.write('{"task_id": \n')
    assert kinds(run_audit(pair)) == ["agent_log_unreadable", "torn_ledger"]


@pytest.mark.parametrize("missing", ["agent log", "root"])
def test_missing_inputs(pair: Pair, missing: str) -> None:
    if missing == "root":
        proc = cli(pair.receiver, "audit", "--root", str(pair.root / "nope"))
        assert proc.returncode == 2 and "no shared root" in proc.stderr
    else:
        proc = cli(pair.receiver, "audit", "--agent-log", str(pair.root / "nope.jsonl"))
        assert proc.returncode == 1 and proc.stdout.startswith("agent_log_unreadable")


def test_a_stage_the_ledger_did_not_put_a_file_in(pair: Pair) -> None:
    """Issue 12: at rest every task file sits where its ledger says."""
    lane = lane_in(pair)
    held = envelope(pair, require_ack=True)
    drop(lane, held)
    drain(pair.receiver.node())
    assert run_audit(pair).ok
    name = f"{held['id']}.json"
    os.rename(lane.pending_ack / name, lane.processing / name)  # by hand, no pass since
    assert "stage_mismatch" in kinds(run_audit(pair))
    assert "stage_mismatch" not in kinds(run_audit(pair, settled=False))
