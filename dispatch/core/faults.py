"""Faults this node keeps hitting, recorded in node-local state until they clear: a lane it
refuses (a stage directory that is a symbolic link, not a directory, or someone else's), an
entry it cannot move. `status` and `doctor` show them; the passes go on with the rest."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dispatch.core.fsio import atomic_write


@dataclass(frozen=True)
class Fault:
    key: str  # what is at fault: a lane name, or "<lane>/<dir>/<name>"
    reason: str
    message: str
    since: float
    count: int


@dataclass(frozen=True)
class Faults:
    path: Path

    def _file(self, key: str) -> Path:
        return self.path / key.replace("/", "%")

    def record(self, key: str, reason: str, message: str) -> Fault:
        """Record (or count again) a fault; the first sighting's time is kept."""
        old = self.get(key)
        fault = Fault(
            key,
            reason,
            message[:500],
            old.since if old is not None else time.time(),
            (old.count if old is not None else 0) + 1,
        )
        self.path.mkdir(mode=0o700, exist_ok=True)
        atomic_write(self._file(key), json.dumps(fault.__dict__).encode(), mode=0o600)
        return fault

    def clear(self, key: str) -> bool:
        try:
            os.unlink(self._file(key))
        except FileNotFoundError:
            return False
        return True

    def get(self, key: str) -> Fault | None:
        try:
            data: dict[str, Any] = json.loads(self._file(key).read_bytes())
            return Fault(
                str(data["key"]),
                str(data["reason"]),
                str(data["message"]),
                float(data["since"]),
                int(data["count"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def all(self) -> list[Fault]:
        try:
            names = sorted(os.listdir(self.path))
        except OSError:
            return []
        found = []
        for name in names:
            if name.startswith("."):
                continue
            fault = self.get(name.replace("%", "/"))
            if fault is not None:
                found.append(fault)
        return found
