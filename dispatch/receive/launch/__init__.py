"""Launch backends: how the receiver's pass starts, counts and stops executions. The pass
knows only the `Launcher` protocol below; `make_launcher` picks the backend that
`DISPATCH_LAUNCHER` names (mkosi's `distribution/` is the model: one module a backend).

    process   executions as child processes (`dispatch watch`, hosts without systemd)
    systemd   one `dispatch-exec@<id>.service` per execution
    slurm     the executor here, the agent as one Slurm job per task (a gateway node)

A backend for another scheduler (Kubernetes, Nomad) implements the protocol and adds a
`DISPATCH_LAUNCHER` value, and nothing in the pass changes; docs/launchers.md says how. What
a backend starts is always `dispatch exec <id>` on this node: the executor verifies the task
again, claims its started marker (never twice), runs or submits the agent, and writes the
signed result.

Limits: DISPATCH_MEMORY_MAX, DISPATCH_CPU_QUOTA and DISPATCH_TASKS_MAX are the backend's to
enforce (systemd: MemoryMax=, CPUQuota=, TasksMax= from dispatch-generator; Slurm: --mem,
--cpus-per-task). The task's timeout_s is the executor's; a backend with a clock of its own
sets it as a backstop for when no executor watches (Slurm: --time, in whole minutes).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from dispatch.core.config import LauncherKind
from dispatch.core.node import Node


class Launcher(Protocol):
    def running(self) -> set[str]:
        """Ids whose execution has been started and has not ended: what counts toward
        DISPATCH_MAX_PARALLEL, from the backend's own record (never a scan of /proc). Work
        the backend still holds in its own queue counts (a pending Slurm job)."""

    def stopping(self) -> set[str]:
        """Ids among the last `running()` whose execution has ended while the backend still
        cleans up after it (a unit stopping: its ExecStopPost= runs). Each frees its slot,
        or is answered, within moments, and no event of the lanes says when: a staying
        promoter looks again shortly."""

    def start(self, task_id: str) -> None:
        """Start `dispatch exec <id>` for a released task; raise if it could not start (the
        task stays queued for the next pass)."""

    def stop(self, task_id: str) -> None:
        """Ask a running execution to end; it writes its own `killed`/`cancelled` result.
        Quick and quiet: called for every execution under the hard killswitch."""

    def resume(self, task_id: str, marker: Mapping[str, object]) -> bool:
        """The executor died (its started marker names a dead pid), but the backend's work
        may outlive it: start an executor that follows that work to its end and return
        True. False when nothing can outlive the executor: the pass answers `interrupted`.
        Never starts the agent a second time."""

    def unit(self, task_id: str) -> str:
        """What the result's `unit` field says ran it."""


def make_launcher(node: Node) -> Launcher:
    if node.cfg.launcher is LauncherKind.SYSTEMD:
        from dispatch.receive.launch.systemd import SystemdLauncher

        return SystemdLauncher(node)
    if node.cfg.launcher is LauncherKind.SLURM:
        from dispatch.receive.launch.slurm import SlurmLauncher

        return SlurmLauncher(node)
    from dispatch.receive.launch.process import ProcessLauncher

    return ProcessLauncher(node)
