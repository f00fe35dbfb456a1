"""An execution's chain box (/run/dispatch/exec/<id>/, receive/courier.py) goes with its unit,
even when the executor was killed before it could remove it; a link planted in it is
removed, never followed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.dispatch_host import DispatchHost
from tests.integration.sdhost import SystemdHost


@pytest.fixture
def host(tmp_path: Path) -> Iterator[SystemdHost]:
    (tmp_path / "mnt-dispatch").mkdir(mode=0o755)
    sd = SystemdHost(
        "gpubox",
        tmp_path / "sdhost",
        binds={
            "/etc/dispatch": tmp_path / "etc-dispatch",
            "/var/lib/dispatch": tmp_path / "var-lib-dispatch",
            "/mnt/dispatch": tmp_path / "mnt-dispatch",
        },
    )
    try:
        sd.start()
        yield sd
    finally:
        sd.poweroff()


def test_a_killed_executions_box_is_removed_when_its_unit_stops(host: SystemdHost) -> None:
    d = DispatchHost(host)
    d.setup(timer=False)
    task_id = d.send("sleep=60")
    box = f"/run/dispatch/exec/{task_id}"
    unit = f"dispatch-exec@{task_id}.service"
    d.wait_until(
        "the box", lambda: host.run(["test", "-d", f"{box}/outbox"], check=False).returncode == 0
    )
    # What an agent could leave there: a link to something that must survive.
    host.run(["mkdir", "-p", "/var/lib/dispatch/keep"])
    host.run(["touch", "/var/lib/dispatch/keep/file"])
    host.run(["ln", "-s", "/var/lib/dispatch/keep", f"{box}/outbox/link"])
    host.run(["ln", "-s", "/var/lib/dispatch/keep/file", f"{box}/state/file-link"])
    # The executor dies with its agent (SIGKILL to the whole unit): it removes nothing.
    host.systemctl("kill", "--signal=SIGKILL", unit)
    d.wait_until("the unit gone", lambda: d.unit_state(unit)[0] in ("inactive", "failed"))
    assert host.run(["test", "-e", box], check=False).returncode != 0, "the box stayed"
    assert host.run(["ls", "/var/lib/dispatch/keep"]).stdout.split() == ["file"]
