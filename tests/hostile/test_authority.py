"""The share carries bytes, never authority (issue 12), under the real units: a task file
moved between stages by hand is put back where the ledger says; lane directories replaced
by symbolic links into the node's own state, or by a file, refuse that lane alone and move
nothing of the node's; junk naming a task earns no signed result."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hostile.harness import (
    MNT,
    STATE,
    HostileNode,
    new_host,
)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileNode]:
    host = new_host("gpubox", tmp_path_factory.mktemp("hostile-authority"))
    try:
        host.start()
        hostile = HostileNode(host)
        hostile.setup(timer=True)
        yield hostile
    finally:
        host.poweroff()


def digest(top: Path) -> str:
    """Names, kinds and contents under `top`, links not followed."""
    out = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(top)):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            out.update(str(path.relative_to(top)).encode())
            if path.is_symlink():
                out.update(os.readlink(path).encode())
            elif path.is_file():
                out.update(path.read_bytes())
    return out.hexdigest()


def local_state(node: HostileNode) -> dict[str, str]:
    """The receiver's own state that a hostile share must never touch, file by file (the
    senders' state directories under it change as they send)."""
    state = node.ns(STATE)
    files: dict[str, str] = {}
    for sub in ("seen", "started"):
        for name in sorted(os.listdir(state / sub)):
            files[f"{sub}/{name}"] = hashlib.sha256((state / sub / name).read_bytes()).hexdigest()
    return files


def unchanged_but_for(before: dict[str, str], after: dict[str, str], task_id: str) -> None:
    """Every file as it was; new ones only for the one task that legitimately ran."""
    assert {k: v for k, v in after.items() if k in before} == before
    assert {k.split("/")[-1] for k in after if k not in before} <= {task_id}


def test_a_pending_task_moved_to_processing_by_hand_waits_for_its_ack(node: HostileNode) -> None:
    task_id = node.send("held for its ack", "--require-ack")
    lane = node.lane()
    name = f"{task_id}.json"
    node.host.wait_for(lambda: name in node.names("devbox", "pending-ack"), 30, what="pending")
    os.rename(lane / "pending-ack" / name, lane / "processing" / name)
    node.kick()
    node.host.wait_for(
        lambda: name in node.names("devbox", "pending-ack"), 30, what="put back by the ledger"
    )
    node.wait_quiet()
    assert node.ran(task_id) == 0 and node.result(task_id) is None
    node.dispatch("ack", task_id, sender=None)
    assert node.wait_results([task_id])[task_id]["status"] == "ok"
    assert node.ran(task_id) == 1
    node.assert_healthy()
    node.assert_audit()


@pytest.mark.parametrize("where", ["inbox", "rejected", "done", "processing", "lane"])
def test_a_lane_directory_linked_into_the_nodes_state_moves_nothing(
    node: HostileNode, where: str
) -> None:
    node.wait_quiet()
    lane = node.lane("devbox")
    canary = node.ns(f"{MNT}/canary")
    canary.mkdir(exist_ok=True)
    (canary / "keep.json").write_text("{}")
    before_state, before_canary = local_state(node), digest(canary)
    victim = lane if where == "lane" else lane / where
    os.rename(victim, victim.with_name(victim.name + ".real"))
    os.symlink(f"{STATE}/seen" if where != "done" else f"{MNT}/canary", victim)
    try:
        if where != "lane" and where != "inbox":
            (lane / "inbox" / "junk.json").write_text("{}")
        other = node.send("the other lane goes on", sender="laptop")
        assert node.wait_results([other], sender="laptop")[other]["status"] == "ok"

        def faults() -> dict[str, dict[str, object]]:
            status = json.loads(node.dispatch("status", "--json", sender=None, check=False).stdout)
            return {f["key"]: f for f in status["faults"]}

        node.host.wait_for(
            lambda: "lane:devbox-to-gpubox" in faults(), 30, interval=0.5, what="lane refused"
        )
        assert faults()["lane:devbox-to-gpubox"]["reason"] == "dir_symlink"
        assert node.failed_units() == []
        unchanged_but_for(before_state, local_state(node), other)
        assert digest(canary) == before_canary
        doctor = node.dispatch("doctor", sender=None, check=False)
        assert doctor.returncode != 0 and "lane devbox-to-gpubox" in doctor.stdout
    finally:
        os.unlink(victim)
        os.rename(victim.with_name(victim.name + ".real"), victim)
    node.kick()
    good = node.send("the lane is used again")
    assert node.wait_results([good])[good]["status"] == "ok"
    status = json.loads(node.dispatch("status", "--json", sender=None, check=False).stdout)
    assert status["faults"] == []
    node.assert_healthy()
    node.assert_audit()


def test_junk_naming_a_task_earns_no_signed_result(node: HostileNode) -> None:
    node.wait_quiet()
    held = node.send("a task the junk names", "--require-ack")
    stub = {"schema": 4, "id": held, "from": "devbox", "to": "gpubox"}
    lane = node.lane()
    node.host.wait_for(
        lambda: f"{held}.json" in node.names("devbox", "pending-ack"), 30, what="pending"
    )
    # The same id in the other direction's lane (laptop's here): the oracle of finding 3.
    other = node.lane("laptop")
    (other / "tmp" / "stub").write_text(json.dumps({**stub, "from": "laptop"}))
    os.rename(other / "tmp" / "stub", other / "inbox" / f"{held}.json")
    node.kick()
    node.wait_quiet()
    assert not (other / "done" / f"{held}.result.json").exists()
    assert (lane / "pending-ack" / f"{held}.json").exists()
    node.dispatch("ack", held, sender=None)
    assert node.wait_results([held])[held]["status"] == "ok"
    node.assert_audit()
