"""Waiting for a task's result: inotify where it works, a rescan every poll period always."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

from dispatch.core.errors import NotFound, Rejection, WaitTimeout
from dispatch.core.fsio import read_regular
from dispatch.core.inotify import DirWatcher
from dispatch.core.model import Result
from dispatch.core.node import Node
from dispatch.core.spool import Lane
from dispatch.core.wire import loads_strict
from dispatch.send import results


def stage_of(lane: Lane, task_id: str) -> str:
    return str(lane.stage_of(task_id))


def rejection_reason(lane: Lane, task_id: str) -> str:
    try:
        # read_regular: anyone who writes the share could plant a FIFO here, and a plain
        # open() of one blocks until a writer comes.
        record = loads_strict(read_regular(lane.reason_path(task_id)))
        return f"{record.get('reason')}: {record.get('message')}"
    except (OSError, Rejection):
        return "rejected by the receiver"


def _note(message: str) -> None:
    print(f"dispatch: {message}", file=sys.stderr, flush=True)


def wait(
    node: Node,
    task_id: str,
    *,
    timeout: float | None = None,
    tick: Callable[[str, float], None] | None = None,
    note: Callable[[str], None] = _note,
) -> Result:
    """The task's verified result, from the lane this node's records say it travels in.
    Anything else the share shows is a hint at most: a result that does not verify or is
    bound to another lane, task or answerer is ignored (the receiver quarantines it as it
    publishes the real one), and an unsigned record in rejected/ is reported, not
    returned: only a signed result ends the wait."""
    lane = results.find_task_lane(node, task_id)
    if lane is None:
        raise NotFound(f"{node.name} has no record of sending or receiving task {task_id}")
    began = time.monotonic()
    poll = node.cfg.poll_sec
    outage = ""
    told: set[str] = set()

    def once(message: str) -> None:
        if message not in told:
            told.add(message)
            note(message)

    with DirWatcher([lane.done, lane.rejected]) as watcher:
        while True:
            try:
                stage = stage_of(lane, task_id)
                if outage:
                    # Said before the result is read: the first look after an outage may
                    # already find it.
                    note(f"share reachable again; waiting for {task_id}")
                    outage = ""
                if os.path.lexists(lane.result_path(task_id)):
                    try:
                        return results.read_bound(node, lane, task_id)
                    except Rejection as exc:
                        stage = "waiting (an unverified result is ignored)"
                        once(
                            f"{lane.result_path(task_id)}: {exc.reason}: {exc}; ignored, "
                            f"still waiting for {task_id}"
                        )
                elif stage == "rejected":
                    hint = rejection_reason(lane, task_id)
                    stage = f"rejected? ({hint}; unsigned)"
                    once(
                        f"{lane.name}/rejected/ holds a file named like {task_id} ({hint}); "
                        "it is unsigned, so only a hint: still waiting for a signed result"
                    )
            except OSError as exc:
                # The share does not answer (its server restarting, the network cut): keep
                # waiting until the timeout, as on a hard NFS mount, and say so once.
                stage = f"share unreachable: {exc.strerror or exc}"
                if not outage:
                    note(
                        f"{exc.filename or lane.path}: {exc.strerror or exc}; still waiting "
                        f"for {task_id}"
                    )
                outage = stage
            elapsed = time.monotonic() - began
            if tick is not None:
                tick(stage, elapsed)
            if timeout is not None and elapsed >= timeout:
                raise WaitTimeout(
                    f"no result for {task_id} after {timeout:g}s (last seen: {stage})"
                )
            remaining = poll if timeout is None else min(poll, timeout - elapsed)
            watcher.wait(min(remaining, 1.0) if tick is not None else remaining)
