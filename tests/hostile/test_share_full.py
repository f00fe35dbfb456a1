"""The share fills up (a size-limited tmpfs mounted as the root inside the namespace):
executions that end meanwhile keep their signed results on the node (its outbox), the
passes go on without failing, a sender gets one clear error, and once space returns every
result is published, whole, with no unit left failed and nothing left behind."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.hostile.harness import ROOT, SENDERS, HostileNode, new_host


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileNode]:
    host = new_host("gpubox", tmp_path_factory.mktemp("hostile-full"))
    try:
        host.start()
        hostile = HostileNode(host)
        hostile.setup(share="tmpfs:16m", timer=True, settings={"DISPATCH_MAX_PARALLEL": "4"})
        yield hostile
    finally:
        host.poweroff()


def leftovers(node: HostileNode) -> list[str]:
    """Temp files in the lanes: what a write the share refused may leave behind."""
    found = []
    for sender in SENDERS:
        for stage in ("tmp", "inbox", "processing", "done", "rejected"):
            found += [
                f"{sender}/{stage}/{n}"
                for n in node.names(sender, stage)
                if stage == "tmp" or n.startswith(".") or n.endswith(".tmp")
            ]
    return found


def test_share_full_defers_results_then_publishes_them(node: HostileNode) -> None:
    node.dispatch("killswitch", "on", "--reason", "queue first", sender=None)
    ids = node.send_many([f"full {i} spam=30000 sleep=0.5" for i in range(8)])
    node.host.wait_for(
        lambda: len(node.names("devbox", "processing")) == len(ids), 30, what="tasks queued"
    )
    # Fill the share to the last block.
    node.host.run(["sh", "-c", f"cat /dev/zero > {ROOT}/filler 2>/dev/null; true"])
    assert node.host.run(["sh", "-c", f"echo x > {ROOT}/probe"], check=False).returncode != 0
    node.host.run(["rm", "-f", f"{ROOT}/probe"])
    # A sender now gets one clear line and exit 2, and leaves nothing half-written.
    proc = node.dispatch("send", "--to", "gpubox", "--request", "no room", check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    node.dispatch("killswitch", "off", sender=None)  # frees the block KILLSWITCH held
    node.kick()
    # Every execution ends, and its result waits on the node: none lost, none on the share.
    node.host.wait_for(
        lambda: len([n for n in node.outbox() if n.endswith(".json")]) == len(ids),
        90,
        interval=0.5,
        what="every result deferred",
    )
    assert node.results(ids) == {}
    assert sorted(r["task_id"] for r in node.agent_runs()) == sorted(ids)
    # A unit that deferred its result is still stopping for a moment (longer on a loaded
    # machine): every one ends, none fails.
    node.host.wait_for(lambda: node.busy_exec_units() == [], 30, what="every exec unit ended")
    assert [u for u in node.failed_units() if u.startswith("dispatch-exec@")] == []
    assert node.unit_state("dispatch-watch.service")[0] != "failed"

    node.host.run(["rm", "-f", f"{ROOT}/filler"])
    results = node.wait_results(ids, timeout=90)
    assert {r["status"] for r in results.values()} == {"ok"}
    for task_id in ids:
        log = (node.lane() / "done" / f"{task_id}.log").read_bytes()
        assert b"# ended" in log and log.count(b"x" * 1023) >= 29, (task_id, len(log))
    node.wait_quiet()
    # The heartbeat, which the full share refused (a failed run is what an operator should
    # see then), writes again at its next tick.
    heartbeat = node.ns(f"{ROOT}/heartbeats/gpubox.json")
    node.host.wait_for(
        lambda: not node.failed_units() and os.path.exists(heartbeat),
        40,
        interval=1,
        what="a heartbeat and no failed unit",
    )
    node.assert_healthy()
    assert leftovers(node) == [], leftovers(node)
    node.assert_audit()
