"""Three hosts, each peer of the other two (DISPATCH_PEERS), sharing one root over sshfs."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.e2e.cluster import SHARE
from tests.e2e.conftest import ClusterFactory
from tests.integration.dispatch_host import DISPATCH

RING = (("a", "b"), ("b", "c"), ("c", "a"))


def test_ring_of_three(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster("a", "b", "c")
    for name in "abc":
        conf = cluster[name].run(["cat", "/etc/dispatch/dispatch.conf"]).stdout
        peers = sorted(set("abc") - {name})
        assert f"DISPATCH_PEERS={','.join(peers)}" in conf, conf
    sent = {(src, dst): cluster[src].send(dst, f"ring {src} to {dst} sleep=1") for src, dst in RING}
    results = cluster.parallel(
        *[
            (lambda src=src, task_id=task_id: cluster[src].wait(task_id))
            for (src, _dst), task_id in sent.items()
        ]
    )
    for ((src, dst), task_id), result in zip(sent.items(), results, strict=True):
        assert result["status"] == "ok", json.dumps(result)
        assert result["answered_by"] == dst
        assert result["final_text"].startswith(f"fake agent (acceptEdits) did: ring {src}")
        assert [r["task_id"] for r in cluster[dst].agent_runs()] == [task_id]
        # The result travelled back in the task's own lane.
        assert f"{task_id}.result.json" in cluster[src].lane_files(f"{src}-to-{dst}", "done")
    # Each host's lanes, as its own `dispatch status` shows them.
    lanes = {lane["lane"]: lane for lane in cluster["b"].status()["lanes"]}
    assert set(lanes) == {"a-to-b", "c-to-b", "b-to-a", "b-to-c"}
    assert lanes["a-to-b"]["done"] == 1 and lanes["c-to-b"]["done"] == 0
    assert cluster.leftovers() == {}


def test_killswitch_from_any_host_holds_every_host(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster("a", "b", "c")
    nodes = [cluster[n] for n in "abc"]
    # Written on the share from c, through c's mount.
    cluster["c"].dispatch("killswitch", "on", "--reason", "incident 12")
    switched_at = time.monotonic()
    sent = {(src, dst): cluster[src].send(dst, f"held {src} to {dst}") for src, dst in RING}
    for (src, dst), task_id in sent.items():
        receiver, lane, name = cluster[dst], f"{src}-to-{dst}", f"{task_id}.json"
        receiver.wait_until(
            f"{task_id} queued on {dst}",
            lambda: name in receiver.lane_files(lane, "processing"),  # noqa: B023
        )
    # Three timer periods after the last arrival: nothing started anywhere.
    time.sleep(3)
    for node in nodes:
        assert node.agent_runs() == [], node.name
        status = node.status()
        assert status["killswitch"] == {"on": True, "hard": False, "reason": "incident 12"}
        held = node.journal("DISPATCH_EVENT=killswitch_hold", "-o", "cat")
        assert "none started: incident 12" in held, (node.name, held)
        assert (
            node.run(
                ["systemctl", "list-units", "--no-legend", "--plain", "dispatch-exec@*"]
            ).stdout.strip()
            == ""
        ), node.name
    assert time.monotonic() - switched_at < 30
    # Lifted from another host: everything runs, on its own host, once.
    cluster["a"].dispatch("killswitch", "off")
    results = cluster.parallel(
        *[
            (lambda src=src, task_id=task_id: cluster[src].wait(task_id))
            for (src, _dst), task_id in sent.items()
        ]
    )
    assert [r["status"] for r in results] == ["ok"] * 3, results
    for (_src, dst), task_id in sent.items():
        assert cluster[dst].ran(task_id) == 1
    assert cluster["b"].run(["test", "-e", f"{SHARE}/KILLSWITCH"], check=False).returncode != 0


FORGE = """
import json, os, sys
from pathlib import Path
from dispatch.core.keys import load_private
from dispatch.core.wire import canonical, new_id, now_utc, rfc3339
key = load_private(Path("/etc/dispatch/keys"), "a")  # a's own key: all a holds
body = {"schema": 4, "kind": "task", "id": new_id(), "from": "c", "to": "b",
        "created": rfc3339(now_utc()), "priority": "normal", "request": "forged as c",
        "require_ack": False, "require_dangerous": False, "timeout_s": 60,
        "max_output_bytes": 100000, "callback": "file", "parent": None, "hops": 0,
        "kid": key.public.kid}
body["sig"] = key.sign(canonical(body)).hex()
lane = Path(sys.argv[1]) / "c-to-b"
staged = lane / "tmp" / (body["id"] + ".json")
staged.write_bytes(canonical(body) + b"\\n")
os.rename(staged, lane / "inbox" / (body["id"] + ".json"))
print(body["id"])
"""

# b, with its own key (all b holds), answers for c: a result for a task a sent to c, in lane
# a-to-c, signed by b. What a receiver of some lane may sign is results of its own lanes.
FORGE_RESULT = """
import json, os, sys
from pathlib import Path
from dispatch.core.keys import load_private
from dispatch.core.wire import canonical, now_utc, rfc3339
key = load_private(Path("/etc/dispatch/keys"), "b")
body = {"schema": 4, "kind": "result", "from": "a", "to": "c", "id": sys.argv[2],
        "answered_by": "c", "answered_at": rfc3339(now_utc()), "request": "held for an ack",
        "status": "ok", "exit_code": 0, "elapsed_s": 1.0, "log_path": "", "final_text": "b says",
        "output_tail": "", "output_bytes": 0, "perm_mode": "acceptEdits", "started_at": None,
        "truncated": False, "unit": "", "reason": "", "kid": key.public.kid}
body["sig"] = key.sign(canonical(body)).hex()
done = Path(sys.argv[1]) / "a-to-c" / "done"
staged = Path(sys.argv[1]) / "a-to-c" / "tmp" / (sys.argv[2] + ".result.json")
staged.write_bytes(canonical(body) + b"\\n")
os.rename(staged, done / (sys.argv[2] + ".result.json"))
"""


def test_no_host_speaks_for_another(make_cluster: ClusterFactory) -> None:
    """Host a holds only its own key: its signer will not sign as c, and a task a signs as
    c's, written into c's lane to b through a's mount, is refused by b (not c's key)."""
    cluster = make_cluster("a", "b", "c")
    a, b = cluster["a"], cluster["b"]
    proc = a.dispatch("send", "--from", "c", "--to", "b", "--request", "as c", check=False)
    assert proc.returncode == 2 and "signs only as itself" in proc.stderr, proc.stderr
    python = str(Path(DISPATCH).parent / "python")
    task_id = a.run([python, "-c", FORGE, SHARE]).stdout.strip()
    reason = f"{task_id}.json.reason.json"
    b.wait_until(f"{task_id} refused on b", lambda: reason in b.lane_files("c-to-b", "rejected"))
    record = json.loads(b.run(["cat", f"{SHARE}/c-to-b/rejected/{reason}"]).stdout)
    assert record["reason"] == "unknown_key", record
    assert f"{task_id}.result.json" not in b.lane_files("c-to-b", "done")  # nothing answered
    assert b.agent_runs() == []
    # b still takes c's own tasks.
    genuine = cluster["c"].send("b", "from c itself")
    assert cluster["c"].wait(genuine)["status"] == "ok"

    # Nor does a receiver answer for another lane: b's key signs a result for a task a sent
    # to c (held there for an ack, so c has not answered it); a takes it for no outcome.
    held = a.send("c", "held for an ack", "--require-ack")
    cluster["c"].wait_until(
        f"{held} held on c",
        lambda: f"{held}.json" in cluster["c"].lane_files("a-to-c", "pending-ack"),
    )
    b.run([python, "-c", FORGE_RESULT, SHARE, held])
    assert f"{held}.result.json" in a.lane_files("a-to-c", "done")
    proc = a.dispatch("result", held, check=False)
    assert proc.returncode == 3 and "not one pinned for c" in proc.stderr, proc.stderr
    proc = a.dispatch("wait", held, "--timeout", "2", check=False)
    assert proc.returncode == 4 and "ignored" in proc.stderr, proc.stderr

    # A key published on the share that differs from the pin: reported, never adopted.
    pinned = a.run(["cat", "/etc/dispatch/peers/c.pub"]).stdout
    kind, material = b.run(["cat", f"{SHARE}/nodes/b.pub"]).stdout.split()[:2]
    a.write(f"{SHARE}/nodes/c.pub", f"{kind} {material} c\n")  # b's key, named as c's
    peers = {p["node"]: p for p in a.status()["peers"]}
    assert str(peers["c"].get("key_problem")).endswith("refused"), peers["c"]
    doctor = a.dispatch("doctor", check=False)
    assert doctor.returncode != 0, doctor.stdout
    assert "the key c publishes on the share" in doctor.stdout, doctor.stdout
    assert a.run(["cat", "/etc/dispatch/peers/c.pub"]).stdout == pinned
    assert a.wait(a.send("c", "c's pin stands"))["status"] == "ok"
