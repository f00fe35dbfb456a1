"""Load: two senders send at once to one node under the real units, cap 4, a no-op agent.
None lost, none duplicated, and the cap never exceeded as systemd itself lists the
executions, sampled in a thread throughout. Prints the total time and per-task overhead
(figures from real runs are in README.md)."""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime

import pytest

from tests.hostile.harness import (
    HostileNode,
    Sampler,
    all_results,
    new_host,
    send_both,
)

CAP = 4


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileNode]:
    host = new_host("gpubox", tmp_path_factory.mktemp("hostile-load"))
    try:
        host.start()
        hostile = HostileNode(host)
        hostile.setup(timer=True, settings={"DISPATCH_MAX_PARALLEL": str(CAP)})
        yield hostile
    finally:
        host.poweroff()


def seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


@pytest.mark.parametrize("tasks", [200, pytest.param(2000, marks=pytest.mark.long)])
def test_two_senders_at_once_cap_four(node: HostileNode, tasks: int) -> None:
    requests = [f"load {i}" for i in range(tasks)]
    began, began_wall = time.monotonic(), time.time()
    with Sampler(node) as sampler:
        sent = send_both(node, requests)
        sent_s = time.monotonic() - began
        results = all_results(node, sent, timeout=120 + 2.0 * tasks)
        total_s = time.monotonic() - began
    ids = [task_id for batch in sent.values() for task_id in batch]
    assert len(ids) == len(set(ids)) == tasks
    # None lost: every task has its result, and it is ok.
    assert len(results) == tasks
    assert Counter(r["status"] for r in results.values()) == {"ok": tasks}
    # None duplicated: the agent ran each exactly once.
    runs = Counter(str(r["task_id"]) for r in node.agent_runs())
    assert all(runs[task_id] == 1 for task_id in ids), [t for t in ids if runs[t] != 1][:5]
    # The cap, as systemd saw it, never exceeded, and reached.
    assert not sampler.errors, sampler.errors[:3]
    assert len(sampler.samples) > 50, len(sampler.samples)
    assert max(sampler.samples) <= CAP, Counter(sampler.samples)
    assert max(sampler.samples) == CAP, Counter(sampler.samples)
    summary = node.assert_audit()

    agent_s = statistics.mean(r["elapsed_s"] for r in results.values())
    unit_s = statistics.mean(
        seconds(r["answered_at"]) - seconds(r["started_at"]) for r in results.values()
    )
    figures = {
        "tasks": tasks,
        "senders": len(sent),
        "cap": CAP,
        "send_s": round(sent_s, 1),
        "total_s": round(total_s, 1),
        "throughput_per_s": round(tasks / total_s, 2),
        # Wall time each task holds one of the CAP slots, beyond what its agent took.
        "overhead_per_task_s": round(total_s * CAP / tasks - agent_s, 3),
        "agent_mean_s": round(agent_s, 3),
        "exec_mean_s": round(unit_s, 3),
        # Until the first execution started: the first passes take the envelopes in.
        "first_start_s": round(
            min(seconds(r["started_at"]) for r in results.values()) - began_wall, 1
        ),
        "samples": len(sampler.samples),
        "busy_units_seen": dict(sorted(Counter(sampler.samples).items())),
    }
    print(f"\nload: {json.dumps(figures)}\n{summary}")
