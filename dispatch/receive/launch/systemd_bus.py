"""systemd's manager over its private socket (core/dbus): the four calls the systemd
launcher makes each pass, in-process. Used when this process is root and the socket is
there; otherwise (or once the connection fails) the launcher runs `systemctl`."""

from __future__ import annotations

import os
from typing import Any

from dispatch.core import dbus

OBJECT = "/org/freedesktop/systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"


class Manager:
    def __init__(self, connection: dbus.Connection) -> None:
        self.connection = connection

    @classmethod
    def connect(cls, path: str = dbus.PRIVATE_SOCKET) -> Manager | None:
        """None where the private socket cannot serve us: not root, no systemd as PID 1
        (`dispatch watch` in a container), or a manager that does not answer."""
        if os.geteuid() != 0 or not os.path.exists(path):
            return None
        try:
            return cls(dbus.Connection(path))
        except OSError:
            return None

    def _call(self, member: str, signature: str = "", *args: object) -> list[Any]:
        return self.connection.call(OBJECT, MANAGER, member, signature, *args)

    def units(self, *patterns: str) -> dict[str, str]:
        """Loaded units matching any of `patterns`, in any state: name -> ActiveState (what
        `systemctl list-units --all PATTERN…` shows in its third column)."""
        (units,) = self._call("ListUnitsByPatterns", "asas", [], list(patterns))
        return {str(unit[0]): str(unit[3]) for unit in units}

    def job_units(self) -> set[str]:
        """Units with a job queued or running (`systemctl list-jobs`)."""
        (jobs,) = self._call("ListJobs")
        return {str(job[1]) for job in jobs}

    def start(self, unit: str) -> None:
        # Returns once the job is queued, as `systemctl start --no-block` does.
        self._call("StartUnit", "ss", unit, "replace")

    def stop(self, unit: str) -> None:
        self._call("StopUnit", "ss", unit, "replace")

    def reset_failed(self, unit: str) -> None:
        self._call("ResetFailedUnit", "s", unit)

    def close(self) -> None:
        self.connection.close()
