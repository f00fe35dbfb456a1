"""The follow loop's guards, against a scripted agent (the real ones: a child process in
test_executor/test_supervise, a Slurm job in tests/slurm): the deadline, the stall clock, a
recorded cancel for an agent the unit's stop does not reach, a stop signal, detaching, giving
up, and an agent that ended before any guard acted is concluded from how it ended."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from dispatch.core.node import Node
from dispatch.receive.follow import Ending, Phase, StopSignals, follow
from dispatch.receive.output import ShareLog
from tests.conftest import Pair
from tests.unit.helpers import configure


class Scripted:
    """Runs until asked to end (then ends on the next poll, unless `deaf`)."""

    def __init__(self, *, started: bool = True, polls_cancel: bool = False) -> None:
        self.last_output: float | None = time.monotonic() if started else None
        self.polls_cancel = polls_cancel
        self.ended_at_once = False
        self.deaf = False
        self.detaches = False
        self.give_up_after: float | None = None
        self.ends: list[float] = []
        self.polls = 0
        self.on_poll: Callable[[int], None] = lambda polls: None

    def poll(self, now: float) -> Phase:
        self.polls += 1
        self.on_poll(self.polls)
        if self.ended_at_once or (self.ends and not self.deaf):
            return Phase.ENDED
        return Phase.RUNNING

    def end(self, now: float) -> None:
        self.ends.append(now)

    def gave_up(self, now: float) -> bool:
        return (
            bool(self.ends)
            and self.give_up_after is not None
            and (now - self.ends[0] > self.give_up_after)
        )

    def detach(self) -> bool:
        return self.detaches

    def wait(self, wake_in: float) -> None:
        time.sleep(min(wake_in, 0.05))


def run(node: Node, agent: Scripted, tmp_path: Path, deadline_in: float) -> Ending | None:
    task_id = str(uuid.uuid4())
    stop = StopSignals()
    try:
        return follow(
            node,
            task_id,
            agent,
            stop,
            time.monotonic() + deadline_in,
            ShareLog(node, task_id, tmp_path / "log"),
        )
    finally:
        stop.close()


def test_an_agent_that_already_ended_is_concluded_from_how_it_ended(
    pair: Pair, tmp_path: Path
) -> None:
    agent = Scripted()
    agent.ended_at_once = True
    # Deadline long past (a job that ended while no executor watched): no guard fires.
    assert run(pair.receiver.node(), agent, tmp_path, -100) == Ending(False, False, 0)
    assert agent.ends == []


def test_the_deadline_ends_a_silent_agent(pair: Pair, tmp_path: Path) -> None:
    configure(pair.receiver, DISPATCH_STALL_S=0)
    agent = Scripted()
    began = time.monotonic()
    assert run(pair.receiver.node(), agent, tmp_path, 0.3) == Ending(True, False, 0)
    assert len(agent.ends) == 1 and agent.ends[0] - began >= 0.3


def test_the_stall_clock_runs_from_the_last_output_and_only_once_started(
    pair: Pair, tmp_path: Path
) -> None:
    configure(pair.receiver, DISPATCH_STALL_S=1)
    node = pair.receiver.node()
    agent = Scripted()
    began = time.monotonic()
    assert run(node, agent, tmp_path, 60) == Ending(False, True, 0)
    assert 1.0 <= agent.ends[0] - began < 5
    # Not started (a pending job): silent by nature, only the deadline holds.
    pending = Scripted(started=False)
    assert run(node, pending, tmp_path, 1.5) == Ending(True, False, 0)


def test_a_recorded_cancel_ends_only_an_agent_that_polls_for_it(pair: Pair, tmp_path: Path) -> None:
    configure(pair.receiver, DISPATCH_STALL_S=0)
    node = pair.receiver.node()
    task_id = str(uuid.uuid4())
    node.state.request_cancel(task_id, "cancelled by devbox")
    for polls_cancel, not_before in ((True, 0.0), (False, 1.0)):
        agent = Scripted(polls_cancel=polls_cancel)
        stop = StopSignals()
        began = time.monotonic()
        try:
            ending = follow(
                node, task_id, agent, stop, began + 1.0, ShareLog(node, task_id, tmp_path / "l")
            )
        finally:
            stop.close()
        # Polled: ended at once, no guard named. Not polled: it runs to its deadline.
        assert ending == Ending(not polls_cancel, False, 0)
        assert not_before <= agent.ends[0] - began < not_before + 3


def test_a_stop_signal_ends_it_or_detaches_it(pair: Pair, tmp_path: Path) -> None:
    node = pair.receiver.node()
    agent = Scripted()
    agent.on_poll = lambda polls: os.kill(os.getpid(), signal.SIGTERM) if polls == 2 else None
    assert run(node, agent, tmp_path, 60) == Ending(False, False, signal.SIGTERM)
    assert len(agent.ends) == 1
    detached = Scripted()
    detached.detaches = True
    detached.on_poll = agent.on_poll
    assert run(node, detached, tmp_path, 60) is None
    assert detached.ends == []


def test_an_agent_that_never_confirms_its_end_is_given_up_on(pair: Pair, tmp_path: Path) -> None:
    configure(pair.receiver, DISPATCH_STALL_S=0)
    agent = Scripted()
    agent.deaf = True
    agent.give_up_after = 0.3
    assert run(pair.receiver.node(), agent, tmp_path, 0.1) == Ending(True, False, 0)
    # Asked on every pass while it should end: the backend decides how often it acts.
    assert len(agent.ends) > 2 and agent.ends[-1] - agent.ends[0] > 0.3
