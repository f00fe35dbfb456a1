"""`dispatch list`: this node's tasks from both ends, from its own record, filtered; what waits
for an ack on the receiver; history that outlives the share being cleaned; both ends showing
a running task as running."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from typing import Any

import pytest

from dispatch.core.errors import UsageError
from dispatch.ops import tasklist
from tests.conftest import Pair
from tests.unit.helpers import cli, drain, env_for, lane_in, wait_for


def _send(pair: Pair, request: str, *flags: str) -> str:
    proc = cli(pair.sender, "send", "--to", "gpubox", "--request", request, *flags)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def _listed(pair: Pair, receiver: bool = False, *flags: str) -> list[dict[str, Any]]:
    proc = cli(pair.receiver if receiver else pair.sender, "list", "--json", *flags)
    assert proc.returncode == 0, proc.stderr
    rows: list[dict[str, Any]] = json.loads(proc.stdout)
    return rows


def test_list_from_both_ends_newest_first_with_filters(pair: Pair) -> None:
    ok = _send(pair, "fine")
    bad = _send(pair, "boom exit=3")
    held = _send(pair, "deploy to production", "--require-ack", "--dangerous")
    drain(pair.receiver.node())
    rows = _listed(pair)
    assert [r["id"] for r in rows] == [held, bad, ok]
    assert [r["state"] for r in rows] == ["pending-ack", "error", "ok"]
    assert {r["direction"] for r in rows} == {"out"} and {r["peer"] for r in rows} == {"gpubox"}
    assert rows[2]["request"] == "fine" and rows[2]["elapsed_s"] is not None
    assert rows[0]["asks"] is None  # only the receiver is asked
    # The receiver: the same tasks, incoming, and what the held one asks.
    theirs = _listed(pair, True)
    assert [(r["id"], r["direction"], r["peer"], r["state"]) for r in theirs] == [
        (held, "in", "devbox", "pending-ack"),
        (bad, "in", "devbox", "error"),
        (ok, "in", "devbox", "ok"),
    ]
    asks = theirs[0]["asks"]
    assert asks["request"] == "deploy to production" and asks["dangerous"] is True
    assert asks["ack"] == f"dispatch ack {held[:8]}"
    assert [r["id"] for r in _listed(pair, True, "--waiting-ack")] == [held]
    text = cli(pair.receiver, "ls").stdout
    assert "waiting for an ack here" in text
    assert f"{held[:8]} from devbox, bypassPermissions, timeout 600s: deploy to production" in text
    header, *lines = text.splitlines()[:4]
    assert header.split() == ["ID", "PEER", "DIR", "STATE", "AGE", "ELAPSED", "REQUEST"]
    assert lines[0].split()[:4] == [held[:8], "devbox", "in", "pending-ack"]
    # Filters.
    assert [r["id"] for r in _listed(pair, False, "--status", "ok,error")] == [bad, ok]
    assert [r["id"] for r in _listed(pair, False, "--status", "ok", "--status", "error")] == [
        bad,
        ok,
    ]
    assert _listed(pair, False, "--peer", "elsewhere") == []
    assert len(_listed(pair, False, "--since", "1h")) == 3
    assert _listed(pair, False, "--since", "2999-01-01") == []
    assert _listed(pair, False, "--running") == []
    proc = cli(pair.sender, "list", "--since", "yesterday-ish")
    assert proc.returncode == 2 and "like 2h, 3d" in proc.stderr


def test_history_survives_the_share_being_cleaned(pair: Pair) -> None:
    ok = _send(pair, "keep my story")
    drain(pair.receiver.node())
    assert _listed(pair)[0]["state"] == "ok"
    lane = lane_in(pair)
    shutil.rmtree(lane.done)
    lane.done.mkdir()
    [row] = _listed(pair)
    assert (row["id"], row["state"], row["request"]) == (ok, "ok", "keep my story")
    [theirs] = _listed(pair, True)
    assert (theirs["id"], theirs["state"]) == (ok, "ok")


def test_a_running_task_is_running_at_both_ends(pair: Pair) -> None:
    task_id = _send(pair, "take a while sleep=4")
    watcher = subprocess.Popen(
        [sys.executable, "-m", "dispatch", "watch", "--quiet"],
        env=env_for(pair.receiver),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        lane = lane_in(pair)
        wait_for(lambda: lane.log_path(task_id).exists(), what="the execution's log")
        wait_for(lambda: pair.receiver.node().state.started(task_id) is not None, what="started")
        mine = json.loads(cli(pair.sender, "status", "--json").stdout)
        out = next(lane for lane in mine["lanes"] if lane["direction"] == "out")
        assert (out["queued"], out["running"]) == (0, 1)
        theirs = json.loads(cli(pair.receiver, "status", "--json").stdout)
        inbound = next(lane for lane in theirs["lanes"] if lane["direction"] == "in")
        assert (inbound["queued"], inbound["running"]) == (0, 1)
        assert [r["id"] for r in _listed(pair, False, "--running")] == [task_id]
        [row] = _listed(pair, True, "--running")
        assert row["id"] == task_id and row["elapsed_s"] is not None
        wait_for(lambda: lane.result_path(task_id).exists(), what="the result")
    finally:
        watcher.terminate()
        watcher.wait(20)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("1h30m", 5400)]
)
def test_durations(text: str, seconds: float) -> None:
    assert tasklist.parse_duration(text) == seconds


def test_a_bad_duration_says_what_it_must_look_like() -> None:
    with pytest.raises(UsageError, match="like 90s, 15m, 2h"):
        tasklist.parse_duration("3 fortnights")
