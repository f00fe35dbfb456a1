"""The promoter's linger over a backlog: a slot freed while another execution was still
stopping is refilled when it frees, not at the next file event."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

from dispatch.receive.promote.settle import settle
from tests.conftest import Pair
from tests.unit.helpers import configure, drop, envelope, lane_in

# Per start, in order: (seconds until its task file goes, seconds until its unit is gone).
# The second execution ends while the first is still stopping; the third runs long.
TIMELINE = ((0.05, 0.15), (0.12, 0.25), (0.9, 1.0), (0.05, 0.1))


class StoppingSlowly:
    """A launcher whose executions remove their task file a moment before their unit goes,
    as a dispatch-exec@ unit does (the executor exits, then ExecStopPost= runs)."""

    def __init__(self, pair: Pair) -> None:
        self.lane = lane_in(pair)
        self.began = time.monotonic()
        self.gone_at: dict[str, float] = {}
        self.order: list[str] = []
        # for each start: the ids whose task file was still in processing/ at that moment
        self.files_at_start: list[set[str]] = []
        self.threads: list[threading.Thread] = []

    def running(self) -> set[str]:
        now = time.monotonic()
        return {task_id for task_id, gone in self.gone_at.items() if gone > now}

    def stopping(self) -> set[str]:
        return set()

    def start(self, task_id: str) -> None:
        file_after, gone_after = TIMELINE[len(self.order)]
        self.files_at_start.append(
            {t for t in self.order if (self.lane.processing / self.lane.task_name(t)).exists()}
        )
        self.order.append(task_id)
        self.gone_at[task_id] = time.monotonic() + gone_after
        path = self.lane.processing / self.lane.task_name(task_id)
        timer = threading.Timer(file_after, lambda: path.unlink(missing_ok=True))
        timer.start()
        self.threads.append(timer)

    def stop(self, task_id: str) -> None:
        self.gone_at[task_id] = 0.0

    def resume(self, task_id: str, marker: Mapping[str, object]) -> bool:
        return False

    def unit(self, task_id: str) -> str:
        return f"fake@{task_id}"


def test_a_slot_freed_while_another_unit_stops_is_refilled_at_once(pair: Pair) -> None:
    configure(pair.receiver, DISPATCH_MAX_PARALLEL=2, DISPATCH_POLL_SEC=3)
    lane = lane_in(pair)
    for i in range(len(TIMELINE)):
        drop(lane, envelope(pair, request=f"backlog {i}"))
    launcher = StoppingSlowly(pair)
    try:
        settle(pair.receiver.node(), launcher, linger=True)
    finally:
        for thread in launcher.threads:
            thread.join()
    assert len(launcher.order) == len(TIMELINE)
    first, second, third, _fourth = launcher.order
    # The fourth started into the second's slot as soon as that unit went, while the long
    # third still ran: not when the third's end (the next file event) came round.
    assert third in launcher.files_at_start[3], launcher.files_at_start
    assert first not in launcher.files_at_start[3] and second not in launcher.files_at_start[3]
