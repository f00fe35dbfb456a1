"""Building, signing and delivering envelopes; the parent/hops chain."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

from dispatch.core.errors import UsageError
from dispatch.core.model import Callback, Priority
from dispatch.core.signing import verify_envelope
from dispatch.core.wire import canonical, new_id, parse_time
from dispatch.send import task as sender
from tests.conftest import Pair
from tests.unit.helpers import cli, configure, drop, envelope, lane_in, promote_once, result_json


def test_build_uses_node_defaults_and_signs(pair: Pair) -> None:
    tx = pair.sender.node()
    env = sender.build(tx, to="gpubox", request="compile")
    assert (env.from_, env.to, env.schema) == ("devbox", "gpubox", 4)
    assert env.timeout_s == 600 and env.max_output_bytes == 2_000_000
    assert env.priority is Priority.NORMAL and env.callback is Callback.FILE
    assert env.parent is None and env.hops == 0
    assert env.require_ack is False and env.require_dangerous is False
    assert parse_time(env.created)
    rx = pair.receiver.node()
    assert verify_envelope(rx.keys, env.to_json()) == env


def test_build_options(pair: Pair) -> None:
    env = sender.build(
        pair.sender.node(),
        to="gpubox",
        request="r",
        priority=Priority.HIGH,
        require_ack=True,
        dangerous=True,
        timeout_s=5,
        max_output_bytes=4096,
        callback=Callback.NONE,
    )
    assert (
        env.priority,
        env.require_ack,
        env.require_dangerous,
        env.timeout_s,
        env.max_output_bytes,
        env.callback,
    ) == (Priority.HIGH, True, True, 5, 4096, Callback.NONE)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"to": "devbox"},
            r"--to devbox is this node itself \(DISPATCH_NODE=devbox\): a task "
            "goes to a peer \\(gpubox\\)",
        ),
        ({"to": "devbox", "from_": "devbox"}, "--from and --to must differ"),
        ({"to": "elsewhere"}, "unknown peer"),
        ({"to": "Not Valid"}, "not a valid node name"),
        ({"to": "gpubox", "request": "  "}, "empty"),
        ({"to": "gpubox", "timeout_s": 0}, "from 1 to"),
        ({"to": "gpubox", "max_output_bytes": 0}, "from 1 to"),
        # What every receiver refuses, refused before signing (issue 12, finding 10).
        ({"to": "gpubox", "timeout_s": True}, "whole number"),
        ({"to": "gpubox", "timeout_s": 10**30}, "from 1 to"),
        ({"to": "gpubox", "request": "a\x00b"}, "NUL"),
        ({"to": "gpubox", "request": "odd \ud800"}, "lone surrogate"),
    ],
)
def test_build_refuses(pair: Pair, kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"request": "r", **kwargs}
    with pytest.raises(UsageError, match=message):
        sender.build(pair.sender.node(), **args)  # type: ignore[arg-type]


def test_deliver_writes_canonical_json_into_the_inbox(pair: Pair) -> None:
    tx = pair.sender.node()
    env = sender.build(tx, to="gpubox", request="ship it")
    sent = sender.deliver(tx, env)
    lane = lane_in(pair)
    assert sent.path == lane.inbox / f"{env.id}.json"
    assert sent.path.read_bytes() == canonical(env.to_json()) + b"\n"
    assert os.listdir(lane.tmp) == []


def test_deliver_without_the_lane(pair: Pair) -> None:
    tx = pair.sender.node()
    env = sender.build(tx, to="gpubox", request="r")
    shutil.rmtree(pair.root / "devbox-to-gpubox")
    with pytest.raises(UsageError, match="dispatch init"):
        sender.deliver(tx, env)


def test_chain_position(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DISPATCH_TASK_ID", raising=False)
    assert sender.chain_position() == (None, 0)
    parent = new_id()
    monkeypatch.setenv("DISPATCH_TASK_ID", parent)
    monkeypatch.setenv("DISPATCH_HOPS", "2")
    assert sender.chain_position() == (parent, 3)
    monkeypatch.setenv("DISPATCH_HOPS", "junk")
    assert sender.chain_position() == (parent, 1)
    monkeypatch.setenv("DISPATCH_TASK_ID", "../not-an-id")
    assert sender.chain_position() == (None, 0)


def test_a_task_sent_from_inside_an_execution_carries_parent_and_hops(pair: Pair) -> None:
    configure(
        pair.receiver,
        DISPATCH_AGENT_PROFILE="generic",
        DISPATCH_AGENT_BIN=f"{sys.executable} -m dispatch send --to devbox "
        "--request follow-up --json",
    )
    lane = lane_in(pair)
    (pair.root / "KILLSWITCH").write_text("hold\n")
    obj = envelope(pair, hops=1, parent=new_id())
    drop(lane, obj)
    promote_once(pair.receiver.node())
    os.unlink(pair.root / "KILLSWITCH")
    proc = cli(pair.receiver, "exec", obj["id"])
    assert proc.returncode == 0, proc.stderr
    res = result_json(lane, obj["id"])
    assert res["status"] == "ok", res
    child = json.loads(res["final_text"])
    sent = json.loads(Path(child["path"]).read_text())
    assert sent["parent"] == obj["id"] and sent["hops"] == 2
    assert (sent["from"], sent["to"]) == ("gpubox", "devbox")
