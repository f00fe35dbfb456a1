"""The systemd launcher's D-Bus client against a real systemd 252 (its private socket, as
root): the calls it makes each pass give what `systemctl` shows, a refused call is one
DBusError, and a task's execution is started with no `systemctl` process."""

from __future__ import annotations

import json

from tests.integration.dispatch_host import VENV_BIN, DispatchHost
from tests.integration.sdhost import SystemdHost

PROBE = """
import json, sys, time
from dispatch.core.dbus import DBusError
from dispatch.receive.launch.systemd_bus import Manager

bus = Manager.connect()
out = {"connected": bus is not None}
bus.start("bus-probe.service")
bus.start("bus-slow.service")
for _ in range(200):  # StartUnit returns once the job is queued, as --no-block does
    out["units"] = bus.units("bus-*.service")
    if out["units"].get("bus-probe.service") == "active":
        break
    time.sleep(0.05)
out["jobs"] = sorted(bus.job_units())
try:
    bus.start("no-such-unit.service")
except DBusError as exc:
    out["error"] = [exc.name, str(exc)]
bus.stop("bus-slow.service")
print(json.dumps(out))
"""

UNITS = {
    "bus-probe.service": "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n",
    # Still starting when the probe lists jobs: its start job is running.
    "bus-slow.service": "[Service]\nType=oneshot\nExecStart=/bin/sleep 30\n",
}


def test_manager_calls_match_systemctl(sd_host: SystemdHost) -> None:
    for name, text in UNITS.items():
        sd_host.install_unit(text, name, reload=False)
    sd_host.daemon_reload()
    out = json.loads(sd_host.run([str(VENV_BIN / "python"), "-c", PROBE]).stdout)
    assert out["connected"]
    assert out["units"]["bus-probe.service"] == "active"
    assert out["units"]["bus-slow.service"] in ("inactive", "activating")  # its job runs
    assert "bus-slow.service" in out["jobs"]
    assert "bus-probe.service" not in out["jobs"]
    name, text = out["error"]
    assert name == "org.freedesktop.systemd1.NoSuchUnit"
    assert "no-such-unit.service" in text
    assert sd_host.unit_property("bus-probe.service", "ActiveState") == "active"
    sd_host.wait_for(
        lambda: sd_host.unit_property("bus-slow.service", "ActiveState") in ("inactive", "failed"),
        timeout=10,
        what="bus-slow.service stopped over the bus",
    )


TRACE = "/run/dispatch/trace"
WRAPPER = '#!/bin/sh\necho "$@" >> /run/dispatch/systemctl-calls\nexec /bin/systemctl "$@"\n'
DROPIN = f"""[Service]
Environment=PATH={TRACE}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# The control: this one does go through the wrapper, so an empty trace means something.
ExecStartPre=/bin/sh -c 'systemctl --version > /dev/null'
"""


def test_an_execution_starts_without_systemctl(node_host: SystemdHost) -> None:
    d = DispatchHost(node_host)
    d.setup(timer=False)
    # A systemctl first on the pass's PATH that leaves a trace of every call.
    node_host.write_file(f"{TRACE}/systemctl", WRAPPER, mode=0o755)
    node_host.write_file("/run/systemd/system/dispatch-watch.service.d/trace.conf", DROPIN)
    node_host.daemon_reload()
    task_id = d.send("over the bus")
    result = d.wait(task_id, timeout=60)
    assert result["status"] == "ok", json.dumps(result)
    calls = node_host.run("cat /run/dispatch/systemctl-calls").stdout
    assert "--version" in calls  # the wrapper was on the pass's PATH
    assert "dispatch-exec@" not in calls
    assert "list-units" not in calls
    lost = node_host.journalctl("DISPATCH_EVENT=systemd_bus_lost", "-o", "cat")
    assert "systemctl" not in lost
