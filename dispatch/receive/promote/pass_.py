"""One promote pass: intake every inbox entry, release acked tasks, recover executions that
died, and start queued tasks by priority up to the cap. Idempotent: running it again, or
after a crash at any point, never runs a task twice and never loses one."""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from dispatch.core import events
from dispatch.core.errors import Rejection
from dispatch.core.model import (
    Envelope,
    Status,
    loads_strict,
    now_utc,
    parse_envelope,
    rfc3339,
    valid_id,
)
from dispatch.core.node import Node
from dispatch.core.signing import mac_text
from dispatch.core.spool import Lane, atomic_write, dump_json
from dispatch.core.state import Phase, parse_index
from dispatch.receive import notify
from dispatch.receive.intake import examine, read_regular
from dispatch.receive.launch import Launcher, execution_alive
from dispatch.send import cancel, results

RANK = {"high": 0, "normal": 1, "low": 2}


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


def ack_mac(node: Node, lane: Lane, task_id: str, sha256: str) -> str:
    """An ack is valid only with a MAC under this host's own ack secret (node-local state), so
    a `<id>.ack` file dropped on the share by anyone else releases nothing (invariant 5)."""
    return mac_text(node.state.ack_secret(), f"ack:{node.name}:{lane.name}:{task_id}:{sha256}")


def write_ack(node: Node, lane: Lane, task_id: str) -> Path:
    entry = node.state.entry(task_id)
    if entry is None:
        raise Rejection("not_admitted", f"task {task_id} was never admitted on this node")
    path = lane.pending_ack / f"{task_id}.ack"
    record = {
        "id": task_id,
        "node": node.name,
        "acked_at": rfc3339(now_utc()),
        "mac": ack_mac(node, lane, task_id, entry.sha256),
    }
    atomic_write(path, dump_json(record))
    return path


def promote(node: Node, launcher: Launcher) -> PassReport:
    with node.state.lock("promote"):
        return Promoter(node, launcher).run()


MAX_SETTLE_PASSES = 20


# How long one promote process may stay to hand freed slots to a backlog: well under the
# unit's TimeoutStartSec=, after which the path unit, the timer or the next execution's end
# starts a fresh one.
LINGER_MAX_S = 120.0
# How soon to look again once an execution's task file is gone but its unit still holds
# its slot (systemd takes a few milliseconds to stop it).
SLOT_RETRY_S = 0.03
SLOT_RETRY_WINDOW_S = 0.5


def settle(node: Node, launcher: Launcher, *, linger: bool = False) -> PassReport:
    """Passes until nothing changed during the last one. systemd stops watching while this
    oneshot runs, so a task that arrived, or an execution that ended, during a pass would
    otherwise wait for the next timer tick.

    With `linger`, while tasks wait for a slot, stay and watch the lanes (inotify, and a
    rescan every poll period): an execution that ends frees its slot for the next task at
    once, instead of through a new promote process per task. With nothing queued it
    returns: no dispatch process stays resident while the node is idle."""
    report = promote(node, launcher)
    for _ in range(MAX_SETTLE_PASSES - 1):
        if not _changed_since(node, launcher, report):
            break
        report = promote(node, launcher)
    if not linger or not _backlog(node, report):
        return report
    from dispatch.core.inotify import DirWatcher

    lanes = node.spool.lanes_in(node.cfg)
    dirs = [
        d for lane in lanes for d in (lane.inbox, lane.pending_ack, lane.processing, lane.cancel)
    ] + [node.cfg.root]
    deadline = time.monotonic() + LINGER_MAX_S
    last_full = time.monotonic()

    def next_pass() -> PassReport:
        # A full pass reads every lane (O(backlog)); a refill only starts the next tasks of
        # the index, so a long backlog drains at a constant cost per task. Full passes
        # still come every poll period (remote writes, recovery) and for local arrivals.
        nonlocal last_full
        if time.monotonic() - last_full >= node.cfg.poll_sec or _arrivals(node):
            last_full = time.monotonic()
            return promote(node, launcher)
        return refill(node, launcher)

    with DirWatcher(dirs) as watcher:
        while _backlog(node, report) and time.monotonic() < deadline:
            changed = watcher.wait(min(node.cfg.poll_sec, 1.0))
            report = next_pass()
            # An execution ended (its task file went) but its unit may still be stopping:
            # look again shortly, for a moment, rather than at the next event.
            retry_until = time.monotonic() + SLOT_RETRY_WINDOW_S if changed else 0.0
            while _backlog(node, report) and not report.started and time.monotonic() < retry_until:
                watcher.wait(SLOT_RETRY_S)
                report = refill(node, launcher)
    return report


def _arrivals(node: Node) -> bool:
    """Anything a refill would not handle: a new inbox entry, a cancel, an ack."""
    for lane in node.spool.lanes_in(node.cfg):
        for directory, suffix in ((lane.inbox, ""), (lane.cancel, ""), (lane.pending_ack, ".ack")):
            try:
                if any(
                    n.endswith(suffix) and not n.endswith(".tmp") for n in os.listdir(directory)
                ):
                    return True
            except OSError:
                continue
    return False


def refill(node: Node, launcher: Launcher) -> PassReport:
    """Start the next queued tasks into free slots, from the queue index alone. Everything
    else (intake, recovery, cleanup) is a full pass's job; the executor verifies each task
    again before it runs, so starting from the index needs no more checks than these."""
    with node.state.lock("promote"):
        report = PassReport()
        lanes = {lane.name: lane for lane in node.spool.lanes_in(node.cfg)}
        killswitch = node.spool.killswitch()
        running = launcher.running()
        report.running = running
        slots = 0 if killswitch.on else node.cfg.max_parallel - len(running)
        cancels = node.state.cancel_ids()
        for name in node.state.index_names():
            parsed = parse_index(name)
            if parsed is None or parsed[1] not in lanes or parsed[0] in running:
                continue
            task_id, lane = parsed[0], lanes[parsed[1]]
            report.queued.append(task_id)
            if slots <= 0:
                continue
            if (
                not (lane.processing / f"{task_id}.json").exists()
                or task_id in cancels
                or node.state.started(task_id) is not None
            ):
                continue  # not plainly queued: the next full pass decides
            try:
                launcher.start(task_id)
            except Exception as exc:  # left queued for the next pass
                node.emit(
                    "start_failed",
                    f"cannot start execution: {exc}",
                    task_id=task_id,
                    level=events.ERR,
                )
                continue
            node.state.index_remove(name)
            report.started.append(task_id)
            slots -= 1
            node.emit(
                "exec_launched",
                "execution started",
                task_id=task_id,
                unit=launcher.unit(task_id) or "process",
            )
        return report


def _backlog(node: Node, report: PassReport) -> bool:
    """Tasks wait that a freed slot could start."""
    return len(report.queued) > len(report.started) and not node.spool.killswitch().on


def _changed_since(node: Node, launcher: Launcher, report: PassReport) -> bool:
    for lane in node.spool.lanes_in(node.cfg):
        try:
            names = os.listdir(lane.inbox)
        except OSError:
            continue
        # An entry the pass saw and could not move is not news: only new arrivals are.
        if any(not n.endswith(".tmp") and f"{lane.name}/{n}" not in report.seen for n in names):
            return True
    waiting = len(report.queued) - len(report.started)
    if waiting <= 0 or node.spool.killswitch().on:
        return False
    return len(launcher.running()) < node.cfg.max_parallel


class Promoter:
    def __init__(self, node: Node, launcher: Launcher) -> None:
        self.node = node
        self.cfg = node.cfg
        self.state = node.state
        self.launcher = launcher
        self.report = PassReport()
        self.lane_of: dict[str, Lane] = {}
        # tasks whose execution ended with a result the share refused (still in outbox/)
        self.deferred: set[str] = set()

    def run(self) -> PassReport:
        now = time.time()
        lanes = self.node.spool.lanes_in(self.cfg)
        for lane in lanes:
            if not lane.inbox.is_dir():
                # Never create it here: an unmounted share would look like an empty one and
                # tasks would pile up on the local disk under the mount point.
                self.node.emit(
                    "lane_missing",
                    f"{lane.inbox} does not exist: is the share "
                    "mounted? (`dispatch init` creates lanes)",
                    level=events.ERR,
                )
                self.report.errors += 1
                continue
            self.intake(lane)
            self.sweep(lane, now)
            self.pending(lane)
        killswitch = self.node.spool.killswitch()
        running = self.launcher.running()
        self.publish_deferred(lanes, running)
        for lane in lanes:
            self.cancels(lane, running)
        queued = self.audit_processing(lanes, running)
        self.report.running = running
        if killswitch.hard:
            for task_id in sorted(running):
                self.node.emit(
                    "killswitch_stop",
                    f"stopping execution: {killswitch.reason}",
                    task_id=task_id,
                    level=events.WARNING,
                )
                self.launcher.stop(task_id)
        ordered = self.order(queued)
        self.report.queued = [task_id for task_id, _ in ordered]
        if killswitch.on:
            if ordered:
                self.node.emit(
                    "killswitch_hold",
                    f"{len(ordered)} queued, none started: {killswitch.reason}",
                    level=events.NOTICE,
                )
            return self.report
        slots = self.cfg.max_parallel - len(running)
        for task_id, index_name in ordered:
            if slots <= 0:
                break
            try:
                self.launcher.start(task_id)
            except Exception as exc:  # a failed start leaves the task queued for the next pass
                self.node.emit(
                    "start_failed",
                    f"cannot start execution: {exc}",
                    task_id=task_id,
                    level=events.ERR,
                )
                self.report.errors += 1
                continue
            self.state.index_remove(index_name)
            self.report.started.append(task_id)
            slots -= 1
            self.node.emit(
                "exec_launched",
                "execution started",
                task_id=task_id,
                unit=self.launcher.unit(task_id) or "process",
            )
        return self.report

    # -- inbox -------------------------------------------------------------------------
    def intake(self, lane: Lane) -> None:
        try:
            names = sorted(os.listdir(lane.inbox))
        except OSError as exc:
            self.node.emit("lane_unreadable", f"{lane.inbox}: {exc.strerror}", level=events.ERR)
            self.report.errors += 1
            return
        for name in names:
            if name.endswith(".tmp"):
                continue  # a sender mid-write (the original writes inbox/<id>.json.tmp)
            self.report.seen.add(f"{lane.name}/{name}")
            try:
                self.intake_one(lane, name)
            except FileNotFoundError:
                continue  # gone meanwhile (another pass, or the sender took it back)
            except OSError as exc:
                # Invariant 6: one entry that cannot be handled must not stop the others.
                self.node.emit(
                    "intake_error", f"{lane.name}/inbox/{name[:80]}: {exc}", level=events.ERR
                )
                self.report.errors += 1

    def intake_one(self, lane: Lane, name: str) -> None:
        try:
            data = read_regular(lane.inbox / name)
            admitted = examine(self.cfg, self.node.keys, lane, name, data)
        except Rejection as exc:
            self.refuse(lane, name, exc, answer=True)
            return
        envelope = admitted.envelope
        previous = self.state.claim(envelope.id, admitted.sha256, lane.name)
        if previous is not None and not (
            previous.phase is Phase.INTAKE
            and previous.sha256 == admitted.sha256
            and previous.lane == lane.name
        ):
            self.refuse(
                lane,
                name,
                Rejection(
                    "replay",
                    f"task id {envelope.id} was already seen by this node ({previous.phase.value})",
                ),
            )
            return
        if admitted.needs_ack:
            os.rename(lane.inbox / name, lane.pending_ack / name)
            stage, event = "pending-ack", "task_pending_ack"
        else:
            os.rename(lane.inbox / name, lane.processing / name)
            self.index(envelope)
            stage, event = "queued", "task_queued"
        self.state.mark(envelope.id, Phase.ACCEPTED)
        self.report.admitted += 1
        if admitted.needs_ack:
            notify.enqueue(
                self.node,
                notify.task_payload(
                    self.node,
                    "task_pending_ack",
                    task_id=envelope.id,
                    from_=envelope.from_,
                    to=envelope.to,
                    request=envelope.request,
                ),
                envelope.callback,
            )
        self.node.emit(
            event,
            f"{envelope.priority} task admitted ({stage}): {envelope.request[:80]}",
            task_id=envelope.id,
            from_=envelope.from_,
            to=envelope.to,
            schema=envelope.schema,
            kid=envelope.kid or "-",
        )

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
        record = {
            "reason": exc.reason,
            "message": str(exc),
            "at": rfc3339(now_utc()),
            "node": self.node.name,
            "task_id": exc.task_id,
        }
        # Only an id this node never saw gets a `rejected` result: a replayed id belongs to an
        # earlier task, whose one result must stand alone. The result is written before the
        # file moves: a sender's `wait` that sees it in rejected/ must find the result too.
        if answer and exc.task_id and self.state.claim(exc.task_id, "", lane.name) is None:
            self.state.mark(exc.task_id, Phase.REJECTED)
            results.verdict(
                self.node, lane, exc.task_id, "", Status.REJECTED, f"{exc.reason}: {exc}"
            )
        try:
            lane.reject(name, record, source)
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

    def sweep(self, lane: Lane, now: float) -> None:
        for path in lane.stale_tmp(now):
            exc = Rejection(
                "stale_tmp", "temporary file older than an hour: its sender died mid-write"
            )
            try:
                self.refuse(lane, path.name, exc, source=path.parent)
            except OSError as err:
                self.node.emit("intake_error", f"{path}: {err}", level=events.ERR)

    # -- pending-ack -------------------------------------------------------------------
    def pending(self, lane: Lane) -> None:
        try:
            names = sorted(os.listdir(lane.pending_ack))
        except OSError:
            return
        present = set(names)
        for name in names:
            if name.endswith(".tmp") or name.endswith(".ack"):
                continue
            if not self.admitted_file(lane, name):
                self.refuse(
                    lane,
                    name,
                    Rejection(
                        "not_admitted", "file in pending-ack/ that did not come through intake"
                    ),
                    source=lane.pending_ack,
                )
                continue
            task_id = name[: -len(".json")]
            entry = self.state.entry(task_id)
            # Fail closed: an ack that never comes cancels the task, it never runs it.
            if entry is not None and time.time() - entry.at > self.cfg.ack_ttl_s:
                self.end_unstarted(
                    lane,
                    lane.pending_ack,
                    task_id,
                    Status.CANCELLED,
                    f"no ack within DISPATCH_ACK_TTL={self.cfg.ack_ttl_s}s",
                )
                continue
            self.report.pending_ack += 1
        for name in names:
            if name.endswith(".ack"):
                try:
                    self.release(lane, name, present)
                except OSError as exc:
                    self.node.emit("ack_error", f"{name[:80]}: {exc}", level=events.ERR)

    def admitted_file(self, lane: Lane, name: str) -> bool:
        task_id = name[: -len(".json")] if name.endswith(".json") else ""
        if not valid_id(task_id):
            return False
        entry = self.state.entry(task_id)
        return (
            entry is not None
            and entry.lane == lane.name
            and entry.phase in (Phase.ACCEPTED, Phase.INTAKE)
        )

    def release(self, lane: Lane, name: str, present: set[str]) -> None:
        task_id = name[: -len(".ack")]
        entry = self.state.entry(task_id) if valid_id(task_id) else None
        forged = Rejection(
            "forged_ack",
            "ack not signed by this host's ack secret: only "
            "`dispatch ack` on the receiving host releases a task",
        )
        if entry is None or f"{task_id}.json" not in present:
            self.refuse(
                lane,
                name,
                Rejection("orphan_ack", "ack for no pending task"),
                source=lane.pending_ack,
            )
            return
        try:
            record = loads_strict(read_regular(lane.pending_ack / name))
        except Rejection:
            self.refuse(lane, name, forged, source=lane.pending_ack)
            return
        expected = ack_mac(self.node, lane, task_id, entry.sha256)
        if not hmac.compare_digest(str(record.get("mac", "")), expected):
            self.refuse(lane, name, forged, source=lane.pending_ack)
            return
        os.rename(lane.pending_ack / f"{task_id}.json", lane.processing / f"{task_id}.json")
        os.unlink(lane.pending_ack / name)
        self.report.released += 1
        self.report.pending_ack -= 1
        self.node.emit(
            "task_acked",
            f"released by local ack of {record.get('acked_at')}",
            task_id=task_id,
            from_=lane.from_,
            to=lane.to,
        )

    # -- results an execution could not write: the share was down when it ended --------
    def publish_deferred(self, lanes: list[Lane], running: set[str]) -> None:
        by_name = {lane.name: lane for lane in lanes}
        for task_id, lane_name, signed, log_rest in self.state.deferred_results():
            lane = by_name.get(lane_name)
            self.deferred.add(task_id)
            if lane is None or task_id in running or not valid_id(task_id):
                continue
            try:
                rest = results.append_log(lane.log_path(task_id), log_rest)
                if rest != log_rest:
                    # Keep what the share still refuses for the next try: the result may be
                    # refused too, and the output must not be lost meanwhile.
                    self.state.keep_log_rest(task_id, rest)
                if not results.write_signed(self.node, lane, task_id, signed):
                    self.node.emit(
                        "result_exists",
                        "a result was already published; the deferred one is dropped",
                        task_id=task_id,
                        level=events.WARNING,
                    )
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lane.processing / f"{task_id}.json")
            except OSError as exc:
                self.node.emit(
                    "publish_error", f"deferred result: {exc}", task_id=task_id, level=events.ERR
                )
                self.report.errors += 1
                continue
            self.state.mark(task_id, Phase.DONE)
            self.state.forget_result(task_id)
            self.deferred.discard(task_id)
            self.node.emit(
                "result_published",
                f"deferred {signed.get('status')} result "
                "published" + (f"; {len(rest)} bytes of its log lost" if rest else ""),
                task_id=task_id,
                from_=lane.from_,
                to=lane.to,
            )

    # -- processing --------------------------------------------------------------------
    def audit_processing(self, lanes: list[Lane], running: set[str]) -> list[str]:
        """Classify processing/: running, died (→ interrupted), finished (clean up), queued.
        Runs on every pass over every queued task, so each costs a stat or two: the queue
        index (node-local, written only at admission) stands in for a ledger read, and the
        cancel markers are listed once."""
        queued = []
        indexed = {
            parsed for name in self.state.index_names() if (parsed := parse_index(name)) is not None
        }
        cancels = self.state.cancel_ids()
        for lane in lanes:
            try:
                names = sorted(os.listdir(lane.processing))
            except OSError:
                continue
            for name in names:
                if name.startswith(".") or name.endswith(".tmp"):
                    continue
                task_id = name[: -len(".json")] if name.endswith(".json") else ""
                if (task_id, lane.name) not in indexed and not self.admitted_file(lane, name):
                    self.refuse(
                        lane,
                        name,
                        Rejection(
                            "not_admitted", "file in processing/ that did not come through intake"
                        ),
                        source=lane.processing,
                    )
                    continue
                if task_id in running or task_id in self.deferred:
                    continue
                if results.genuine(self.node, lane, task_id):
                    self.finish(lane, task_id)
                    continue
                marker = self.state.started(task_id)
                if marker is not None:
                    if execution_alive(marker):
                        # An execution this launcher did not start (`dispatch exec` by
                        # hand) is alive: it is running, and it counts toward the cap.
                        running.add(task_id)
                        continue
                    self.interrupt(lane, task_id, marker)
                    continue
                cancelled = self.state.cancel_reason(task_id) if task_id in cancels else None
                if cancelled is not None:
                    self.end_unstarted(lane, lane.processing, task_id, Status.CANCELLED, cancelled)
                    continue
                queued.append(task_id)
                self.lane_of[task_id] = lane
        return queued

    def finish(self, lane: Lane, task_id: str) -> None:
        # The execution wrote its result but died before removing its task file.
        os.unlink(lane.processing / f"{task_id}.json")
        self.state.mark(task_id, Phase.DONE)
        self.node.emit(
            "task_cleanup",
            "result present; removed the leftover task file",
            task_id=task_id,
            from_=lane.from_,
            to=lane.to,
        )

    def end_unstarted(
        self, lane: Lane, directory: Path, task_id: str, status: Status, reason: str
    ) -> None:
        """Answer a task that never started (cancelled, or its ack never came) and remove
        its file: the result is its trace."""
        request = ""
        with contextlib.suppress(Rejection, OSError):
            request = parse_envelope(
                loads_strict(read_regular(directory / f"{task_id}.json"))
            ).request
        results.verdict(self.node, lane, task_id, request, status, reason)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / f"{task_id}.json")
        self.state.mark(task_id, Phase.DONE)
        self.node.emit(
            "task_cancelled",
            reason,
            task_id=task_id,
            from_=lane.from_,
            to=lane.to,
            level=events.NOTICE,
        )

    # -- cancel requests ---------------------------------------------------------------
    def cancels(self, lane: Lane, running: set[str]) -> None:
        try:
            names = sorted(os.listdir(lane.cancel))
        except OSError:
            return
        for name in names:
            if name.startswith(".") or name.endswith(".tmp"):
                continue
            try:
                request = cancel.parse(self.node, lane, name)
                self.cancel_one(lane, name, request, running)
            except Rejection as exc:
                self.refuse(lane, name, exc, source=lane.cancel)
            except OSError as exc:
                self.node.emit("cancel_error", f"{name[:80]}: {exc}", level=events.ERR)

    def cancel_one(
        self, lane: Lane, name: str, request: cancel.CancelRequest, running: set[str]
    ) -> None:
        task_id = request.task_id
        if results.genuine(self.node, lane, task_id):
            raise Rejection("already_finished", "the task had already finished; left alone")
        if self.state.entry(task_id) is None:
            return  # not seen yet (the share may show the cancel first); freshness bounds it
        reason = f"cancelled by {request.from_} (requested {request.created})"
        # Recorded first: the executor and later passes honour it whatever happens next.
        self.state.request_cancel(task_id, reason)
        os.unlink(lane.cancel / name)
        marker = self.state.started(task_id)
        if task_id in running or (marker is not None and execution_alive(marker)):
            self.node.emit(
                "cancel_stop",
                "stopping the running execution",
                task_id=task_id,
                from_=lane.from_,
                to=lane.to,
                level=events.NOTICE,
            )
            self.launcher.stop(task_id)
            return
        for directory in (lane.pending_ack, lane.processing):
            if (directory / f"{task_id}.json").exists() and marker is None:
                self.end_unstarted(lane, directory, task_id, Status.CANCELLED, reason)
                return

    def interrupt(self, lane: Lane, task_id: str, marker: dict[str, object]) -> None:
        """Started, no longer running, no result: the host or the executor died. Never rerun
        (invariant 1); answer `interrupted` (invariant 2)."""
        request = ""
        with contextlib.suppress(Rejection, OSError):
            request = parse_envelope(
                loads_strict(read_regular(lane.processing / f"{task_id}.json"))
            ).request
        started_at = marker.get("started_at")
        results.verdict(
            self.node,
            lane,
            task_id,
            request,
            Status.INTERRUPTED,
            "execution ended without a result (host, executor or unit died); not run again",
            started_at=started_at if isinstance(started_at, str) else None,
            unit=self.launcher.unit(task_id),
        )
        self.finish(lane, task_id)
        self.report.recovered += 1
        self.node.emit(
            "task_interrupted",
            "execution died without a result; not rerun",
            task_id=task_id,
            from_=lane.from_,
            to=lane.to,
            level=events.WARNING,
        )

    # -- order -------------------------------------------------------------------------
    def index(self, envelope: Envelope) -> None:
        self.state.index_add(
            envelope.id,
            RANK[envelope.priority.value],
            envelope.created,
            f"{envelope.from_}-to-{envelope.to}",
        )

    def order(self, queued: list[str]) -> list[tuple[str, str]]:
        """High before normal before low, oldest first, from the index in node-local state;
        a task missing from it (a crash between rename and index) is read and indexed."""
        names = self.state.index_names()
        indexed: dict[str, str] = {}
        for name in names:
            parsed = parse_index(name)
            if parsed is None:
                self.state.index_remove(name)
                continue
            indexed[parsed[0]] = name
        wanted = set(queued)
        for task_id, name in indexed.items():
            if task_id not in wanted:
                self.state.index_remove(name)
        for task_id in queued:
            if task_id not in indexed:
                lane = self.lane_of[task_id]
                try:
                    obj = loads_strict(read_regular(lane.processing / f"{task_id}.json"))
                    rank = RANK.get(str(obj.get("priority")), 1)
                    created = str(obj.get("created", ""))
                except (Rejection, OSError):
                    rank, created = 1, ""
                self.state.index_add(task_id, rank, created, lane.name)
                indexed[task_id] = ""
        if any(not name for name in indexed.values()):
            names = self.state.index_names()
        # (task id, index entry), in start order
        return [
            (parsed[0], name)
            for name in names
            if (parsed := parse_index(name)) is not None and parsed[0] in wanted
        ]


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
