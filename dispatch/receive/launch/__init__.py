"""Launch backends: how the receiver's pass starts, counts and stops executions. The pass
knows only the `Launcher` protocol below; `make_launcher` picks the backend that
`DISPATCH_LAUNCHER` names (mkosi's `distribution/` is the model: one module a backend).

    process   executions as child processes (`dispatch watch`, hosts without systemd)
    systemd   one `dispatch-exec@<id>.service` per execution
"""

from __future__ import annotations

from typing import Protocol

from dispatch.core.config import LauncherKind
from dispatch.core.node import Node


class Launcher(Protocol):
    def running(self) -> set[str]:
        """Ids whose execution has been started and has not ended: what counts toward
        DISPATCH_MAX_PARALLEL, from the backend's own record (never a scan of /proc)."""

    def start(self, task_id: str) -> None:
        """Start `dispatch exec <id>` for a released task; raise if it could not start (the
        task stays queued for the next pass)."""

    def stop(self, task_id: str) -> None:
        """Ask a running execution to end; it writes its own `killed`/`cancelled` result."""

    def unit(self, task_id: str) -> str:
        """What the result's `unit` field says ran it."""


def make_launcher(node: Node) -> Launcher:
    if node.cfg.launcher is LauncherKind.SYSTEMD:
        from dispatch.receive.launch.systemd import SystemdLauncher

        return SystemdLauncher(node)
    from dispatch.receive.launch.process import ProcessLauncher

    return ProcessLauncher(node)
