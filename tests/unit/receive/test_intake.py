"""Strict intake, through real promote passes: every refusal lands in rejected/ with its
reason, nothing refused ever runs, and a sender that named a valid id gets a signed
`rejected` result."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dispatch.core.keys import Pins, PublicKey
from dispatch.core.lanedirs import make_layout
from dispatch.core.model import Stage, Status
from dispatch.core.wire import new_id, now_utc, rfc3339
from dispatch.send import results
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
    kid_of,
    lane_in,
    legacy_hmac_key,
    node_key,
    promote_once,
    reason_of,
    result_json,
    sign_v2,
    signed,
)


def test_a_valid_task_is_admitted_and_runs_once(pair: Pair) -> None:
    tx = pair.sender.node()
    sent = sender.deliver(tx, sender.build(tx, to="gpubox", request="say hi"))
    rx = pair.receiver.node()
    report = promote_once(rx)
    assert report.admitted == 1 and report.started == [sent.envelope.id]
    assert report.rejected == 0
    res = results.get(tx, sent.envelope.id)
    assert res.status is Status.OK and "say hi" in res.final_text
    assert [r["task_id"] for r in pair.agent_runs()] == [sent.envelope.id]
    lane = lane_in(pair)
    assert os.listdir(lane.inbox) == [] and os.listdir(lane.processing) == []
    entry = rx.state.entry(sent.envelope.id)
    assert entry is not None and entry.stage is Stage.DONE


def _stale() -> dict[str, Any]:
    return {"created": rfc3339(now_utc() - timedelta(days=2))}


def _future() -> dict[str, Any]:
    return {"created": rfc3339(now_utc() + timedelta(hours=1))}


# (case, envelope overrides, tamper after signing, expected reason): refused after the
# envelope authenticated, so the sender gets a signed `rejected` result.
ANSWERED: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("stale", _stale(), {}, "stale"),
    ("future", _future(), {}, "future"),
    ("timeout_over_max", {"timeout_s": 7200}, {}, "policy_timeout"),
    ("output_over_max", {"max_output_bytes": 2**40}, {}, "policy_output"),
    ("too_many_hops", {"hops": 4, "parent": new_id()}, {}, "too_many_hops"),
]
# Refused before anything authenticated: nothing is signed for it (the share would be a
# signing oracle), no ledger entry, no notification; an unsigned reason in rejected/.
UNANSWERED: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    ("bad_signature", {}, {"request": "rm -rf / please"}, "bad_signature"),
    ("dangerous_flipped", {}, {"require_dangerous": True}, "bad_signature"),
    ("timeout_flipped", {}, {"timeout_s": 3000}, "bad_signature"),
    ("unknown_kid", {"kid": "nobody"}, {}, "unknown_key"),
    ("int_for_bool", {"require_ack": 0}, {}, "malformed"),
    ("unknown_field", {"shell": "bash"}, {}, "malformed"),
]


@pytest.mark.parametrize(
    ("overrides", "tamper", "code"), [c[1:] for c in ANSWERED], ids=[c[0] for c in ANSWERED]
)
def test_refused_envelope_with_a_valid_id_gets_a_rejected_result(
    pair: Pair, overrides: dict[str, Any], tamper: dict[str, Any], code: str
) -> None:
    obj = envelope(pair, **overrides)
    obj.update(tamper)
    lane = lane_in(pair)
    name = drop(lane, obj).name
    report = promote_once(pair.receiver.node())
    assert report.rejected == 1 and report.admitted == 0 and report.started == []
    record = assert_rejected(lane, name, code)
    assert record["task_id"] == obj["id"]
    tx = pair.sender.node()
    res = results.get(tx, obj["id"])  # verifies the receiver's signature
    assert res.status is Status.REJECTED and res.reason.startswith(code)
    assert res.answered_by == "gpubox"
    assert pair.agent_runs() == []


@pytest.mark.parametrize(
    ("overrides", "tamper", "code"), [c[1:] for c in UNANSWERED], ids=[c[0] for c in UNANSWERED]
)
def test_an_envelope_that_did_not_authenticate_gets_no_signature(
    pair: Pair, overrides: dict[str, Any], tamper: dict[str, Any], code: str
) -> None:
    configure(pair.receiver, DISPATCH_WEBHOOK_URL="https://example.invalid/hook")
    obj = envelope(pair, **overrides)
    obj.update(tamper)
    lane = lane_in(pair)
    name = drop(lane, obj).name
    rx = pair.receiver.node()
    report = promote_once(rx)
    assert report.rejected == 1 and report.admitted == 0 and report.started == []
    assert_rejected(lane, name, code)
    assert not os.path.lexists(lane.result_path(obj["id"]))
    assert rx.state.entry(obj["id"]) is None
    queued_posts = rx.cfg.state_dir / "notify"
    assert not queued_posts.exists() or os.listdir(queued_posts) == []
    assert pair.agent_runs() == []


def test_junk_naming_a_queued_task_earns_no_signed_result(pair: Pair) -> None:
    """Issue 12, finding 3: an unsigned stub naming a task id was answered with a result
    this node signed, which a copy into the other lane turned into that task's outcome."""
    lane = lane_in(pair)
    real = envelope(pair)
    task_id = real["id"]
    stub = {"schema": 3, "id": task_id, "from": "devbox", "to": "gpubox"}
    rx = pair.receiver.node()
    drop(lane, stub)
    promote_once(rx)
    assert_rejected(lane, f"{task_id}.json", "malformed")
    assert not os.path.lexists(lane.result_path(task_id))
    assert rx.state.entry(task_id) is None
    # The genuine task of that id still runs, once.
    os.rename(lane.rejected / f"{task_id}.json", pair.root / "kept-stub")
    os.rename(lane.rejected / f"{task_id}.json.reason.json", pair.root / "kept-reason")
    drop(lane, real)
    promote_once(rx)
    assert result_json(lane, task_id)["status"] == "ok"
    assert len(pair.agent_runs()) == 1


def test_hops_within_the_limit_run_and_the_limit_is_a_knob(pair: Pair) -> None:
    lane = lane_in(pair)
    at_limit = envelope(pair, hops=3, parent=new_id())
    drop(lane, at_limit)
    configure(pair.receiver, DISPATCH_MAX_HOPS=1)
    over = envelope(pair, hops=2, parent=new_id())
    drop(lane, over)
    promote_once(pair.receiver.node())
    assert_rejected(lane, f"{at_limit['id']}.json", "too_many_hops")
    assert_rejected(lane, f"{over['id']}.json", "too_many_hops")
    configure(pair.receiver, DISPATCH_MAX_HOPS=3)
    ok = envelope(pair, hops=3, parent=new_id())
    drop(lane, ok)
    promote_once(pair.receiver.node())
    assert result_json(lane, ok["id"])["status"] == "ok"
    assert [r["task_id"] for r in pair.agent_runs()] == [ok["id"]]


def test_dangerous_task_with_policy_deny(pair: Pair) -> None:
    configure(pair.receiver, DISPATCH_DANGEROUS="deny")
    obj = envelope(pair, require_dangerous=True)
    lane = lane_in(pair)
    drop(lane, obj)
    promote_once(pair.receiver.node())
    assert_rejected(lane, f"{obj['id']}.json", "dangerous_denied")
    assert result_json(lane, obj["id"])["status"] == "rejected"
    assert pair.agent_runs() == []


def test_dangerous_task_policies_ack_and_allow(pair: Pair) -> None:
    lane = lane_in(pair)
    held = envelope(pair, require_dangerous=True)
    drop(lane, held)
    promote_once(pair.receiver.node())  # default policy: ack
    assert (lane.pending_ack / f"{held['id']}.json").exists()
    assert pair.agent_runs() == []
    # Only a local ack releases it; then it runs with the permissions it asked for.
    assert cli(pair.receiver, "ack", held["id"]).returncode == 0
    promote_once(pair.receiver.node())
    assert result_json(lane, held["id"])["perm_mode"] == "bypassPermissions"
    configure(pair.receiver, DISPATCH_DANGEROUS="allow")
    allowed = envelope(pair, require_dangerous=True)
    drop(lane, allowed)
    promote_once(pair.receiver.node())
    res = result_json(lane, allowed["id"])
    assert res["status"] == "ok" and res["perm_mode"] == "bypassPermissions"
    assert "(bypassPermissions)" in res["final_text"]
    assert [r["task_id"] for r in pair.agent_runs()] == [held["id"], allowed["id"]]


def test_name_mismatch(pair: Pair) -> None:
    obj = envelope(pair)
    lane = lane_in(pair)
    other = new_id()
    drop(lane, obj, f"{other}.json")
    promote_once(pair.receiver.node())
    assert_rejected(lane, f"{other}.json", "name_mismatch")
    assert not lane.result_path(obj["id"]).exists()
    assert not lane.result_path(other).exists()
    assert pair.agent_runs() == []


@pytest.mark.parametrize(
    ("from_", "to"), [("gpubox", "devbox"), ("third", "gpubox"), ("devbox", "third")]
)
def test_wrong_lane(pair: Pair, from_: str, to: str) -> None:
    """A genuine task (signed by its sender, whose key this node pins) in a lane that is
    not its own."""
    sides: dict[str, Any] = {"from": from_, "to": to}
    obj = envelope(pair, **sides)
    if from_ == "third":
        third = Ed25519PrivateKey.generate()
        Pins(pair.receiver.home / "peers").add(PublicKey("third", raw_public(third)), "test")
        obj = signed(third, {**envelope(pair, sign=False, **sides), "kid": kid_of(third)})
    lane = lane_in(pair)
    drop(lane, obj)
    promote_once(pair.receiver.node())
    assert_rejected(lane, f"{obj['id']}.json", "wrong_lane")
    assert not lane.result_path(obj["id"]).exists()
    assert pair.agent_runs() == []


def test_a_node_cannot_send_as_a_third(pair: Pair) -> None:
    """devbox's own key, signing a task as `third` (pinned here), in third's lane: refused
    (the key is not third's), and nothing is answered or run."""
    third = Ed25519PrivateKey.generate()
    Pins(pair.receiver.home / "peers").add(PublicKey("third", raw_public(third)), "test")
    kid, devbox = node_key(pair.sender)
    rx = pair.receiver.node(DISPATCH_PEERS="devbox,third")
    make_layout(rx.spool, rx.cfg)
    lane = rx.spool.lane("third", "gpubox")
    for claimed in (kid, kid_of(third)):
        obj = signed(devbox, {**envelope(pair, sign=False, **{"from": "third"}), "kid": claimed})
        drop(lane, obj)
        promote_once(pair.receiver.node(DISPATCH_PEERS="devbox,third"))
        reason = "unknown_key" if claimed == kid else "bad_signature"
        assert_rejected(lane, f"{obj['id']}.json", reason)
        assert not lane.result_path(obj["id"]).exists()
    assert pair.agent_runs() == []


def raw_public(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def test_symlink_to_a_valid_envelope_outside(pair: Pair) -> None:
    obj = envelope(pair)
    outside = pair.root.parent / "outside.json"
    outside.write_text(json.dumps(obj))
    lane = lane_in(pair)
    name = f"{obj['id']}.json"
    os.symlink(outside, lane.inbox / name)
    promote_once(pair.receiver.node())
    assert_rejected(lane, name, "symlink")
    assert (lane.rejected / name).is_symlink()
    assert json.loads(outside.read_text()) == obj  # the target is untouched
    assert pair.agent_runs() == []


def test_fifo_does_not_hang_the_promoter(pair: Pair) -> None:
    lane = lane_in(pair)
    name = f"{new_id()}.json"
    os.mkfifo(lane.inbox / name)
    good = envelope(pair)
    drop(lane, good)
    # In a child process: if the FIFO blocked the open, the test fails instead of hanging.
    proc = cli(pair.receiver, "promote", "--json", timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["rejected"] == 1
    assert_rejected(lane, name, "not_regular")
    assert (lane.rejected / name).is_fifo()


def test_directory_named_like_a_task(pair: Pair) -> None:
    lane = lane_in(pair)
    name = f"{new_id()}.json"
    (lane.inbox / name).mkdir()
    (lane.inbox / name / "inner").write_text("x")
    promote_once(pair.receiver.node())
    assert_rejected(lane, name, "not_regular")
    assert (lane.rejected / name / "inner").read_text() == "x"


def test_file_over_one_mib(pair: Pair) -> None:
    lane = lane_in(pair)
    name = f"{new_id()}.json"
    with open(lane.inbox / name, "wb") as handle:
        handle.truncate(4 * 1024 * 1024 * 1024)  # sparse: 4 GiB that take no space
    started = time.monotonic()
    promote_once(pair.receiver.node())
    assert time.monotonic() - started < 10
    record = assert_rejected(lane, name, "too_large")
    assert "bytes" in record["message"]


def test_bad_names(pair: Pair) -> None:
    lane = lane_in(pair)
    obj = envelope(pair)
    drop(lane, obj, "notes.txt")
    drop(lane, obj, f"{obj['id']}.JSON")
    promote_once(pair.receiver.node())
    assert_rejected(lane, "notes.txt", "bad_name")
    assert_rejected(lane, f"{obj['id']}.JSON", "bad_name")
    assert pair.agent_runs() == []


@pytest.mark.parametrize(
    "data",
    [
        b'{"id": 1, "id": 2}',
        b'{"schema": NaN}',
        b"[" * 200_000,
        b'{"request": "\xff"}',
        b"\x00",
        b"",
        b"null",
    ],
    ids=["duplicate_keys", "nan", "deep", "bad_utf8", "nul", "empty", "null"],
)
def test_garbage_is_quarantined_without_crashing(pair: Pair, data: bytes) -> None:
    lane = lane_in(pair)
    name = f"{new_id()}.json"
    drop(lane, data, name)
    report = promote_once(pair.receiver.node())
    assert report.errors == 0
    assert_rejected(lane, name, "malformed")


def test_nul_in_a_signed_request_is_refused_before_it_reaches_argv(pair: Pair) -> None:
    lane = lane_in(pair)
    obj = envelope(pair, request="echo a\u0000b")
    drop(lane, obj)
    report = promote_once(pair.receiver.node())
    assert report.errors == 0 and report.started == []
    assert_rejected(lane, f"{obj['id']}.json", "malformed")
    assert pair.agent_runs() == []


def test_schema2_disabled(pair: Pair) -> None:
    _, secret = legacy_hmac_key(pair)
    fields = {
        "id": new_id(),
        "from": "devbox",
        "to": "gpubox",
        "created": now_utc().isoformat(),
        "priority": "normal",
        "request": "old",
    }
    obj: dict[str, Any] = {
        "schema": 2,
        **fields,
        "callback": "file",
        "require_ack": False,
        "require_dangerous": False,
        "timeout_s": 600,
        "max_output_bytes": 2_000_000,
        "hmac": sign_v2(secret, fields),
    }
    lane = lane_in(pair)
    drop(lane, obj)
    promote_once(pair.receiver.node())
    assert_rejected(lane, f"{obj['id']}.json", "schema2_disabled")
    assert result_json(lane, obj["id"])["status"] == "rejected"
    assert pair.agent_runs() == []


def test_replay_after_completion_does_not_run_or_overwrite(pair: Pair) -> None:
    tx = pair.sender.node()
    sent = sender.deliver(tx, sender.build(tx, to="gpubox", request="once only"))
    original = sent.path.read_bytes()
    rx = pair.receiver.node()
    drain(rx)
    lane = lane_in(pair)
    first = lane.result_path(sent.envelope.id).read_bytes()
    first_log = lane.log_path(sent.envelope.id).read_bytes()
    assert json.loads(first)["status"] == "ok"
    name = f"{sent.envelope.id}.json"
    drop(lane, original, name)
    report = promote_once(pair.receiver.node())
    assert report.rejected == 1 and report.started == []
    assert_rejected(lane, name, "replay")
    assert lane.result_path(sent.envelope.id).read_bytes() == first
    assert lane.log_path(sent.envelope.id).read_bytes() == first_log
    assert len(pair.agent_runs()) == 1


def test_same_id_resigned_or_renamed(pair: Pair) -> None:
    lane = lane_in(pair)
    obj = envelope(pair, request="first")
    drop(lane, obj)
    drain(pair.receiver.node())
    first = lane.result_path(obj["id"]).read_bytes()
    # A new, correctly signed envelope that reuses the id: a replay all the same.
    again = envelope(pair, id=obj["id"], request="second")
    drop(lane, again)
    # The very same bytes under another name.
    renamed = new_id()
    drop(lane, obj, f"{renamed}.json")
    promote_once(pair.receiver.node())
    assert_rejected(lane, f"{obj['id']}.json", "replay")
    assert_rejected(lane, f"{renamed}.json", "name_mismatch")
    assert lane.result_path(obj["id"]).read_bytes() == first
    assert not lane.result_path(renamed).exists()
    assert [r["request"] for r in pair.agent_runs()] == ["first"]


def test_replay_of_a_task_still_queued(pair: Pair) -> None:
    lane = lane_in(pair)
    (pair.root / "KILLSWITCH").write_text("hold\n")
    obj = envelope(pair)
    drop(lane, obj)
    promote_once(pair.receiver.node())
    assert (lane.processing / f"{obj['id']}.json").exists()
    drop(lane, envelope(pair, id=obj["id"], request="evil twin"))
    promote_once(pair.receiver.node())
    assert_rejected(lane, f"{obj['id']}.json", "replay")
    # The queued original is untouched and runs once the killswitch is off.
    os.unlink(pair.root / "KILLSWITCH")
    drain(pair.receiver.node())
    assert [r["request"] for r in pair.agent_runs()] == ["hello there"]


def test_wait_ends_at_once_on_a_rejected_result(pair: Pair) -> None:
    obj = envelope(pair, **_stale())
    lane = lane_in(pair)
    drop(lane, obj)
    waiter = subprocess.Popen(
        [sys.executable, "-m", "dispatch", "wait", obj["id"], "--timeout", "30"],
        env=env_for(pair.sender),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)  # let it start waiting
        began = time.monotonic()
        promote_once(pair.receiver.node())
        _, err = waiter.communicate(timeout=20)
        waited = time.monotonic() - began
    finally:
        waiter.kill()
    assert waiter.returncode == 1, err
    assert "rejected" in err and "stale" in err
    assert waited < 10  # well before its 30 s timeout


def test_an_unsigned_rejection_is_a_hint_and_wait_keeps_waiting(pair: Pair) -> None:
    obj = envelope(pair)
    obj["request"] = "tampered"
    lane = lane_in(pair)
    drop(lane, obj)
    promote_once(pair.receiver.node())
    assert_rejected(lane, f"{obj['id']}.json", "bad_signature")
    proc = cli(pair.sender, "wait", obj["id"], "--timeout", "1")
    assert proc.returncode == 4, proc.stderr
    assert "bad_signature" in proc.stderr and "unsigned" in proc.stderr


def test_stale_and_fresh_temp_files(pair: Pair) -> None:
    lane = lane_in(pair)
    task_id = new_id()
    old_tmp = lane.inbox / f"{task_id}.json.tmp"
    old_tmp.write_text("{half")
    fresh_tmp = lane.inbox / f"{new_id()}.json.tmp"
    fresh_tmp.write_text("{half")
    dead = lane.tmp / f"{new_id()}.json"
    dead.write_text("{}")
    hour_and_a_bit = time.time() - 3700
    for path in (old_tmp, dead):
        os.utime(path, (hour_and_a_bit, hour_and_a_bit))
    promote_once(pair.receiver.node())
    assert reason_of(lane, old_tmp.name)["reason"] == "stale_tmp"
    assert (lane.rejected / old_tmp.name).read_text() == "{half"
    record = reason_of(lane, dead.name)
    assert record["reason"] == "stale_tmp" and record["from_dir"] == "tmp"
    assert not old_tmp.exists() and not dead.exists()
    assert fresh_tmp.read_text() == "{half"  # a sender mid-write is left alone
    assert not os.path.lexists(lane.rejected / fresh_tmp.name)


def test_one_bad_entry_does_not_stop_the_others(pair: Pair) -> None:
    lane = lane_in(pair)
    os.mkfifo(lane.inbox / f"{new_id()}.json")
    (lane.inbox / f"{new_id()}.json").mkdir()
    os.symlink("/etc/passwd", lane.inbox / f"{new_id()}.json")
    good = envelope(pair)
    drop(lane, good)
    report = promote_once(pair.receiver.node())
    assert report.rejected == 3 and report.started == [good["id"]]
    assert result_json(lane, good["id"])["status"] == "ok"


def test_intake_interrupted_by_a_crash_is_resumed_not_called_a_replay(pair: Pair) -> None:
    lane = lane_in(pair)
    obj = envelope(pair)
    path = drop(lane, obj)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    rx = pair.receiver.node()
    # A pass claimed the id, then died before moving the file out of inbox/.
    assert rx.state.claim(obj["id"], sha, lane.name) is None
    # Different bytes under an id claimed that way are a replay all the same.
    other = envelope(pair)
    assert rx.state.claim(other["id"], "0" * 64, lane.name) is None
    drop(lane, other)
    promote_once(pair.receiver.node())
    assert result_json(lane, obj["id"])["status"] == "ok"
    assert_rejected(lane, f"{other['id']}.json", "replay")
    assert [r["task_id"] for r in pair.agent_runs()] == [obj["id"]]
