"""Executions as `dispatch-exec@<id>.service` instances, counted from systemd's unit states."""

from __future__ import annotations

from collections.abc import Mapping

from dispatch.core import events
from dispatch.core.node import Node
from dispatch.core.runner import systemctl

TEMPLATE = "dispatch-exec@{}.service"
PATH_UNIT = "dispatch-watch.path"
# deactivating counts: the agent may still hold memory and CPU until the stop finishes.
IDLE_STATES = {"inactive", "failed"}


def unit_name(task_id: str) -> str:
    # Task ids are canonical uuids: letters, digits and '-', all literal in an instance name.
    return TEMPLATE.format(task_id)


def instance_of(unit: str) -> str | None:
    prefix, suffix = "dispatch-exec@", ".service"
    if unit.startswith(prefix) and unit.endswith(suffix):
        return unit[len(prefix) : -len(suffix)]
    return None


# What `dispatch status` shows of each execution, read with one `systemctl show` call.
SHOW_PROPERTIES = (
    "Id",
    "ActiveState",
    "SubState",
    "MemoryCurrent",
    "ActiveEnterTimestampMonotonic",
    "InactiveExitTimestampMonotonic",
)
UINT64_MAX = 2**64 - 1


def exec_units() -> dict[str, dict[str, str]]:
    """Busy `dispatch-exec@` instances (task id -> properties), from one `systemctl show` of
    the template's pattern: every loaded instance, the inactive ones left out."""
    out = systemctl(
        "show",
        "--property=" + ",".join(SHOW_PROPERTIES),
        "--no-pager",
        "dispatch-exec@*.service",
        check=False,
    ).stdout
    units: dict[str, dict[str, str]] = {}
    for block in out.split("\n\n"):
        props: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                props[key] = value
        task_id = instance_of(props.get("Id", ""))
        if task_id and props.get("ActiveState") not in IDLE_STATES:
            units[task_id] = props
    return units


def memory_bytes(props: dict[str, str]) -> int | None:
    """MemoryCurrent=, or None where systemd has no number ("[not set]", no accounting)."""
    value = props.get("MemoryCurrent", "")
    return int(value) if value.isdigit() and int(value) != UINT64_MAX else None


def active_since_us(props: dict[str, str]) -> int | None:
    """When the unit became active (else left inactive), CLOCK_MONOTONIC microseconds."""
    for key in ("ActiveEnterTimestampMonotonic", "InactiveExitTimestampMonotonic"):
        value = props.get(key, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


class SystemdLauncher:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.started: set[str] = set()

    def running(self) -> set[str]:
        """Busy instances: any not inactive or failed, plus any with a start job queued
        (after `start --no-block` a unit stays inactive until systemd runs its job)."""
        out = systemctl(
            "list-units",
            "--all",
            "--plain",
            "--no-legend",
            "--no-pager",
            "dispatch-exec@*.service",
            PATH_UNIT,
        ).stdout
        ids = set()
        path_failed = False
        for line in out.splitlines():
            parts = line.split()
            if len(parts) < 4:
                continue
            if parts[0] == PATH_UNIT:
                path_failed = parts[2] == "failed"
                continue
            task_id = instance_of(parts[0])
            if task_id and parts[2] not in IDLE_STATES:
                ids.add(task_id)
        jobs = systemctl(
            "list-jobs",
            "--plain",
            "--no-legend",
            "--no-pager",
            "dispatch-exec@*.service",
            check=False,
        ).stdout
        for line in jobs.splitlines():
            parts = line.split()
            if len(parts) >= 2 and (task_id := instance_of(parts[1])):
                ids.add(task_id)
        if path_failed:
            self._revive_path_unit()
        return ids

    def _revive_path_unit(self) -> None:
        """Invariant 6 belt and braces: should the path unit ever fail, the next pass (from
        the timer) starts it again; starting a failed unit restarts it."""
        self.node.emit(
            "path_unit_failed", f"{PATH_UNIT} had failed; starting it again", level=events.WARNING
        )
        systemctl("reset-failed", PATH_UNIT, check=False)
        systemctl("start", "--no-block", PATH_UNIT, check=False)

    def start(self, task_id: str) -> None:
        # --no-block: promote is a oneshot that must return; the unit runs on its own.
        systemctl("start", "--no-block", unit_name(task_id))
        self.started.add(task_id)

    def stop(self, task_id: str) -> None:
        systemctl("stop", "--no-block", unit_name(task_id), check=False)

    def resume(self, task_id: str, marker: Mapping[str, object]) -> bool:
        return False  # the agent ran in the unit's cgroup: it ended with the unit

    def unit(self, task_id: str) -> str:
        return unit_name(task_id)
