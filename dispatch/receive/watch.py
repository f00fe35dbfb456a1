"""`dispatch watch`: the promote/exec loop for hosts without systemd as PID 1."""

from __future__ import annotations

import time

from dispatch.core.config import LauncherKind
from dispatch.core.errors import ConfigError
from dispatch.core.inotify import DirWatcher
from dispatch.core.node import Node
from dispatch.receive.launch import Launcher, make_launcher
from dispatch.receive.launch.process import ProcessLauncher
from dispatch.receive.promote import PassReport, promote
from dispatch.signer.server import serving_for_watch


def watch(node: Node, *, once: bool = False, max_seconds: float | None = None) -> PassReport:
    """Promote on every local event and every DISPATCH_POLL_SEC (inotify misses remote
    writes). With `once`, return when nothing more can start and every started execution has
    ended (so every started task has its result)."""
    # Executions are this loop's children, except that a Slurm gateway hands the agent on.
    launcher: Launcher = (
        make_launcher(node) if node.cfg.launcher is LauncherKind.SLURM else ProcessLauncher(node)
    )
    lanes = node.spool.lanes_in(node.cfg)
    missing = [str(lane.inbox) for lane in lanes if not lane.inbox.is_dir()]
    if missing:
        raise ConfigError(
            f"lanes missing: {', '.join(missing)} (is the share mounted? "
            "`dispatch init` creates them)"
        )
    dirs = [d for lane in lanes for d in lane.watched_dirs()]
    began = time.monotonic()
    with serving_for_watch(node), DirWatcher(dirs) as watcher:
        while True:
            report = promote(node, launcher)
            busy = launcher.running()
            if once and not busy and (not report.queued or node.spool.killswitch().on):
                return report
            if max_seconds is not None and time.monotonic() - began > max_seconds:
                return report
            # Executions end by removing their processing/ file, which wakes us locally;
            # the short timeout while busy also catches an exec that died without a trace.
            watcher.wait(min(node.cfg.poll_sec, 0.5) if busy else node.cfg.poll_sec)
