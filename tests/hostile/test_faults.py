"""Fault injection under the real units, on a share that is a mount of its own (so it can go
away): SIGKILL of the agent, of `dispatch exec` and of `dispatch promote` at random points;
systemd re-executed, the host rebooted and its power cut mid-run; the share unmounted and
mounted again. After each, every task has exactly one result, none ran twice, and
`dispatch audit` finds nothing. The share filling up is in test_share_full.py."""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from tests.hostile.harness import (
    ROOT,
    WATCH,
    HostileNode,
    all_results,
    new_host,
    send_both,
)

FINAL = {"ok", "killed", "interrupted"}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileNode]:
    host = new_host("gpubox", tmp_path_factory.mktemp("hostile-faults"))
    try:
        host.start()
        hostile = HostileNode(host)
        hostile.setup(share="bind", timer=True, settings={"DISPATCH_MAX_PARALLEL": "4"})
        yield hostile
    finally:
        host.poweroff()


def settle(node: HostileNode) -> str:
    """At rest, healthy (a pass after the faults succeeded) and clean by `dispatch audit`."""
    node.wait_quiet(timeout=120)
    if node.unit_state(WATCH)[0] == "failed":
        node.kick()  # a pass SIGKILLed last leaves the oneshot failed until the next one
        node.host.wait_for(
            lambda: node.unit_state(WATCH)[0] == "inactive",
            30,
            interval=0.2,
            what=f"{WATCH} to run cleanly again",
        )
    # The heartbeat fails while the share is away (what an operator should see), and
    # succeeds again at its next tick (every 15 s): no unit is left failed.
    node.host.wait_for(lambda: not node.failed_units(), 40, interval=1, what="no failed unit")
    node.assert_healthy()
    return node.assert_audit()


def started(node: HostileNode, ids: list[str], count: int) -> Callable[[], bool]:
    wanted = set(ids)
    return lambda: sum(1 for r in node.agent_runs() if r["task_id"] in wanted) >= count


class Killers:
    """Three threads, each with its own seeded random source: SIGKILL of a fresh agent
    (its pid from the fake agent's own log), of a busy unit's `dispatch exec` (its main
    process), and of a running `dispatch promote` (the oneshot's process)."""

    def __init__(self, node: HostileNode, seed: int) -> None:
        self.node = node
        self.seed = seed
        self.kills: Counter[str] = Counter()
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._guard(f), daemon=True)
            for f in (self.agents, self.execs, self.promotes)
        ]
        self.errors: list[str] = []

    def _guard(self, target: Callable[[random.Random], None]) -> Callable[[], None]:
        def run() -> None:
            rng = random.Random(f"{self.seed}-{target.__name__}")
            try:
                target(rng)
            except Exception as exc:
                self.errors.append(f"{target.__name__}: {exc}")

        return run

    def sh(self, *argv: str) -> bool:
        return self.node.host.run(list(argv), check=False, timeout=30).returncode == 0

    def agents(self, rng: random.Random) -> None:
        seen: set[str] = set()
        while not self.stop.is_set():
            for run in self.node.agent_runs():
                if run["task_id"] in seen:
                    continue
                seen.add(str(run["task_id"]))
                if rng.random() < 0.3:
                    time.sleep(rng.uniform(0, 0.6))
                    if self.sh("kill", "-KILL", str(run["pid"])):
                        self.kills["agent"] += 1
            time.sleep(0.05)

    def execs(self, rng: random.Random) -> None:
        while not self.stop.wait(rng.uniform(0.2, 1.2)):
            units = self.node.busy_exec_units()
            if units and self.sh(
                "systemctl", "kill", "--kill-whom=main", "--signal=KILL", rng.choice(units)
            ):
                self.kills["exec"] += 1

    def promotes(self, rng: random.Random) -> None:
        # Now and then, whatever the promoter is doing (a pass, or its stay between passes).
        # Not every time it is seen running, as before the promoter stayed: that would kill
        # every promoter before some pass could end, and measure the killer, not recovery.
        while not self.stop.wait(rng.uniform(0.3, 2.0)):
            if (
                rng.random() < 0.5
                and self.node.unit_state(WATCH)[0] == "activating"
                and self.sh("systemctl", "kill", "--signal=KILL", WATCH)
            ):
                self.kills["promote"] += 1

    def __enter__(self) -> Killers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


@pytest.mark.parametrize("tasks", [30, pytest.param(200, marks=pytest.mark.long)])
def test_sigkill_agent_exec_and_promote_at_random(node: HostileNode, tasks: int) -> None:
    rng = random.Random(tasks)
    requests = [f"fault {i} sleep={rng.choice(['0', '0.3', '1', '2'])}" for i in range(tasks)]
    began = time.monotonic()
    with Killers(node, seed=tasks) as killers:
        sent = send_both(node, requests)
        results = all_results(node, sent, timeout=120 + 4 * tasks)
    elapsed = time.monotonic() - began
    assert not killers.errors, killers.errors
    statuses = Counter(r["status"] for r in results.values())
    assert set(statuses) <= FINAL, statuses
    # The faults really happened, and each kind left its mark.
    assert killers.kills["agent"] and killers.kills["exec"] and killers.kills["promote"], (
        killers.kills
    )
    assert statuses["killed"] and statuses["interrupted"], statuses
    runs = Counter(str(r["task_id"]) for r in node.agent_runs())
    ids = [task_id for batch in sent.values() for task_id in batch]
    assert max(runs[task_id] for task_id in ids) <= 1
    summary = settle(node)
    print(
        f"\n{tasks} tasks, kills {dict(killers.kills)}, results {dict(statuses)}, "
        f"{elapsed:.0f}s; {summary}"
    )


def test_systemd_reexecuted_mid_run(node: HostileNode) -> None:
    ids = node.send_many([f"reexec {i} sleep=2" for i in range(10)])
    node.host.wait_for(started(node, ids, 3), 60, interval=0.2, what="tasks running")
    node.host.systemctl("daemon-reexec")
    results = node.wait_results(ids, timeout=120)
    # Running units survive a re-executed manager: nothing is lost, nothing interrupted.
    assert {r["status"] for r in results.values()} == {"ok"}
    settle(node)


@pytest.mark.parametrize("how", ["reboot", "power-cut"])
def test_host_restarted_mid_run(node: HostileNode, how: str) -> None:
    ids = node.send_many([f"{how} {i} sleep=3" for i in range(10)])
    node.host.wait_for(started(node, ids, 4), 60, interval=0.2, what="tasks running")
    if how == "reboot":
        node.reboot()
    else:
        node.crash()
    results = node.wait_results(ids, timeout=180)
    statuses = Counter(r["status"] for r in results.values())
    # Those that were running end `interrupted`, never run again; the queued ones run.
    assert set(statuses) <= {"ok", "interrupted"} and statuses["interrupted"], statuses
    settle(node)


def test_share_unmounted_and_mounted_again(node: HostileNode) -> None:
    ids = node.send_many([f"unmount {i} sleep=2" for i in range(10)])
    node.host.wait_for(started(node, ids, 3), 60, interval=0.2, what="tasks running")
    node.host.run(["umount", "--lazy", ROOT])
    time.sleep(8)  # executions end while it is away; passes (from the timer) find no lane
    underneath = node.host.binds["/mnt/dispatch"] / "share"
    # Nothing was created on the local disk under the mount point.
    assert sorted(os.listdir(underneath)) == [], sorted(os.listdir(underneath))
    # The executions that ended meanwhile either kept their signed results on this host or,
    # holding their lane's directories open from before the (lazy) unmount, wrote them into
    # the share itself: either way each task ends with its one result once it is back.
    deferred = [n for n in node.outbox() if n.endswith(".json")]
    node.mount_share()
    results = node.wait_results(ids, timeout=180)
    statuses = Counter(r["status"] for r in results.values())
    assert set(statuses) <= FINAL, statuses
    settle(node)
    print(f"\nshare away for 8s: {len(deferred)} results deferred, then {dict(statuses)}")
