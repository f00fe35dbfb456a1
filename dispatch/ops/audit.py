"""`dispatch audit`: check the invariants on what a root and the nodes' state show.

Reads a whole shared root (every lane directory in it), the node-local state of one or more
receiving nodes (replay ledger, deferred results) and, when given, agent execution logs (one
JSON line per run with its `task_id`, as the tests' fake agent writes them), and reports
every way they break the invariants of docs/design.md:

- every task id is in one place: one live stage (inbox, pending-ack, processing) of one lane,
  or its one result; never a result beside a rejection of the same task;
- no id ran twice, and nothing ran that was refused or never admitted;
- every verified task has a result (or is still on its way), and every result verifies;
- nothing is lost: every id the ledger saw has a trace, every rejected file its reason.

With `settled`, the root is expected at rest: nothing left in inbox/ or processing/ and no
result still waiting in a node's outbox (tasks waiting for an ack are at rest).
Nothing here writes anything."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dispatch.core.model import Stage, Status
from dispatch.core.signing import NodeKeys
from dispatch.ops.audit_scan import (
    LaneScan,
    LedgerSeen,
    find_lanes,
    read_agent_logs,
    read_state,
    scan_lane,
)

# Refusals of a second copy of a task that was placed already: they are traces of the
# copy, not a second outcome of the task.
DUPLICATE_REASONS = frozenset({"replay", "not_admitted"})


@dataclass(frozen=True)
class Violation:
    kind: str
    task_id: str
    lane: str
    detail: str

    def line(self) -> str:
        return f"{self.kind} {self.task_id or '-'} {self.lane or '-'}: {self.detail}"

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "id": self.task_id, "lane": self.lane, "detail": self.detail}


@dataclass
class AuditReport:
    violations: list[Violation] = field(default_factory=list)
    lanes: list[str] = field(default_factory=list)
    tasks: int = 0
    results: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    rejected: int = 0
    in_flight: int = 0
    pending_ack: int = 0
    deferred: int = 0
    executions: int = 0
    verified: bool = False

    @property
    def ok(self) -> bool:
        return not self.violations

    def add(self, kind: str, task_id: str, lane: str, detail: str) -> None:
        self.violations.append(Violation(kind, task_id, lane, detail))

    def summary(self) -> str:
        return (
            f"{len(self.lanes)} lanes, {self.tasks} task ids, {self.results} results "
            f"{dict(sorted(self.statuses.items()))}, {self.rejected} rejected files, "
            f"{self.in_flight} in flight, {self.pending_ack} waiting for an ack, "
            f"{self.deferred} deferred, {self.executions} executions"
            + ("" if self.verified else ", result signatures not checked (no key)")
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "violations": [v.to_json() for v in self.violations],
            "lanes": self.lanes,
            "tasks": self.tasks,
            "results": self.results,
            "statuses": self.statuses,
            "rejected": self.rejected,
            "in_flight": self.in_flight,
            "pending_ack": self.pending_ack,
            "deferred": self.deferred,
            "executions": self.executions,
            "signatures_checked": self.verified,
        }


ADMITTED = (Stage.PENDING_ACK, Stage.QUEUED, Stage.RUNNING, Stage.DONE)
# Where the ledger's live stages keep their file.
LEDGER_HOME = {
    Stage.PENDING_ACK: "pending-ack",
    Stage.QUEUED: "processing",
    Stage.RUNNING: "processing",
}


def audit(
    root: Path,
    *,
    state_dirs: list[Path] | None = None,
    agent_logs: list[Path] | None = None,
    ring: NodeKeys | None = None,
    settled: bool = False,
) -> AuditReport:
    report = AuditReport(verified=ring is not None)
    lanes = [scan_lane(name, path, ring, report) for name, path in find_lanes(root)]
    report.lanes = [lane.name for lane in lanes]
    ledger, deferred = read_state(state_dirs or [])
    runs = read_agent_logs(agent_logs or [], report)
    report.executions = sum(runs.values())
    report.deferred = len(deferred)

    # Where each id is, over all lanes.
    ids: set[str] = set(ledger) | set(runs) | set(deferred)
    for lane in lanes:
        ids |= set(lane.live) | set(lane.results) | set(lane.refusals)
        if settled:
            for stage in ("inbox", "processing"):
                for entry in lane.junk.get(stage, []):
                    report.add(
                        "unfinished",
                        "",
                        lane.name,
                        f"{stage}/{entry[:80]!r} is still there: it was never taken in",
                    )
    report.tasks = len(ids)
    for task_id in sorted(ids):
        _check_id(
            task_id,
            lanes,
            ledger.get(task_id, []),
            deferred.get(task_id),
            runs.get(task_id, 0),
            bool(state_dirs),
            settled,
            report,
        )
    return report


def _check_id(
    task_id: str,
    lanes: list[LaneScan],
    entries: list[LedgerSeen],
    deferred: str | None,
    ran: int,
    have_state: bool,
    settled: bool,
    report: AuditReport,
) -> None:
    live = [(lane.name, stage) for lane in lanes for stage in lane.live.get(task_id, [])]
    results = [(lane.name, lane.results[task_id]) for lane in lanes if task_id in lane.results]
    refusals = [(lane.name, reason) for lane in lanes for reason in lane.refusals.get(task_id, [])]
    where = ", ".join([f"{n}/{s}" for n, s in live] + [f"{n}/done" for n, _ in results])
    report.results += len(results)
    for _, status in results:
        report.statuses[status or "unverified"] = report.statuses.get(status or "unverified", 0) + 1
    report.in_flight += sum(1 for _, stage in live if stage != "pending-ack")
    report.pending_ack += sum(1 for _, stage in live if stage == "pending-ack")

    # One place: one live stage of one lane, or one result (a result beside its task file
    # in processing/ is an execution between publishing and cleaning up).
    if len(live) > 1:
        report.add("several_places", task_id, live[0][0], f"in {len(live)} places: {where}")
    if len(results) > 1:
        report.add("several_results", task_id, results[0][0], f"results in {where}")
    if settled and live and results:
        report.add("several_places", task_id, live[0][0], f"has a result and is still in {where}")
    statuses = {status for _, status in results}
    ended = statuses - {Status.REJECTED.value, ""}
    # A refusal in the lane of a result that is not `rejected` (a copy refused in another
    # lane, or a refused replay, is a trace of the copy, not a second outcome).
    ended_in = {n for n, status in results if status in ended}
    task_refusals = [(n, r) for n, r in refusals if r not in DUPLICATE_REASONS and n in ended_in]
    if task_refusals:
        report.add(
            "terminal_conflict",
            task_id,
            task_refusals[0][0],
            f"ended {'/'.join(sorted(ended))} and was also refused "
            f"({', '.join(r for _, r in task_refusals)})",
        )
    stages = {entry.stage for entry in entries}
    if Stage.REJECTED in stages and ended:
        report.add(
            "terminal_conflict",
            task_id,
            results[0][0],
            f"the ledger says rejected, its result says {'/'.join(sorted(ended))}",
        )

    # Executions: at most one, and only of an admitted task.
    if ran > 1:
        report.add("executed_twice", task_id, "", f"the agent ran {ran} times")
    if ran:
        if Status.REJECTED.value in statuses:
            report.add(
                "ran_unadmitted", task_id, "", "the agent ran a task whose result says rejected"
            )
        elif have_state and None not in stages and not stages & set(ADMITTED):
            seen = ", ".join(sorted(str(p) for p in stages if p)) or "none"
            report.add(
                "ran_unadmitted",
                task_id,
                "",
                f"the agent ran a task no node admitted (ledger: {seen})",
            )

    # Every admitted task ends with a result, or is still on its way to one.
    admitted = [entry for entry in entries if entry.stage in ADMITTED]
    lane_names = (
        {entry.lane for entry in entries}
        | {n for n, _ in live}
        | {n for n, _ in results}
        | {n for n, _ in refusals}
    )
    if admitted and not results and not live and deferred is None:
        report.add(
            "no_result",
            task_id,
            admitted[0].lane,
            f"admitted ({admitted[0].stage}), not in any stage, and no result",
        )
    elif entries and not (live or results or refusals or deferred is not None):
        report.add(
            "lost",
            task_id,
            next(iter(sorted(lane_names)), ""),
            "the ledger saw it, and no lane holds a trace of it",
        )
    if deferred is not None and settled and not results:
        report.add("unpublished", task_id, deferred, "its result still waits in the node's outbox")
    if settled:
        for name, stage in live:
            if stage != "pending-ack":
                report.add("unfinished", task_id, name, f"still in {stage}/")
        # Local state is the only truth: at rest, a task file sits where its ledger says.
        for entry in entries:
            home = LEDGER_HOME.get(entry.stage) if entry.stage is not None else None
            for name, stage in live:
                if home is not None and name == entry.lane and stage != home:
                    report.add(
                        "stage_mismatch",
                        task_id,
                        name,
                        f"in {stage}/, and the ledger says {entry.stage}",
                    )
    if ran and not have_state and not (live or results or refusals or deferred is not None):
        report.add("ran_unadmitted", task_id, "", "the agent ran it, and no lane knows it")
    elif ran and not have_state and refusals and not (live or results or deferred is not None):
        report.add("ran_unadmitted", task_id, "", "the agent ran it, and its lane only refused it")
    if None in stages:
        report.add("torn_ledger", task_id, "", "a ledger entry for it is unreadable")
