"""Compatibility with the original project: its real `dispatch-send` (schema 2, written as
inbox/<id>.json.tmp then renamed) and its command lines on dispatch's entry points."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Pair
from tests.unit.helpers import (
    BIN,
    assert_rejected,
    clean_env,
    cli,
    configure,
    drain,
    lane_in,
    legacy_hmac_key,
    promote_once,
    result_json,
    run,
    runs_of,
)

# The original project's bin/ (dispatch-send, dispatch_lib.py), deliberately not copied into
# this repository: DISPATCH_ORIGINAL_BIN names it. Where it is unset, the place the project's
# own machines keep it is tried.
ORIGINAL_ENV = "DISPATCH_ORIGINAL_BIN"
ORIGINAL = Path(os.environ.get(ORIGINAL_ENV) or "/work/shared/seed/runnable/bin")
PYTHON3 = shutil.which("python3") or sys.executable

# Only where the original's scripts are absent are the tests that run them skipped; the
# schema-2 path itself is covered by test_intake with envelopes signed the original's way,
# and the entry-point tests here always run.
needs_original = pytest.mark.skipif(
    not (ORIGINAL / "dispatch-send").exists(),
    reason=f"the original project's dispatch-send is not in {ORIGINAL}: set {ORIGINAL_ENV}"
    " to its bin/ directory to run these",
)


def original_env(pair: Pair, **extra: str) -> dict[str, str]:
    return clean_env(
        DISPATCH_ROOT=str(pair.root),
        DISPATCH_NODE_A="devbox",
        DISPATCH_NODE_B="gpubox",
        DISPATCH_FROM="devbox",
        **extra,
    )


def share_key(pair: Pair) -> None:
    """The original reads its key from <root>/keys/hmac.key: the receiver's secret, 0600."""
    _, secret = legacy_hmac_key(pair)
    path = pair.root / "keys" / "hmac.key"
    path.parent.mkdir(exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, secret + b"\n")
    os.close(fd)


def original_send(pair: Pair, request: str, *flags: str) -> tuple[str, Path]:
    proc = run(
        [PYTHON3, str(ORIGINAL / "dispatch-send"), "--to", "gpubox", "--request", request, *flags],
        original_env(pair),
    )
    assert proc.returncode == 0, proc.stderr
    task_id, path = proc.stdout.strip().split("\t")
    return task_id, Path(path)


def rewrite(path: Path, **changes: Any) -> None:
    obj = json.loads(path.read_text())
    obj.update(changes)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


@needs_original
def test_original_envelope_runs_with_the_nodes_policy_not_its_unsigned_fields(pair: Pair) -> None:
    share_key(pair)
    # If the unsigned fields counted, require_dangerous would run with bypassPermissions
    # (policy allow), timeout_s=3000 would be the agent's timeout and require_ack would hold.
    configure(
        pair.receiver,
        DISPATCH_ACCEPT_V2=1,
        DISPATCH_DEFAULT_TIMEOUT_S=77,
        DISPATCH_DANGEROUS="allow",
    )
    task_id, path = original_send(pair, "legacy task", "--priority", "high")
    lane = lane_in(pair)
    assert path == lane.inbox / f"{task_id}.json"
    sent = json.loads(path.read_text())
    assert sent["schema"] == 2 and sent["require_dangerous"] is False

    # Mid-write, as the original leaves it for a moment: ignored, not quarantined.
    staged = path.with_name(path.name + ".tmp")
    os.rename(path, staged)
    report = promote_once(pair.receiver.node())
    assert report.admitted == 0 and report.rejected == 0
    assert staged.exists()
    os.rename(staged, path)

    rewrite(path, require_dangerous=True, timeout_s=3000, max_output_bytes=1024, require_ack=True)
    drain(pair.receiver.node())
    res = result_json(lane, task_id)
    assert res["status"] == "ok", res
    assert res["perm_mode"] == "acceptEdits"
    assert res["final_text"] == "fake agent (acceptEdits) did: legacy task"
    header = lane.log_path(task_id).read_text().splitlines()[:3]
    assert "timeout=77s" in header[1] and "max_output_bytes=2000000" in header[1]
    assert [r["task_id"] for r in pair.agent_runs()] == [task_id]
    # The sender side of dispatch reads the signed result of an original task, once it
    # has a record of sending it (results are read only from the lane a task was sent on).
    pair.sender.node().sent.record(task_id, "devbox", "gpubox")
    proc = cli(pair.sender, "result", task_id, "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["status"] == "ok"


@needs_original
def test_original_envelope_refused_when_schema2_is_off(pair: Pair) -> None:
    share_key(pair)
    task_id, _ = original_send(pair, "legacy task")
    promote_once(pair.receiver.node())
    lane = lane_in(pair)
    assert_rejected(lane, f"{task_id}.json", "schema2_disabled")
    assert result_json(lane, task_id)["status"] == "rejected"
    assert pair.agent_runs() == []
    pair.sender.node().sent.record(task_id, "devbox", "gpubox")
    assert cli(pair.sender, "wait", task_id, "--timeout", "5").returncode == 1


@needs_original
def test_original_envelope_with_a_changed_signed_field(pair: Pair) -> None:
    share_key(pair)
    configure(pair.receiver, DISPATCH_ACCEPT_V2=1)
    task_id, path = original_send(pair, "harmless")
    rewrite(path, request="harmful")
    promote_once(pair.receiver.node())
    assert_rejected(lane_in(pair), f"{task_id}.json", "bad_signature")
    assert pair.agent_runs() == []


@needs_original
def test_original_envelope_replayed(pair: Pair) -> None:
    share_key(pair)
    configure(pair.receiver, DISPATCH_ACCEPT_V2=1)
    task_id, path = original_send(pair, "only once")
    data = path.read_bytes()
    drain(pair.receiver.node())
    lane = lane_in(pair)
    first = lane.result_path(task_id).read_bytes()
    path.write_bytes(data)
    promote_once(pair.receiver.node())
    assert_rejected(lane, f"{task_id}.json", "replay")
    assert lane.result_path(task_id).read_bytes() == first
    assert len(runs_of(pair, task_id)) == 1


@needs_original
def test_original_ack_tool_cannot_release_a_task(pair: Pair) -> None:
    """The original's dispatch-ack writes `ack` into <id>.ack on the share: a forged ack."""
    lane = lane_in(pair)
    proc = cli(
        pair.sender, "send", "--to", "gpubox", "--request", "gated", "--require-ack", "--json"
    )
    task_id = json.loads(proc.stdout)["id"]
    promote_once(pair.receiver.node())
    proc = run(
        [PYTHON3, str(ORIGINAL / "dispatch-ack"), task_id[:8], "--side", "gpubox"],
        original_env(pair),
    )
    assert proc.returncode == 0, proc.stderr
    promote_once(pair.receiver.node())
    assert (lane.pending_ack / f"{task_id}.json").exists()
    assert (
        json.loads((lane.rejected / f"{task_id}.ack.reason.json").read_text())["reason"]
        == "forged_ack"
    )
    assert pair.agent_runs() == []


def entry_env(pair: Pair, home: Path, **extra: str) -> dict[str, str]:
    """The original's environment-only setup, pointed at one node's key ring and state."""
    empty = home / "empty.conf"
    empty.write_text("")
    return original_env(
        pair,
        DISPATCH_CONFIG=str(empty),
        DISPATCH_KEY_DIR=str(home / "keys"),
        DISPATCH_STATE_DIR=str(home / "state"),
        **extra,
    )


def test_dispatch_send_entry_point_takes_the_original_flags(pair: Pair) -> None:
    env = entry_env(pair, pair.sender.home)
    proc = run(
        [
            str(BIN / "dispatch-send"),
            "--to",
            "gpubox",
            "--request",
            "via compat",
            "--priority",
            "high",
            "--callback",
            "none",
        ],
        env,
    )
    assert proc.returncode == 0, proc.stderr
    task_id, path = proc.stdout.strip().split("\t")
    sent = json.loads(Path(path).read_text())
    assert sent["schema"] == 4 and sent["from"] == "devbox" and sent["priority"] == "high"
    assert sent["callback"] == "none" and sent["id"] == task_id
    explicit = run(
        [str(BIN / "dispatch-send"), "--from", "devbox", "--to", "gpubox", "--request", "explicit"],
        {**env, "DISPATCH_FROM": ""},
    )
    assert explicit.returncode == 0, explicit.stderr
    drain(pair.receiver.node())
    assert result_json(lane_in(pair), task_id)["status"] == "ok"
    # The original's errors, as one line and exit 2.
    same = run(
        [str(BIN / "dispatch-send"), "--from", "gpubox", "--to", "gpubox", "--request", "x"], env
    )
    assert same.returncode == 2 and "must differ" in same.stderr
    nobody = run(
        [str(BIN / "dispatch-send"), "--to", "gpubox", "--request", "x"],
        {**env, "DISPATCH_FROM": ""},
    )
    assert nobody.returncode == 2 and "--from" in nobody.stderr
    assert "Traceback" not in nobody.stderr + same.stderr


def test_dispatch_ack_entry_point_takes_the_original_flags(pair: Pair) -> None:
    lane = lane_in(pair)
    ids = []
    for _ in range(2):
        proc = cli(
            pair.sender, "send", "--to", "gpubox", "--request", "gated", "--require-ack", "--json"
        )
        ids.append(json.loads(proc.stdout)["id"])
    promote_once(pair.receiver.node())
    env = entry_env(pair, pair.receiver.home)
    proc = run([str(BIN / "dispatch-ack"), ids[0][:8], "--side", "gpubox"], env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"acked: {ids[0]}.json"
    proc = run([str(BIN / "dispatch-ack"), ids[1]], {**env, "DISPATCH_SIDE": "gpubox"})
    assert proc.returncode == 0, proc.stderr
    proc = run([str(BIN / "dispatch-ack"), ids[1]], {**env, "DISPATCH_FROM": ""})  # no side
    assert proc.returncode == 2 and "--side" in proc.stderr
    drain(pair.receiver.node())
    for task_id in ids:
        assert result_json(lane, task_id)["status"] == "ok"
    assert sorted(str(r["task_id"]) for r in pair.agent_runs()) == sorted(ids)
