"""One promote pass: admit every inbox entry, check acks, publish deferred results, honour
cancels, recover executions that died, and start queued tasks by priority up to the cap.
Idempotent: running it again, or after a crash at any point, never runs a task twice and
never loses one."""

from __future__ import annotations

import time

from dispatch.core import events
from dispatch.core.node import Node
from dispatch.receive.launch import Launcher
from dispatch.receive.promote import acks, admission, cancels, queue, recovery
from dispatch.receive.promote.report import Pass, PassReport


def promote(node: Node, launcher: Launcher) -> PassReport:
    with node.state.lock("promote"):
        return run_pass(Pass(node, launcher))


def run_pass(run: Pass) -> PassReport:
    node, report = run.node, run.report
    lanes = node.spool.lanes_in(node.cfg)
    now = time.time()
    for lane in lanes:
        if not lane.inbox.is_dir():
            # Never create it here: an unmounted share would look like an empty one and
            # tasks would pile up on the local disk under the mount point.
            node.emit(
                "lane_missing",
                f"{lane.inbox} does not exist: is the share mounted? "
                "(`dispatch init` creates lanes)",
                level=events.ERR,
            )
            report.errors += 1
            continue
        admission.admit_inbox(run, lane)
        admission.sweep_stale(run, lane, now)
        acks.check_pending(run, lane)
    killswitch = node.spool.killswitch()
    running = run.launcher.running()
    recovery.publish_deferred(run, lanes, running)
    for lane in lanes:
        cancels.honour_cancels(run, lane, running)
    queued = recovery.classify_processing(run, lanes, running)
    report.running = running
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
