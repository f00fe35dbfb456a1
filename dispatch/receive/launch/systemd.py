"""Executions as `dispatch-exec@<id>.service` instances, counted from systemd's unit states."""

from __future__ import annotations

from collections.abc import Mapping

from dispatch.core import events
from dispatch.core.dbus import DBusError
from dispatch.core.errors import DispatchError
from dispatch.core.node import Node
from dispatch.core.runner import systemctl
from dispatch.receive import exec_plan
from dispatch.receive.launch.systemd_bus import Manager

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
    """Over systemd's private socket when it can (root, systemd as PID 1): no `systemctl`
    process per call, which cost 31 to 54 ms of each pass that starts an execution. Should
    that connection fail, this launcher and every later call use `systemctl`."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.started: set[str] = set()
        self._bus: Manager | None = None
        self._connected = False
        self._stopping: set[str] = set()

    def with_node(self, node: Node) -> SystemdLauncher:
        """This launcher for the next round of a promoter that stays (a fresh Node): the
        same connection to systemd, which costs a round ~11 ms to open (authentication and
        systemd's set-up of it, measured with py-spy on a staying promoter), or a new try
        where it had failed."""
        other = SystemdLauncher(node)
        if self._bus is not None:
            other._bus, other._connected = self._bus, True
        return other

    def _manager(self) -> Manager | None:
        if not self._connected:
            self._connected = True
            self._bus = Manager.connect()
        return self._bus

    def _bus_failed(self, exc: OSError) -> None:
        if self._bus is not None:
            self._bus.close()
        self._bus = None
        self.node.emit(
            "systemd_bus_lost",
            f"systemd's private socket failed ({exc}); using systemctl",
            level=events.WARNING,
        )

    def running(self) -> set[str]:
        """Busy instances: any not inactive or failed, plus any with a start job queued
        (after `start --no-block` a unit stays inactive until systemd runs its job)."""
        states, job_units = self._unit_states()
        ids = {
            task_id
            for unit, state in states.items()
            if (task_id := instance_of(unit)) and state not in IDLE_STATES
        }
        self._stopping = {
            task_id
            for unit, state in states.items()
            if (task_id := instance_of(unit)) and state == "deactivating"
        }
        ids.update(task_id for unit in job_units if (task_id := instance_of(unit)))
        if states.get(PATH_UNIT) == "failed":
            self._revive_path_unit()
        return ids

    def stopping(self) -> set[str]:
        return set(self._stopping)

    def _unit_states(self) -> tuple[dict[str, str], set[str]]:
        """(unit -> ActiveState for the exec instances and the path unit, units with a job)."""
        bus = self._manager()
        if bus is not None:
            try:
                return bus.units("dispatch-exec@*.service", PATH_UNIT), bus.job_units()
            except OSError as exc:
                self._bus_failed(exc)
        out = systemctl(
            "list-units",
            "--all",
            "--plain",
            "--no-legend",
            "--no-pager",
            "dispatch-exec@*.service",
            PATH_UNIT,
        ).stdout
        states = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 4:
                states[parts[0]] = parts[2]
        jobs = systemctl(
            "list-jobs",
            "--plain",
            "--no-legend",
            "--no-pager",
            "dispatch-exec@*.service",
            check=False,
        ).stdout
        job_units = {parts[1] for line in jobs.splitlines() if len(parts := line.split()) >= 2}
        return states, job_units

    def _revive_path_unit(self) -> None:
        """Invariant 6 belt and braces: should the path unit ever fail, the next pass (from
        the timer) starts it again; starting a failed unit restarts it."""
        self.node.emit(
            "path_unit_failed", f"{PATH_UNIT} had failed; starting it again", level=events.WARNING
        )
        bus = self._manager()
        if bus is not None:
            try:
                bus.reset_failed(PATH_UNIT)
                bus.start(PATH_UNIT)
                return
            except DBusError:
                return  # as systemctl's check=False: the next pass tries again
            except OSError as exc:
                self._bus_failed(exc)
        systemctl("reset-failed", PATH_UNIT, check=False)
        systemctl("start", "--no-block", PATH_UNIT, check=False)

    def start(self, task_id: str) -> None:
        # Its agent starts before `dispatch exec` loads the rest (receive/quickstart.py).
        planned = exec_plan.write(self.node, task_id)
        try:
            self._start_unit(task_id)
        except BaseException:
            if planned:
                exec_plan.drop(task_id)
            raise

    def _start_unit(self, task_id: str) -> None:
        # --no-block: promote is a oneshot that must return; the unit runs on its own.
        bus = self._manager()
        if bus is not None:
            try:
                bus.start(unit_name(task_id))
            except DBusError as exc:
                raise DispatchError(f"cannot start {unit_name(task_id)}: {exc}") from None
            except OSError as exc:
                self._bus_failed(exc)
            else:
                self.started.add(task_id)
                return
        systemctl("start", "--no-block", unit_name(task_id))
        self.started.add(task_id)

    def stop(self, task_id: str) -> None:
        bus = self._manager()
        if bus is not None:
            try:
                bus.stop(unit_name(task_id))
                return
            except DBusError:
                return  # not loaded: nothing to stop (systemctl's check=False)
            except OSError as exc:
                self._bus_failed(exc)
        systemctl("stop", "--no-block", unit_name(task_id), check=False)

    def resume(self, task_id: str, marker: Mapping[str, object]) -> bool:
        return False  # the agent ran in the unit's cgroup: it ended with the unit

    def unit(self, task_id: str) -> str:
        return unit_name(task_id)
