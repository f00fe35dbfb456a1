"""Passes until nothing changes, and the linger that hands freed slots to a backlog."""

from __future__ import annotations

import os
import time

from dispatch.core import events
from dispatch.core.node import Node
from dispatch.core.spool import INBOX_LEVEL_ENV, level_inboxes
from dispatch.receive.launch import Launcher
from dispatch.receive.promote import queue
from dispatch.receive.promote.pass_ import promote
from dispatch.receive.promote.report import PassReport

MAX_SETTLE_PASSES = 20


# How long one promote process may stay to hand freed slots to a backlog: well under the
# unit's TimeoutStartSec=, after which the path unit, the timer or the next execution's end
# starts a fresh one.
LINGER_MAX_S = 120.0
# How soon to look again once an execution's task file is gone but its unit still holds
# its slot (systemd takes a few milliseconds to stop it).
SLOT_RETRY_S = 0.03
SLOT_RETRY_WINDOW_S = 0.5


def run_unit_pass(node: Node) -> PassReport:
    """What `dispatch promote` does: under systemd, a round (below), then, when it did
    something, stay for DISPATCH_PROMOTE_LINGER_S to run the next rounds in this process
    (promote/linger.py)."""
    from dispatch.core.config import LauncherKind
    from dispatch.receive.launch import make_launcher

    launcher = make_launcher(node)
    if node.cfg.launcher is not LauncherKind.SYSTEMD:
        return settle(node, launcher)
    from dispatch.receive.promote import linger

    # On a local root the path unit also watches the inboxes level-triggered: an entry
    # left in one would start a new promoter as soon as this one exits, so it stays.
    level = level_inboxes(os.environ.get(INBOX_LEVEL_ENV, ""))
    stay_while = (lambda: linger.inbox_holds_entries(level)) if level else None
    lingering = node.cfg.promote_linger_s > 0
    before = linger.snapshot(node) if lingering or level else None
    report = _unit_round(node, launcher)
    busy = (
        lingering
        and before is not None
        and (before.kicked() or _did_something(report) or bool(report.stopping))
    )
    if before is None or not (busy or (stay_while is not None and stay_while())):
        return report
    # On a timer node the timer would pass every period, and its starts are absorbed while
    # this process runs: rounds every period. A sensor node has the sensor's kicks, and on a
    # local root inotify sees every write (a long stay still gets a round from each
    # successor, every 3 minutes, for the time-based work).
    sensor = bool(os.environ.get("DISPATCH_SENSOR_LOOKED", ""))
    periodic = None if sensor or level else node.cfg.poll_sec

    def fresh_round() -> PassReport:
        # Each round reads the config, the pins and the key ids again, as a new process
        # would: a peer removed or a key rotated while this one stays counts at once.
        from dispatch.core import broken_config, config
        from dispatch.core.errors import ConfigError
        from dispatch.receive.launch.systemd import SystemdLauncher

        nonlocal launcher
        try:
            current = Node(config.load())
        except ConfigError as exc:
            broken_config.record(str(exc))
            raise
        if isinstance(launcher, SystemdLauncher) and current.cfg.launcher is LauncherKind.SYSTEMD:
            launcher = launcher.with_node(current)  # its connection to systemd kept
        else:
            launcher = make_launcher(current)
        return _unit_round(current, launcher)

    return linger.linger(
        node,
        fresh_round,
        before,
        report,
        linger_s=node.cfg.promote_linger_s,
        periodic_s=periodic,
        stay_while=stay_while,
    )


def _did_something(report: PassReport) -> bool:
    # A timer tick that finds nothing ends the process: lingering is for a node that is
    # busy now, and an idle node costs nothing.
    return bool(
        report.admitted or report.started or report.rejected or report.released or report.recovered
    )


def _unit_round(node: Node, launcher: Launcher) -> PassReport:
    """Take the sensor's kick first (whatever changed before is in this round; a later
    change kicks again), then settle, lingering while a backlog waits for slots."""
    from dispatch.receive import sensor

    sensor.consume_kick()
    report = settle(node, launcher, linger=True)
    looked_file = os.environ.get("DISPATCH_SENSOR_LOOKED", "")
    if looked_file:
        # A sensor node (dispatch-generator sets it): see promote/last_look.py.
        from dispatch.receive.promote.last_look import end_with_settled_look

        try:
            settled = report
            report = end_with_settled_look(node, launcher, report, looked_file)
            if report is not settled:
                report.include(settled)  # what the whole round did, for the linger
        except OSError as exc:
            # The pass itself is done; without a look the sensor kicks once more.
            node.emit(
                "settled_look_failed",
                f"the pass's last look failed ({exc.strerror or exc}); the sensor kicks again",
                level=events.WARNING,
            )
    if node.state.deferred_results():
        # A result waits for the share to come back: in sensor mode no timer comes soon,
        # so ask the sensor for another pass (backing off) until it is published.
        sensor.want_again()
    return report


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
    dirs = [d for lane in lanes for d in lane.watched_dirs()] + [node.cfg.root]
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
        return queue.refill(node, launcher)

    with DirWatcher(dirs) as watcher:
        # Executions may have ended while the watch was being set up: look once at once.
        changed = True
        report = queue.refill(node, launcher)
        while _backlog(node, report) and time.monotonic() < deadline:
            # An execution ended (its task file went) but its unit is still stopping (the
            # executor exits, ExecStopPost= runs: ~50-100 ms): look again shortly, for a
            # moment, while a slot is free or about to be. Stopping at the first start
            # left a slot whose unit went a moment later empty until the next event: at
            # cap 2 the backlog drained one task at a time.
            retry_until = time.monotonic() + SLOT_RETRY_WINDOW_S if changed else 0.0
            while (
                _backlog(node, report)
                and (not _slots_full(node, report) or _stopping(node, report))
                and time.monotonic() < retry_until
            ):
                watcher.wait(SLOT_RETRY_S)
                report = queue.refill(node, launcher)
            if not _backlog(node, report):
                break
            changed = watcher.wait(min(node.cfg.poll_sec, 1.0))
            report = next_pass()
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


def _backlog(node: Node, report: PassReport) -> bool:
    """Tasks wait that a freed slot could start."""
    return len(report.queued) > len(report.started) and not node.spool.killswitch().on


def _slots_full(node: Node, report: PassReport) -> bool:
    return len(report.running) + len(report.started) >= node.cfg.max_parallel


def _stopping(node: Node, report: PassReport) -> bool:
    """A slot is about to free: an execution still holds one whose task file is gone from
    processing/ (its executor finished; systemd is stopping the unit)."""
    present = {t for lane in node.spool.lanes_in(node.cfg) for t in lane.task_ids(lane.processing)}
    return bool(report.running - present)


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
