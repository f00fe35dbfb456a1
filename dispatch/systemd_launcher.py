"""Executions as `dispatch-exec@<id>.service` instances, counted from systemd's unit states."""

from __future__ import annotations

from dispatch.node import Node
from dispatch.runner import systemctl

TEMPLATE = "dispatch-exec@{}.service"
# deactivating counts too: the agent may still hold memory and CPU until the stop finishes.
BUSY_STATES = "activating,active,deactivating,reloading"


def unit_name(task_id: str) -> str:
    # Task ids are canonical uuids: letters, digits and '-', all literal in an instance name.
    return TEMPLATE.format(task_id)


def instance_of(unit: str) -> str | None:
    prefix, suffix = "dispatch-exec@", ".service"
    if unit.startswith(prefix) and unit.endswith(suffix):
        return unit[len(prefix): -len(suffix)]
    return None


class SystemdLauncher:
    def __init__(self, node: Node) -> None:
        self.node = node

    def running(self) -> set[str]:
        out = systemctl("list-units", "--all", "--plain", "--no-legend", "--no-pager",
                        f"--state={BUSY_STATES}", "dispatch-exec@*.service").stdout
        ids = set()
        for line in out.splitlines():
            parts = line.split()
            task_id = instance_of(parts[0]) if parts else None
            if task_id:
                ids.add(task_id)
        return ids

    def start(self, task_id: str) -> None:
        # --no-block: promote is a oneshot that must return; the unit runs on its own.
        systemctl("start", "--no-block", unit_name(task_id))

    def stop(self, task_id: str) -> None:
        systemctl("stop", "--no-block", unit_name(task_id), check=False)

    def unit(self, task_id: str) -> str:
        return unit_name(task_id)
