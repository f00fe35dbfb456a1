"""`dispatch clean` and DISPATCH_RETAIN_DAYS: each lane is cleaned by its sender, which has
seen (verified and recorded) the result first; the receiver leaves results alone unless
forced; a result that does not verify is kept; history outlives it all."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from dispatch.core.wire import now_utc, rfc3339
from tests.conftest import Pair
from tests.unit.helpers import cli, configure, drain, lane_in, node_key, signed


def _send(pair: Pair, request: str) -> str:
    proc = cli(pair.sender, "send", "--to", "gpubox", "--request", request)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def _clean(pair: Pair, *args: str, receiver: bool = False) -> list[dict[str, Any]]:
    proc = cli(pair.receiver if receiver else pair.sender, "clean", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    rows: list[dict[str, Any]] = json.loads(proc.stdout)
    return rows


def test_clean_by_the_sender_after_it_saw_the_result(pair: Pair) -> None:
    ok, bad = _send(pair, "fine"), _send(pair, "boom exit=2")
    drain(pair.receiver.node())
    lane = lane_in(pair)
    files = [lane.result_path(ok), lane.log_path(ok), lane.result_path(bad), lane.log_path(bad)]
    # A dry run names what would go and removes nothing.
    dry = _clean(pair, "--older-than", "0", "--dry-run")
    assert {(r["id"], r["status"]) for r in dry} == {(ok, "ok"), (bad, "error")}
    assert all(path.exists() for path in files)
    # The receiver does not know whether devbox has seen the results: it keeps them.
    kept = _clean(pair, "--older-than", "0", receiver=True)
    assert {r["id"] for r in kept} == {ok, bad} and all(r["removed"] == [] for r in kept)
    assert all("its sender devbox cleans it" in r["kept"] for r in kept)
    assert all(path.exists() for path in files)
    # Too young for the default retention; then by status; then the rest.
    assert _clean(pair) == []
    [gone] = _clean(pair, "--older-than", "0", "--status", "error")
    assert gone["id"] == bad and gone["removed"] == [f"{bad}.result.json", f"{bad}.log"]
    assert not lane.result_path(bad).exists() and lane.result_path(ok).exists()
    text = cli(pair.sender, "clean", "--older-than", "0")
    assert text.returncode == 0 and f"removed      {ok[:8]}" in text.stdout
    assert "removed the files of 1 task" in text.stderr
    assert not any(path.exists() for path in files)
    # History stands: both ends still know how each task ended.
    listed = json.loads(cli(pair.sender, "list", "--json").stdout)
    assert {(r["id"], r["state"], r["request"]) for r in listed} == {
        (ok, "ok", "fine"),
        (bad, "error", "boom exit=2"),
    }
    theirs = json.loads(cli(pair.receiver, "list", "--json").stdout)
    assert {(r["id"], r["state"]) for r in theirs} == {(ok, "ok"), (bad, "error")}


def test_a_result_that_does_not_verify_is_kept_unless_forced(pair: Pair) -> None:
    task_id = _send(pair, "tampered")
    drain(pair.receiver.node())
    lane = lane_in(pair)
    path = lane.result_path(task_id)
    path.write_text(path.read_text().replace('"status": "ok"', '"status": "error"'))
    [row] = _clean(pair, "--older-than", "0")
    assert row["status"] == "unverified" and row["removed"] == [] and "signature" in row["kept"]
    assert path.exists()
    [row] = _clean(pair, "--older-than", "0", "--force")
    assert row["removed"] and not path.exists()


def _old_result(pair: Pair, days: float) -> str:
    """A result gpubox signed `days` ago, in devbox's outgoing lane."""
    kid, private = node_key(pair.receiver)
    task_id = _send(pair, f"from {days} days ago")
    lane = lane_in(pair)
    (lane.inbox / f"{task_id}.json").unlink()
    when = rfc3339(now_utc() - timedelta(days=days))
    body = {
        "schema": 4,
        "kind": "result",
        "from": "devbox",
        "to": "gpubox",
        "id": task_id,
        "answered_by": "gpubox",
        "answered_at": when,
        "request": "old",
        "status": "ok",
        "exit_code": 0,
        "elapsed_s": 1.0,
        "log_path": "",
        "final_text": "old",
        "output_tail": "",
        "output_bytes": 0,
        "perm_mode": "acceptEdits",
        "started_at": when,
        "truncated": False,
        "unit": "",
        "reason": "",
        "kid": kid,
    }
    lane.result_path(task_id).write_text(json.dumps(signed(private, body)))
    return task_id


def test_the_heartbeat_applies_the_retention(pair: Pair) -> None:
    old, fresh = _old_result(pair, 20), _old_result(pair, 3)
    lane = lane_in(pair)
    # The receiver's heartbeat: not its lane to clean.
    assert cli(pair.receiver, "heartbeat").returncode == 0
    assert lane.result_path(old).exists()
    assert cli(pair.sender, "heartbeat").returncode == 0
    assert not lane.result_path(old).exists() and lane.result_path(fresh).exists()
    configure(pair.sender, DISPATCH_RETAIN_DAYS=2)
    assert cli(pair.sender, "heartbeat").returncode == 0
    assert not lane.result_path(fresh).exists()
    listed = json.loads(cli(pair.sender, "list", "--json").stdout)
    assert {(r["id"], r["state"]) for r in listed} == {(old, "ok"), (fresh, "ok")}
    # 0 keeps everything, and `clean` then wants an explicit age.
    configure(pair.sender, DISPATCH_RETAIN_DAYS=0)
    proc = cli(pair.sender, "clean")
    assert proc.returncode == 2 and "give --older-than" in proc.stderr


def test_clean_never_follows_a_lane_directory_planted_as_a_link(pair: Pair) -> None:
    task_id = _send(pair, "fine")
    drain(pair.receiver.node())
    lane = lane_in(pair)
    # Someone who can write the share swaps done/ for a link to a directory of theirs that
    # holds a same-named result: clean must not reach into it.
    elsewhere = lane.root.parent / "canary"
    elsewhere.mkdir()
    for name in (f"{task_id}.result.json", f"{task_id}.log"):
        (elsewhere / name).write_bytes((lane.done / name).read_bytes())
    real_done = lane.path / "done.real"
    (lane.path / "done").rename(real_done)
    (lane.path / "done").symlink_to(elsewhere)
    proc = cli(pair.sender, "clean", "--json", "--older-than", "0")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []
    assert sorted(p.name for p in elsewhere.iterdir()) == [
        f"{task_id}.log",
        f"{task_id}.result.json",
    ]
    status = json.loads(cli(pair.sender, "status", "--json").stdout)
    assert any("symbolic link" in str(f) for f in status["faults"]), status["faults"]
