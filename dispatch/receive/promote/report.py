"""What one pass saw and did, and the context its steps share."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from dispatch.core import events
from dispatch.core.errors import Rejection, SigningFailed
from dispatch.core.model import Stage, Status
from dispatch.core.node import Node
from dispatch.core.spool import Lane
from dispatch.receive import publish
from dispatch.receive.launch import Launcher
from dispatch.receive.promote import junk


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
    # executions that had ended, their backend still cleaning up (Launcher.stopping)
    stopping: set[str] = field(default_factory=set)

    def include(self, earlier: PassReport) -> None:
        """Count what an earlier pass of the same round did in this, the last one's."""
        self.admitted += earlier.admitted
        self.rejected += earlier.rejected
        self.released += earlier.released
        self.recovered += earlier.recovered
        self.started = [*earlier.started, *self.started]


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
    # faults of entries this pass could not handle (kept); the others clear at its end
    failing: set[str] = field(default_factory=set)

    def fault(self, lane: Lane, directory: Path, name: str, exc: OSError) -> None:
        """One entry this pass could not handle (an unmovable file, a directory that
        refuses writes): recorded, counted and shown, and the pass goes on with the rest.
        Every pass tries it again."""
        key = f"{lane.name}/{lane.dir_name(directory)}/{name[:80]}"
        self._fault_once(
            lane,
            key,
            "entry_error",
            f"{exc.strerror or exc}",
            "entry_fault",
            f"{key}: {exc.strerror or exc}; the pass goes on, and tries it again",
        )

    def _fault_once(
        self,
        lane: Lane,
        key: str,
        kind: str,
        detail: str,
        event: str,
        message: str,
        task_id: str | None = None,
    ) -> None:
        """Record a fault this pass keeps (shown by `status`, cleared by the first pass
        without it) and tell the journal the first time only: every pass tries again."""
        fault = self.node.state.faults.record(key, kind, detail)
        self.failing.add(key)
        self.report.errors += 1
        if fault.count == 1:
            self.node.emit(
                event, message, task_id=task_id, from_=lane.from_, to=lane.to, level=events.ERR
            )

    def unsigned(self, lane: Lane, task_id: str | None, exc: SigningFailed) -> None:
        """A result or verdict the local signer did not sign: the task stays where it is,
        `dispatch status` shows why (a fault, cleared by the first pass that signs it), and
        the next pass tries again (the sensor is asked for one: no timer may come soon)."""
        self._fault_once(
            lane,
            f"{lane.name}/signer/{task_id or '-'}",
            "signer_unavailable",
            f"not signed: {exc}",
            "verdict_unsigned",
            f"{exc}; the task is left where it is for the next pass",
            task_id,
        )
        if os.environ.get("DISPATCH_SENSOR_LOOKED"):
            # A sensor node (dispatch-generator sets it): no timer comes soon, so ask the
            # sensor for another pass, as promote/settle.py does for a deferred result.
            from dispatch.receive import sensor

            sensor.want_again()

    def settle_faults(self, lanes: list[Lane]) -> None:
        """Entries that failed before and did not this time (handled, or gone) are cleared."""
        names = {lane.name for lane in lanes}
        for fault in self.node.state.faults.all():
            lane_name = fault.key.split("/", 1)[0]
            if lane_name in names and "/" in fault.key and fault.key not in self.failing:
                self.node.state.faults.clear(fault.key)

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
        # Signed before the id is claimed: when the signer does not sign, the entry stays
        # where it is, unclaimed, and the next pass answers it.
        signed = None
        if answer and exc.task_id and state.entry(exc.task_id) is None:
            why = f"{exc.reason}: {exc}"
            try:
                signed = publish.signed_verdict(
                    self.node, lane, exc.task_id, "", Status.REJECTED, why
                )
            except SigningFailed as failed:
                self.unsigned(lane, exc.task_id, failed)
                return
        answered = bool(signed and exc.task_id and state.claim(exc.task_id, "", lane.name) is None)
        if signed and answered and exc.task_id:
            state.mark(exc.task_id, Stage.REJECTED)
            publish.write_signed(self.node, lane, exc.task_id, signed)
        try:
            kept = lane.reject(name, exc, node=self.node.name, source=source)
        except FileNotFoundError:
            return
        if not answered:
            junk.note(self.node, lane, kept)  # bounded: see junk.trim
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
