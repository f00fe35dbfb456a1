"""The measurements. Each one starts the system it measures, is bounded in time, and leaves
the system stopped and its lane empty."""

from __future__ import annotations

import itertools
import math
import os
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from bench.common import BenchError, log, percentile, read_jsonl
from bench.systems import System, wait_results
from tests.integration.sdhost import wait_for


@dataclass
class Latency:
    n: int
    to_agent: list[float] = field(default_factory=list)
    to_result: list[float] = field(default_factory=list)
    send_cli: list[float] = field(default_factory=list)
    sources: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "agent_p50": percentile(self.to_agent, 50),
            "agent_p99": percentile(self.to_agent, 99),
            "result_p50": percentile(self.to_result, 50),
            "result_p99": percentile(self.to_result, 99),
            "send_cli_p50": percentile(self.send_cli, 50),
            "send_time_source": self.sources,
            "to_agent": self.to_agent,
            "to_result": self.to_result,
        }


def agent_start(system: System, request: str, timeout: float = 10) -> float:
    def find() -> float:
        for row in read_jsonl(system.agent_log):
            if row.get("request") == request:
                return float(row["at"])
        return 0.0

    return wait_for(find, timeout, 0.02, f"the agent's start record for {request!r}")


# A latency sample this slow (the original's poll is 3 s) is worth its receiver's journal.
SLOW_SAMPLE_S = 4.0


def latency(
    system: System,
    n: int,
    poll_sec: int,
    seed: int,
    timeout: float = 60,
    quiet_s: float = 0.0,
) -> Latency:
    """Sequential sends, each after a random pause in [0, poll_sec) (the same pauses for
    both systems), so a poller's phase is sampled evenly rather than locked to the sends.
    With `quiet_s`, each pause is that much longer: the first task after a quiet spell
    (dispatch-sensor looks less often once nothing changed for a while)."""
    rng = random.Random(seed)
    out = Latency(n)
    system.start(cap=2, agent="fake-agent", poll_sec=poll_sec)
    # Past the start-up passes (the units' first timer pass, the heartbeat, a daemon-reload's
    # generator), as bench.hops and the idle figure wait, so no sample shares the cores with
    # them. The first sample is still a task reaching an idle node (no promoter staying, no
    # signer running: 406 ms against at most 191 for the rest in session 8's run, where this
    # wait did not change it); the quiet figure (quiet_s) measures that case on purpose.
    time.sleep(poll_sec + 2)
    try:
        for i in range(n):
            time.sleep(quiet_s + rng.uniform(0, poll_sec))
            request = f"bench latency {i} {uuid.uuid4().hex[:12]}"
            began = time.time()
            sent = system.send(request)
            out.send_cli.append(time.time() - began)
            found = wait_results(system.lane, {sent.task_id}, timeout, interval=0.005)
            if sent.task_id not in found:
                raise BenchError(f"{system.name}: no result for {sent.task_id} in {timeout}s")
            out.to_result.append(found[sent.task_id] - sent.sent_at)
            out.to_agent.append(agent_start(system, request) - sent.sent_at)
            if out.to_agent[-1] > SLOW_SAMPLE_S:
                # Far beyond the rest: say why (the figure's p99 is this sample).
                log(f"  {system.name}: task {sent.task_id} took {out.to_agent[-1]:.2f} s; journal:")
                for line in system.journal_since(sent.sent_at):
                    log(f"    {line}")
            out.sources[sent.source] = out.sources.get(sent.source, 0) + 1
    finally:
        system.stop()
        system.reset()
    log(
        f"  {system.name} @ {system.site.label}: send→agent p50 "
        f"{percentile(out.to_agent, 50):.3f}s, send→result p50 "
        f"{percentile(out.to_result, 50):.3f}s (n={n})"
    )
    return out


@dataclass
class Throughput:
    n: int
    cap: int
    completed: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.completed / self.seconds if self.seconds > 0 else math.nan

    def summary(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "cap": self.cap,
            "completed": self.completed,
            "seconds": self.seconds,
            "tasks_per_s": self.per_second,
        }


# A burst whose results pause this long while tasks wait is stuck, not slow: the receiver's
# promoter journal of the figure goes into the bench's log, so that a run explains itself.
STALL_S = 10.0


def throughput(system: System, n: int, cap: int, poll_sec: int, timeout: float = 600) -> Throughput:
    """A burst of n tasks from one sending process (no-op agent): tasks per second from the
    first task's `created` to the last result seen in done/."""
    system.start(cap=cap, agent="noop-agent", poll_sec=poll_sec)
    began = time.time()
    try:
        sent = system.send_batch(n, f"bench burst {uuid.uuid4().hex[:12]}")
        ids = {s.task_id for s in sent}
        found = wait_results(system.lane, ids, timeout)
        if len(found) < n:
            raise BenchError(f"{system.name}: {len(found)}/{n} results within {timeout}s")
        first = min(s.sent_at for s in sent)
        result = Throughput(n, cap, len(found), max(found.values()) - first)
        times = sorted([first, *found.values()])
        gap = max(b - a for a, b in itertools.pairwise(times))
        if gap > STALL_S:
            log(f"  {system.name}: no result for {gap:.1f} s in the burst; its receiver's journal:")
            for line in system.journal_since(began):
                log(f"    {line}")
    finally:
        system.stop()
        system.reset()
    log(
        f"  {system.name} @ {system.site.label}: cap {cap}: {result.per_second:.2f} tasks/s "
        f"({n} in {result.seconds:.1f}s)"
    )
    return result


@dataclass
class Drain:
    n: int
    seconds: float  # measured, or extrapolated when `completed` < n
    completed: int
    window: float | None
    queue_seconds: float

    @property
    def extrapolated(self) -> bool:
        return self.completed < self.n

    def summary(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "seconds": self.seconds,
            "completed": self.completed,
            "extrapolated": self.extrapolated,
            "window_s": self.window,
            "queue_seconds": self.queue_seconds,
        }


def _queued(system: System, n: int) -> bool:
    try:
        inbox = [x for x in os.listdir(system.lane / "inbox") if not x.endswith(".tmp")]
        processing = [x for x in os.listdir(system.lane / "processing") if x.endswith(".json")]
    except FileNotFoundError:
        return False
    return not inbox and len(processing) >= n


def drain(
    system: System, n: int, poll_sec: int, window: float | None = None, timeout: float = 1200
) -> Drain:
    """Queue n tasks while held (killswitch on), release, time until all n results exist.
    With `window`, stop after that many seconds and extrapolate linearly from the results
    seen (for a system too slow to drain within the bench's time budget)."""
    began = time.time()
    system.hold()
    try:
        system.start(cap=2, agent="noop-agent", poll_sec=poll_sec)
        sent = system.send_batch(n, f"bench drain {uuid.uuid4().hex[:12]}")
        wait_for(
            lambda: _queued(system, n),
            max(60.0, n * 0.2),
            0.1,
            f"{n} tasks queued in {system.name}'s processing/",
        )
        queued_in = time.time() - began
        ids = {s.task_id for s in sent}
        released = time.time()
        system.release()
        found = wait_results(system.lane, ids, window or timeout, interval=0.05)
        if not found:
            raise BenchError(f"{system.name}: no result at all within {window or timeout}s")
        elapsed = max(found.values()) - released
        if len(found) < n and window is None:
            raise BenchError(f"{system.name}: {len(found)}/{n} results within {timeout}s")
        seconds = elapsed * n / len(found)
    finally:
        system.release()
        system.stop()
        system.reset()
    result = Drain(n, seconds, len(found), window if len(found) < n else None, queued_in)
    note = f" (extrapolated from {len(found)} in {elapsed:.0f}s)" if result.extrapolated else ""
    log(f"  {system.name} @ {system.site.label}: drain {n}: {seconds:.1f}s{note}")
    return result
