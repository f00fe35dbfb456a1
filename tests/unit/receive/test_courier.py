"""The chain courier: children an execution hands over in its outbox are verified as a
receiver would and delivered into the outgoing lane with the normal send path; anything
else is refused with a reason, a line in the execution's log, the file kept in node-local
state and a verdict the agent's `dispatch send` turns into one line."""

from __future__ import annotations

import json
import os
import pwd
import threading
import uuid
from pathlib import Path

import pytest

from dispatch.core import config as config_mod
from dispatch.core.errors import UsageError
from dispatch.core.model import Envelope
from dispatch.core.node import Node
from dispatch.receive.courier import KEEP_REFUSED, ChainBox, Courier, open_box
from dispatch.send import outbox
from dispatch.send import task as sender
from tests.conftest import Pair

ME = pwd.getpwuid(os.getuid()).pw_name


def parent_task(pair: Pair, hops: int = 0) -> Envelope:
    """The execution's own task, as gpubox admitted it (sent by devbox)."""
    envelope = sender.build(pair.sender.node(), to="gpubox", request="parent")
    return Envelope(**{**envelope.__dict__, "hops": hops})


def child(node: Node, parent: str, hops: int, to: str = "devbox") -> Envelope:
    """A child as the local signer would sign it for the execution (here signed in-process:
    the rules that set parent and hops are the signer's, tested in tests/unit/signer)."""
    env = {"DISPATCH_TASK_ID": parent, "DISPATCH_HOPS": str(hops - 1)}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        return sender.build(node, to=to, request="child work")


def setup(pair: Pair, tmp_path: Path, hops: int = 0) -> tuple[Node, Courier, list[str]]:
    node = pair.receiver.node()
    box = open_box(str(uuid.uuid4()), ME, base=tmp_path / "exec")
    notes: list[str] = []
    return node, Courier(node, parent_task(pair, hops), box, notes.append), notes


def put(box: ChainBox, envelope: Envelope, name: str = "") -> None:
    data = json.dumps(envelope.to_json()).encode()
    (box.outbox / (name or f"{envelope.id}.json")).write_bytes(data)


def verdict(box: ChainBox, task_id: str) -> dict[str, str]:
    return dict(json.loads((box.verdicts / f"{task_id}.json").read_text()))


def test_a_child_of_this_execution_is_delivered_and_recorded(pair: Pair, tmp_path: Path) -> None:
    node, courier, notes = setup(pair, tmp_path, hops=1)
    kid = child(node, courier.parent.id, 2)
    put(courier.box, kid)
    courier.sweep()
    lane = pair.root / "gpubox-to-devbox"
    delivered = json.loads((lane / "inbox" / f"{kid.id}.json").read_text())
    assert (delivered["parent"], delivered["hops"], delivered["sig"]) == (
        courier.parent.id,
        2,
        kid.sig,
    )
    assert os.listdir(courier.box.outbox) == []
    assert verdict(courier.box, kid.id) == {"delivered": str(lane / "inbox" / f"{kid.id}.json")}
    sent = node.sent.lookup(kid.id)
    assert sent is not None and sent.lane == "gpubox-to-devbox"
    assert notes == [f"# child task {kid.id} delivered to devbox"]


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda n, p: child(n, str(uuid.uuid4()), 1), "not_a_child"),
        (lambda n, p: child(n, p, 3), "bad_hops"),
        (
            lambda n, p: Envelope(**{**child(n, p, 1).__dict__, "request": "changed"}),
            "bad_signature",
        ),
    ],
)
def test_anything_but_this_executions_child_is_refused_and_kept(
    pair: Pair, tmp_path: Path, make: object, reason: str
) -> None:
    node, courier, notes = setup(pair, tmp_path)
    bad: Envelope = make(node, courier.parent.id)  # type: ignore[operator]
    put(courier.box, bad)
    courier.sweep()
    assert not (pair.root / "gpubox-to-devbox" / "inbox" / f"{bad.id}.json").exists()
    assert verdict(courier.box, bad.id)["refused"] == reason
    assert len(notes) == 1 and notes[0].startswith(f"# child task refused ({reason}): ")
    kept = node.state.path / "chains" / "refused" / courier.parent.id
    record = json.loads((kept / f"{bad.id}.json.reason.json").read_text())
    assert record["reason"] == reason
    assert json.loads((kept / f"{bad.id}.json").read_text())["id"] == bad.id
    assert node.sent.lookup(bad.id) is None


def test_peers_outside_the_chain_set_and_junk_are_refused(pair: Pair, tmp_path: Path) -> None:
    node, courier, notes = setup(pair, tmp_path)
    node = pair.receiver.node(DISPATCH_PEERS="devbox,c", DISPATCH_CHAIN_PEERS="devbox")
    courier = Courier(node, courier.parent, courier.box, notes.append)
    elsewhere = child(node, courier.parent.id, 1, to="c")
    put(courier.box, elsewhere)
    (courier.box.outbox / "junk.json").write_bytes(b"{")
    os.symlink("/etc/passwd", courier.box.outbox / f"{uuid.uuid4()}.json")
    courier.sweep()
    assert verdict(courier.box, elsewhere.id)["refused"] == "peer_not_allowed"
    reasons = sorted(line.split("(")[1].split(")")[0] for line in notes)
    assert reasons == ["name_mismatch", "peer_not_allowed", "symlink"]
    assert os.listdir(courier.box.outbox) == []


def test_what_is_left_when_the_execution_ends_is_refused(pair: Pair, tmp_path: Path) -> None:
    node, courier, notes = setup(pair, tmp_path)
    late = child(node, courier.parent.id, 1)
    put(courier.box, late)
    courier.close()
    assert not courier.box.base.exists()
    assert not (pair.root / "gpubox-to-devbox" / "inbox" / f"{late.id}.json").exists()
    assert notes == [
        "# child task refused (execution_ended): left in the outbox when its execution ended"
    ]
    kept = node.state.path / "chains" / "refused" / courier.parent.id / f"{late.id}.json"
    assert json.loads(kept.read_text())["id"] == late.id


def test_the_agents_send_waits_for_the_couriers_verdict(pair: Pair, tmp_path: Path) -> None:
    """Both sides: `hand_over` (the agent) and the courier's sweeps (the executor)."""
    node, courier, _ = setup(pair, tmp_path)
    # The agent's own view: only the settings the executor gives it, its state in the box.
    settings = {k: v for k, v in courier.agent_settings().items() if k.startswith("DISPATCH_")}
    agent = Node(config_mod.load(settings))
    assert agent.cfg.state_dir == courier.box.state and agent.name == "gpubox"
    stop = threading.Event()

    def executor() -> None:
        while not stop.is_set():
            courier.sweep()
            stop.wait(0.05)

    thread = threading.Thread(target=executor)
    thread.start()
    try:
        good = child(node, courier.parent.id, 1)
        path = outbox.hand_over(agent, good, courier.box.outbox, wait_s=10)
        assert path == pair.root / "gpubox-to-devbox" / "inbox" / f"{good.id}.json"
        # Recorded on both sides: the agent's `dispatch wait` and the node's own log.
        assert agent.sent.lookup(good.id) is not None and node.sent.lookup(good.id) is not None
        forged = child(node, str(uuid.uuid4()), 1)
        with pytest.raises(UsageError, match=r"refused child task .* \(not_a_child\)"):
            outbox.hand_over(agent, forged, courier.box.outbox, wait_s=10)
    finally:
        stop.set()
        thread.join()
    with pytest.raises(UsageError, match="not confirmed after 0 s: it may still be delivered"):
        outbox.hand_over(agent, child(node, courier.parent.id, 1), courier.box.outbox, wait_s=0)


def test_oversized_files_and_fifos_are_refused_without_blocking(pair: Pair, tmp_path: Path) -> None:
    _, courier, notes = setup(pair, tmp_path)
    big = str(uuid.uuid4())
    (courier.box.outbox / f"{big}.json").write_bytes(b" " * (1024 * 1024 + 1))
    fifo = str(uuid.uuid4())
    os.mkfifo(courier.box.outbox / f"{fifo}.json")
    courier.sweep()  # a FIFO opened without O_NONBLOCK would hang here
    assert verdict(courier.box, big)["refused"] == "too_large"
    assert verdict(courier.box, fifo)["refused"] == "not_regular"
    assert os.listdir(courier.box.outbox) == []
    assert len(notes) == 2


def test_the_agent_gets_settings_and_never_a_secret(pair: Pair, tmp_path: Path) -> None:
    node, courier, _ = setup(pair, tmp_path)
    settings = courier.agent_settings()
    assert settings["DISPATCH_CONFIG"] == "/dev/null"  # not the node's 0640 config
    assert settings["DISPATCH_STATE_DIR"] == str(courier.box.state)
    assert settings["DISPATCH_OUTBOX"] == str(courier.box.outbox)
    # Nothing that names the node's state (the replay ledger) or carries a token.
    assert not any(str(node.cfg.state_dir) in value for value in settings.values())
    assert not any("WEBHOOK" in key or "SECRET" in key for key in settings)
    # The box: the agent's user owns outbox/ and state/, root keeps the rest.
    assert (
        courier.box.outbox.stat().st_mode & 0o777,
        courier.box.state.stat().st_mode & 0o777,
    ) == (
        0o700,
        0o700,
    )
    assert courier.box.verdicts.stat().st_uid == os.getuid()


def test_a_flood_of_junk_is_counted_not_kept(pair: Pair, tmp_path: Path) -> None:
    node, courier, notes = setup(pair, tmp_path)
    for _ in range(KEEP_REFUSED + 7):
        (courier.box.outbox / f"{uuid.uuid4()}.json").write_bytes(b"junk")
    courier.sweep()
    courier.close()
    kept = node.state.path / "chains" / "refused" / courier.parent.id
    assert len(list(kept.glob("*.reason.json"))) == KEEP_REFUSED
    assert len(notes) == KEEP_REFUSED + 1
    assert notes[-1] == f"# 7 more child tasks refused, not kept (the first {KEEP_REFUSED} are)"
