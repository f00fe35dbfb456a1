"""The sensor on sshfs: another host's writes reach the receiver without a timer tick, a
burst landing within one mtime second is not lost, the sensor writes the heartbeat, and
doctor says which mode each node runs in."""

from __future__ import annotations

import json
import time

from tests.e2e.cluster import SHARE
from tests.e2e.conftest import ClusterFactory


def _passes(node_journal: str) -> int:
    return node_journal.count("Starting dispatch-watch.service")


def test_remote_writes_reach_the_receiver_by_the_sensor(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster("a", "b", settings={"b": {"DISPATCH_WATCH_MODE": "auto"}})
    a, b = cluster["a"], cluster["b"]
    assert b.host.unit_property("dispatch-sensor.service", "ActiveState") == "active"
    doctor = b.dispatch("doctor", check=False).stdout
    assert "watch-mode" in doctor and "sensor (DISPATCH_WATCH_MODE=auto)" in doctor, doctor
    # The timer off: only the sensor can tell b that a wrote.
    b.systemctl("stop", "dispatch-watch.timer")
    b.wait_until(
        "b's watch service idle",
        lambda: b.host.unit_property("dispatch-watch.service", "ActiveState") == "inactive",
    )
    time.sleep(2)  # past the start-up kicks
    before = _passes(b.journal("-u", "dispatch-watch.service", "-o", "cat"))
    # Three at once: on sshfs a directory's mtime has whole seconds, so the second and third
    # most likely land in the first one's second; the settle kick must find them.
    ids = [a.send("b", f"sensed {i}") for i in range(3)]
    for task_id in ids:
        result = a.wait(task_id, timeout=30)
        assert result["status"] == "ok", json.dumps(result)
        assert b.ran(task_id) == 1
    passes = _passes(b.journal("-u", "dispatch-watch.service", "-o", "cat")) - before
    assert 1 <= passes <= 12, passes
    # The promoter stays a while after those passes, then goes: it does not spin on its own
    # moves or on the sensor's kicks.
    b.wait_until(
        "b's promoter gone after its stay",
        lambda: b.host.unit_property("dispatch-watch.service", "ActiveState") == "inactive",
        timeout=60,
    )
    # Idle again: no pass at all while nothing arrives (the sensor only stats).
    time.sleep(3)
    idle_from = _passes(b.journal("-u", "dispatch-watch.service", "-o", "cat"))
    time.sleep(5)
    assert _passes(b.journal("-u", "dispatch-watch.service", "-o", "cat")) == idle_from
    # The sensor wrote b's heartbeat: the same fields as `dispatch heartbeat`.
    beat = json.loads(a.run(["cat", f"{SHARE}/heartbeats/b.json"]).stdout)
    assert set(beat) == {
        "node",
        "ts",
        "unix",
        "version",
        "running",
        "queued",
        "pending_ack",
        "killswitch",
        "kid",
    }
    assert beat["node"] == "b" and beat["kid"] == b.kid and time.time() - beat["unix"] < 20
    peers = {p["node"]: p for p in a.status()["peers"]}
    assert peers["b"]["stale"] is False
    # A KILLSWITCH written from a's side reaches b through the sensor too.
    a.write(f"{SHARE}/KILLSWITCH", "held from a\n")
    held = a.send("b", "held")
    b.wait_until(
        "b holds the task",
        lambda: "killswitch_hold" in b.journal("DISPATCH_EVENT=killswitch_hold", "-o", "json"),
        timeout=15,
    )
    assert b.ran(held) == 0
    assert b.failed_units() == []


def test_the_timer_fallback_still_carries_tasks_and_doctor_names_it(
    make_cluster: ClusterFactory,
) -> None:
    """The fallback for a filesystem whose directory stats do not change on remote writes:
    b polls with the timer, a (the default on sshfs) runs the sensor."""
    cluster = make_cluster("a", "b", settings={"b": {"DISPATCH_WATCH_MODE": "timer"}})
    a, b = cluster["a"], cluster["b"]
    doctor = b.dispatch("doctor", check=False).stdout
    assert "timer (DISPATCH_WATCH_MODE=timer)" in doctor, doctor
    # The sensor unit ran and exited: nothing resident.
    assert b.host.unit_property("dispatch-sensor.service", "ActiveState") == "inactive"
    assert b.host.unit_property("dispatch-sensor.service", "Result") == "success"
    # Only a tick tells b of a's write; its result reaches a, whose sensor sees it.
    there = a.send("b", "found by a tick")
    assert a.wait(there, timeout=60)["status"] == "ok"
    back = b.send("a", "and back")
    assert b.wait(back, timeout=60)["status"] == "ok"
    assert (b.ran(there), a.ran(back)) == (1, 1)
    assert b.failed_units() == [] and a.failed_units() == []
