"""What one pass saw and did, and the context its steps share."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from dispatch.core import events
from dispatch.core.errors import Rejection
from dispatch.core.model import Stage, Status
from dispatch.core.node import Node
from dispatch.core.spool import Lane
from dispatch.receive import publish
from dispatch.receive.launch import Launcher


@dataclass
class PassReport:
    admitted: int = 0
    rejected: int = 0
    released: int = 0
    recovered: int = 0
    pending_ack: int = 0
    queued: list[str] = field(default_factory=list)
    running: set[str] = field(default_factory=set)
    started: list[str] = field(default_factory=list)
    errors: int = 0
    # lane/name of every inbox entry this pass looked at, moved or not
    seen: set[str] = field(default_factory=set)


@dataclass
class Pass:
    """One pass's working set: the steps (admission, acks, recovery, cancels, queue) read
    and add to it in order, and the report is what the pass returns."""

    node: Node
    launcher: Launcher
    report: PassReport = field(default_factory=PassReport)
    # lane of every task found queued this pass (to index one a crash left unindexed)
    lane_of: dict[str, Lane] = field(default_factory=dict)
    # tasks whose execution ended with a result the share refused (still in outbox/)
    deferred: set[str] = field(default_factory=set)

    def refuse(
        self,
        lane: Lane,
        name: str,
        exc: Rejection,
        *,
        answer: bool = False,
        source: Path | None = None,
    ) -> None:
        """Quarantine an entry with its reason; answer the sender when it named its id."""
        state = self.node.state
        # Only an id this node never saw gets a `rejected` result: a replayed id belongs to an
        # earlier task, whose one result must stand alone. The result is written before the
        # file moves: a sender's `wait` that sees it in rejected/ must find the result too.
        if answer and exc.task_id and state.claim(exc.task_id, "", lane.name) is None:
            state.mark(exc.task_id, Stage.REJECTED)
            publish.verdict(
                self.node, lane, exc.task_id, "", Status.REJECTED, f"{exc.reason}: {exc}"
            )
        try:
            lane.reject(name, exc, node=self.node.name, source=source)
        except FileNotFoundError:
            return
        self.report.rejected += 1
        self.node.emit(
            "task_rejected",
            f"{name[:80]}: {exc.reason}: {exc}",
            task_id=exc.task_id,
            from_=lane.from_,
            to=lane.to,
            reason=exc.reason,
            level=events.WARNING,
        )


def summary(report: PassReport) -> str:
    return json.dumps(
        {
            "admitted": report.admitted,
            "rejected": report.rejected,
            "released": report.released,
            "recovered": report.recovered,
            "pending_ack": report.pending_ack,
            "queued": len(report.queued),
            "running": len(report.running),
            "started": report.started,
            "errors": report.errors,
        }
    )
