"""One promote pass: admit every inbox entry, check acks, publish deferred results, honour
cancels, recover executions that died, and start queued tasks by priority up to the cap.
Idempotent: running it again, or after a crash at any point, never runs a task twice and
never loses one."""

from __future__ import annotations

import time

from dispatch.core import events
from dispatch.core.lanedirs import held_lanes
from dispatch.core.node import Node
from dispatch.core.spool import Lane
from dispatch.receive.launch import Launcher
from dispatch.receive.promote import acks, admission, cancels, junk, queue, recovery
from dispatch.receive.promote.report import Pass, PassReport


def promote(node: Node, launcher: Launcher) -> PassReport:
    with node.state.lock("promote"), held_lanes(node, node.spool.lanes_in(node.cfg)) as lanes:
        run = Pass(node, launcher)
        run.report.errors += len(node.spool.lanes_in(node.cfg)) - len(lanes)
        report = run_pass(run, lanes)
        run.settle_faults(lanes)
        return report


def run_pass(run: Pass, lanes: list[Lane]) -> PassReport:
    """One pass over the lanes that are held open (a refused lane is recorded, and the
    others go on: one lane's fault never stops another's)."""
    node, report = run.node, run.report
    now = time.time()
    for lane in lanes:
        admission.admit_inbox(run, lane)
        admission.sweep_stale(run, lane, now)
        acks.check_pending(run, lane)
        junk.trim(node, lane)
    killswitch = node.spool.killswitch()
    running = run.launcher.running()
    recovery.publish_deferred(run, lanes, running)
    for lane in lanes:
        cancels.honour_cancels(run, lane, running)
    queued = recovery.classify_processing(run, lanes, running)
    report.running = running
    report.stopping = run.launcher.stopping()
    if killswitch.hard:
        for task_id in sorted(running):
            node.emit(
                "killswitch_stop",
                f"stopping execution: {killswitch.reason}",
                task_id=task_id,
                level=events.WARNING,
            )
            run.launcher.stop(task_id)
    ordered = queue.order(run, queued)
    report.queued = [task_id for task_id, _ in ordered]
    if killswitch.on:
        if ordered:
            node.emit(
                "killswitch_hold",
                f"{len(ordered)} queued, none started: {killswitch.reason}",
                level=events.NOTICE,
            )
        return report
    slots = node.cfg.max_parallel - len(running)
    queue.start_up_to_cap(node, run.launcher, report, ordered, slots)
    return report
