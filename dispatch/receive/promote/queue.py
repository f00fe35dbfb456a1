"""The queue: its order (high before normal before low, oldest first, from an index in
node-local state) and the one start-up-to-cap that the full pass and the refill share."""

from __future__ import annotations

from dispatch.core import events
from dispatch.core.errors import Rejection
from dispatch.core.fsio import read_regular
from dispatch.core.model import Envelope, Priority
from dispatch.core.node import Node
from dispatch.core.state import NodeState, parse_index
from dispatch.core.wire import loads_strict
from dispatch.receive.launch import Launcher
from dispatch.receive.promote.report import Pass, PassReport


def index(state: NodeState, envelope: Envelope) -> None:
    lane = f"{envelope.from_}-to-{envelope.to}"
    state.index_add(envelope.id, envelope.priority.rank, envelope.created, lane)


def order(run: Pass, queued: list[str]) -> list[tuple[str, str]]:
    """(task id, index entry) of the queued tasks, in start order. A task missing from the
    index (a crash between rename and index) is read and indexed; stale entries go."""
    state = run.node.state
    names = state.index_names()
    indexed: dict[str, str] = {}
    for name in names:
        parsed = parse_index(name)
        if parsed is None:
            state.index_remove(name)
            continue
        indexed[parsed[0]] = name
    wanted = set(queued)
    for task_id, name in indexed.items():
        if task_id not in wanted:
            state.index_remove(name)
    for task_id in queued:
        if task_id not in indexed:
            lane = run.lane_of[task_id]
            try:
                obj = loads_strict(read_regular(lane.processing / lane.task_name(task_id)))
                rank = Priority(str(obj.get("priority"))).rank
                created = str(obj.get("created", ""))
            except (Rejection, OSError, ValueError):
                rank, created = Priority.NORMAL.rank, ""
            state.index_add(task_id, rank, created, lane.name)
            indexed[task_id] = ""
    if any(not name for name in indexed.values()):
        names = state.index_names()
    return [
        (parsed[0], name)
        for name in names
        if (parsed := parse_index(name)) is not None and parsed[0] in wanted
    ]


def start_up_to_cap(
    node: Node,
    launcher: Launcher,
    report: PassReport,
    ordered: list[tuple[str, str]],
    slots: int,
) -> None:
    """Start tasks in order into `slots` free slots. A start that fails leaves its task
    queued for the next pass."""
    for task_id, index_name in ordered:
        if slots <= 0:
            return
        try:
            launcher.start(task_id)
        except Exception as exc:
            node.emit(
                "start_failed",
                f"cannot start execution: {exc}",
                task_id=task_id,
                level=events.ERR,
            )
            report.errors += 1
            continue
        node.state.index_remove(index_name)
        report.started.append(task_id)
        slots -= 1
        node.emit(
            "exec_launched",
            "execution started",
            task_id=task_id,
            unit=launcher.unit(task_id) or "process",
        )


def refill(node: Node, launcher: Launcher) -> PassReport:
    """Start the next queued tasks into free slots, from the queue index alone. Everything
    else (intake, recovery, cleanup) is a full pass's job; the executor verifies each task
    again before it runs, so starting from the index needs no more checks than these."""
    with node.state.lock("promote"):
        report = PassReport()
        lanes = {lane.name: lane for lane in node.spool.lanes_in(node.cfg)}
        running = launcher.running()
        report.running = running
        slots = 0 if node.spool.killswitch().on else node.cfg.max_parallel - len(running)
        cancels = node.state.cancel_ids()
        startable: list[tuple[str, str]] = []
        for name in node.state.index_names():
            parsed = parse_index(name)
            if parsed is None or parsed[1] not in lanes or parsed[0] in running:
                continue
            task_id, lane = parsed[0], lanes[parsed[1]]
            report.queued.append(task_id)
            if len(startable) >= slots:
                continue
            if (
                not (lane.processing / lane.task_name(task_id)).exists()
                or task_id in cancels
                or node.state.started(task_id) is not None
            ):
                continue  # not plainly queued: the next full pass decides
            startable.append((task_id, name))
        start_up_to_cap(node, launcher, report, startable, slots)
        return report
