"""The systemd launcher's choice between systemd's private socket and `systemctl`: both give
the same busy set; a connection that fails hands over to `systemctl` for good, saying so
once; a start systemd refuses raises, so the task stays queued. (The calls themselves run
against a real systemd in tests/integration/test_systemd_bus.py.)"""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from dispatch.core.dbus import DBusError
from dispatch.core.errors import DispatchError
from dispatch.receive.launch import systemd
from tests.conftest import Pair

BUSY = "11111111-1111-4111-8111-111111111111"
QUEUED = "22222222-2222-4222-8222-222222222222"
DONE = "33333333-3333-4333-8333-333333333333"
LIST_UNITS = (
    f"dispatch-exec@{BUSY}.service loaded active running x\n"
    f"dispatch-exec@{DONE}.service loaded inactive dead x\n"
    "dispatch-watch.path loaded active waiting x\n"
)
LIST_JOBS = f"7 dispatch-exec@{QUEUED}.service start waiting\n"


class FakeManager:
    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.started: list[str] = []
        self.closed = False

    def _maybe_fail(self) -> None:
        if self.fail is not None:
            raise self.fail

    def units(self, *patterns: str) -> dict[str, str]:
        self._maybe_fail()
        return {
            f"dispatch-exec@{BUSY}.service": "active",
            f"dispatch-exec@{DONE}.service": "inactive",
            systemd.PATH_UNIT: "active",
        }

    def job_units(self) -> set[str]:
        return {f"dispatch-exec@{QUEUED}.service"}

    def start(self, unit: str) -> None:
        self._maybe_fail()
        self.started.append(unit)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def systemctl_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    calls: list[tuple[str, ...]] = []

    def fake(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        out = {"list-units": LIST_UNITS, "list-jobs": LIST_JOBS}.get(args[0], "")
        return subprocess.CompletedProcess(["systemctl", *args], 0, out, "")

    monkeypatch.setattr(systemd, "systemctl", fake)
    return calls


def launcher(pair: Pair, manager: FakeManager | None) -> systemd.SystemdLauncher:
    launch = systemd.SystemdLauncher(pair.receiver.node())
    launch._bus = manager  # type: ignore[assignment]  # as Manager.connect() would answer
    launch._connected = True
    return launch


def test_the_bus_and_systemctl_agree(pair: Pair, systemctl_calls: list[tuple[str, ...]]) -> None:
    over_bus = launcher(pair, FakeManager())
    assert over_bus.running() == {BUSY, QUEUED}
    assert systemctl_calls == []
    assert launcher(pair, None).running() == {BUSY, QUEUED}
    assert [call[0] for call in systemctl_calls] == ["list-units", "list-jobs"]


def test_a_lost_connection_falls_back_to_systemctl_for_good(
    pair: Pair, systemctl_calls: list[tuple[str, ...]], capsys: pytest.CaptureFixture[str]
) -> None:
    broken = FakeManager(fail=ConnectionResetError("reset"))
    launch = launcher(pair, broken)
    assert launch.running() == {BUSY, QUEUED}
    launch.start(QUEUED)
    assert broken.closed
    assert [call[0] for call in systemctl_calls] == ["list-units", "list-jobs", "start"]
    assert systemctl_calls[-1] == ("start", "--no-block", f"dispatch-exec@{QUEUED}.service")
    assert launch.started == {QUEUED}
    assert capsys.readouterr().err.count("systemd_bus_lost") == 1


def test_a_start_systemd_refuses_raises(pair: Pair, systemctl_calls: list[tuple[str, ...]]) -> None:
    refused = FakeManager(fail=DBusError("org.freedesktop.systemd1.NoSuchUnit", "not found"))
    launch = launcher(pair, refused)
    with pytest.raises(DispatchError, match=r"cannot start dispatch-exec@.*NoSuchUnit"):
        launch.start(QUEUED)
    assert launch.started == set()
    assert systemctl_calls == []  # refused is an answer, not a lost connection
