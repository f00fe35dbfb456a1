"""The file server goes away mid-run and comes back: no task lost, none run twice, every result
delivered after recovery, clear errors meanwhile, no unit left failed."""

from __future__ import annotations

import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from tests.e2e.cluster import FORCED_WATCH_MODE, SHARE, Cluster, Node
from tests.e2e.conftest import ClusterFactory

Waited = Future[tuple[dict[str, Any], str]]


def _wait_bg(pool: ThreadPoolExecutor, node: Node, task_id: str) -> Waited:
    return pool.submit(node.wait_noting, task_id, 120)


def timer_mode() -> bool:
    """The nodes poll with the timer (DISPATCH_E2E_WATCH_MODE=timer), not the sensor."""
    return FORCED_WATCH_MODE.get("DISPATCH_WATCH_MODE") == "timer"


def _events(node: Node, task_id: str) -> list[str]:
    story = node.journal(f"DISPATCH_TASK_ID={task_id}", "-o", "json")
    return [e for line in story.splitlines() if (e := json.loads(line).get("DISPATCH_EVENT"))]


def _settled(cluster: Cluster) -> None:
    """After recovery every unit comes back by itself: nothing left failed on any host."""
    for node in cluster.nodes.values():
        node.wait_until(
            "no failed unit",
            lambda: not node.failed_units(),  # noqa: B023
            timeout=30,
        )
    assert cluster.leftovers() == {}


def test_file_server_dies_mid_run_and_returns(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster("a", "b", settings={"b": {"DISPATCH_MAX_PARALLEL": "1"}})
    a, b = cluster["a"], cluster["b"]
    # b runs one at a time: `second` waits in b's queue while `first` runs.
    first = a.send("b", "first sleep=6")
    second = a.send("b", "second sleep=1")
    back = b.send("a", "back sleep=6")
    with ThreadPoolExecutor(max_workers=3) as pool:
        # The senders wait across the whole outage.
        waits = {
            first: _wait_bg(pool, a, first),
            second: _wait_bg(pool, a, second),
            back: _wait_bg(pool, b, back),
        }
        b.wait_until("first running on b", lambda: b.ran(first) == 1)
        a.wait_until("back running on a", lambda: a.ran(back) == 1)
        # Admitted by the pass that started `first` or by the next (over sshfs the two
        # sends may land a second apart): queued, not run.
        b.wait_until(
            "second queued on b",
            lambda: f"{second}.json" in b.lane_files("a-to-b", "processing"),
            timeout=10,
        )
        assert b.ran(second) == 0

        down_at = time.monotonic()
        assert cluster.server.kill_sshd()
        # Meanwhile: clear one-line errors, and nothing hangs.
        refused = a.dispatch(
            "send", "--to", "b", "--request", "during the outage", check=False, timeout=30
        )
        assert refused.returncode == 2, refused
        assert refused.stderr.startswith("dispatch: ") and "Input/output error" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        # status fails closed: a killswitch it cannot read holds new executions.
        shown = a.dispatch("status", "--json", timeout=30, check=False)
        assert shown.returncode == 1 and "the shared root is unreachable" in shown.stderr, shown
        status = json.loads(shown.stdout)
        assert status["root_problem"], status
        assert status["killswitch"]["on"], status
        assert "Input/output error" in status["killswitch"]["reason"], status
        # Both executions end while the share is down, and the timers fire a few times.
        time.sleep(max(0.0, down_at + 9 - time.monotonic()))
        assert b.ran(second) == 0  # nothing new starts without the share
        watch_log = b.journal("-u", "dispatch-watch.service", "-o", "cat")
        if timer_mode():
            assert "Failed to set up mount namespacing" in watch_log, watch_log
        else:
            # The sensor's stats fail too (EIO reads as a change): the pass it kicks finds
            # the share unreachable, or cannot even set up its namespace.
            assert (
                "Failed to set up mount namespacing" in watch_log
                or "Input/output error" in watch_log
            ), watch_log

        cluster.server.start_sshd()  # the operator brings the server back; sshfs reconnects
        results = {task_id: future.result() for task_id, future in waits.items()}

    for task_id, (result, noted) in results.items():
        assert result["status"] == "ok", json.dumps(result)
        # `dispatch wait` said what it was waiting through, and rode it out.
        assert "Input/output error; still waiting for" in noted, (task_id, noted)
        assert "share reachable again" in noted, (task_id, noted)
    # The two executions that ended during the outage kept their results and published them
    # when the share came back, agent output included.
    for node, task_id, lane in ((b, first, "a-to-b"), (a, back, "b-to-a")):
        events = _events(node, task_id)
        assert events.count("exec_start") == 1, events
        for expected in ("log_write_failed", "result_deferred", "result_published"):
            assert expected in events, (node.name, events)
        log = node.run(["cat", f"{SHARE}/{lane}/done/{task_id}.log"]).stdout
        assert '"type": "result"' in log and "status=ok" in log, log
    # Ran exactly once each, on the right host; nothing else ran.
    assert sorted(r["task_id"] for r in b.agent_runs()) == sorted([first, second])
    assert [r["task_id"] for r in a.agent_runs()] == [back]
    _settled(cluster)
    # The send refused during the outage left nothing behind; a new one goes through.
    after = a.send("b", "after the outage")
    assert a.wait(after)["status"] == "ok"
    assert b.ran(after) == 1
    assert b.lane_files("a-to-b", "rejected") == []


def test_network_cut_to_one_host_hangs_nothing(make_cluster: ClusterFactory) -> None:
    cluster = make_cluster("a", "b")
    a, b = cluster["a"], cluster["b"]
    running = a.send("b", "through the cut sleep=5")
    b.wait_until("running on b", lambda: b.ran(running) == 1)
    cluster.server.set_link("b", up=False)  # b's packets now vanish: its mount hangs
    cut_at = time.monotonic()
    try:
        # a, whose link is fine, keeps working: it sends into b's inbox on the share.
        queued = a.send("b", "sent during the cut")
        assert a.status()["killswitch"]["on"] is False
        # On b a command that touches the share gives up with a clear error, in bounded time
        # (sshfs: ServerAlive, ConnectTimeout), instead of hanging.
        began = time.monotonic()
        cut_off = b.dispatch("result", running, check=False, timeout=60)
        assert time.monotonic() - began < 20, "a command on the cut-off host hung"
        assert cut_off.returncode != 0 and "Traceback" not in cut_off.stderr, cut_off
        time.sleep(max(0.0, cut_at + 10 - time.monotonic()))
        assert b.ran(queued) == 0
    finally:
        cluster.server.set_link("b", up=True)
    for task_id in (running, queued):
        result = a.wait(task_id, timeout=90)
        assert result["status"] == "ok", json.dumps(result)
        assert b.ran(task_id) == 1
    # sshfs may hold the executor's writes until the link is back instead of failing them
    # (seen with the sensor's stats in flight, and with the timer alone): then the cut is
    # not felt at all. Either way the task ran once and its one result arrived (above); the
    # server's outage above is where a failed write must be deferred.
    events = _events(b, running)
    assert events.count("exec_end") == 1, events
    _settled(cluster)
