"""Tests of the systemd-in-a-namespace harness itself: it must boot a real systemd whose limits,
journal and lifecycle behave as on a host, without acting on the machine it runs on."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.sdhost import SystemdHost

# Prints "allocated ok", a string its own command line (logged by systemd) does not contain.
ALLOC_200M = "b = b'x' * (200 * 1024 * 1024); print('allocated', 'ok', len(b))"

ECHO_TEMPLATE = """\
[Unit]
Description=sdhost echo %i

[Service]
Type=oneshot
ExecStart=/bin/echo "hello from %i"
LogExtraFields=FOO=%i
"""

# Ignores SIGTERM and has no stop timeout: systemd alone would wait for it forever.
STUBBORN_UNIT = """\
[Service]
ExecStart=/bin/sh -c 'trap "" TERM; while :; do sleep 1; done'
TimeoutStopSec=infinity
"""


def journal_listing() -> dict[str, tuple[int, int]]:
    """Size and mtime of /var/log/journal and everything in it, on the machine."""
    listing: dict[str, tuple[int, int]] = {}
    if os.path.isdir("/var/log/journal"):
        st = os.stat("/var/log/journal")
        listing["/var/log/journal"] = (st.st_size, st.st_mtime_ns)
    for dirpath, dirnames, filenames in os.walk("/var/log/journal"):
        for entry in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, entry))
            listing[os.path.join(dirpath, entry)] = (st.st_size, st.st_mtime_ns)
    return listing


@pytest.fixture
def old_tmp_canary() -> Iterator[Path]:
    """A file in the machine's /tmp, aged so that any tmpfiles clean would also remove it."""
    fd, name = tempfile.mkstemp(prefix="sdhost-canary-", dir="/tmp")
    os.close(fd)
    canary = Path(name)
    month_ago = time.time() - 30 * 24 * 3600
    os.utime(canary, (month_ago, month_ago))
    yield canary
    canary.unlink(missing_ok=True)


def test_boot_reaches_running(sd_host: SystemdHost, tmp_path: Path) -> None:
    assert sd_host.state == "running", f"failed units: {sd_host.failed_units}"
    assert sd_host.failed_units == []
    assert sd_host.boot_seconds is not None and sd_host.boot_seconds < 30
    assert sd_host.run(["systemctl", "is-system-running"]).stdout.strip() == "running"
    assert sd_host.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"

    assert sd_host.run(["hostname"]).stdout.strip() == "host-a"
    assert socket.gethostname() != "host-a"
    inner_id = sd_host.run(["cat", "/etc/machine-id"]).stdout.strip()
    assert inner_id == sd_host.machine_id
    assert inner_id != Path("/etc/machine-id").read_text().strip()

    # The bound directories are the fixture's, seen only inside the namespace.
    sd_host.run("echo probe > /etc/dispatch/probe && echo state > /var/lib/dispatch/probe")
    assert (tmp_path / "etc-dispatch" / "probe").read_text() == "probe\n"
    assert (tmp_path / "var-lib-dispatch" / "probe").read_text() == "state\n"
    assert not Path("/etc/dispatch/probe").exists()
    assert not Path("/var/lib/dispatch/probe").exists()


def test_memory_max_kills_the_unit_over_its_limit(sd_host: SystemdHost) -> None:
    over = sd_host.run(
        ["systemd-run", "--unit=t1", "-p", "MemoryMax=50M", "--wait", sd_host.python, "-c",
         ALLOC_200M],
        check=False,
    )  # fmt: skip
    assert over.returncode != 0, over
    # cgroup v1 has no memory.events: the OOM kill shows as a plain SIGKILL there.
    assert sd_host.unit_property("t1", "Result") in ("oom-kill", "signal")
    assert sd_host.unit_property("t1", "ExecMainStatus") == "9"
    assert "allocated ok" not in sd_host.journalctl("-u", "t1", "-o", "cat")

    # Control: the same allocation under a limit it fits in succeeds, so the limit killed t1.
    sd_host.run(
        ["systemd-run", "--unit=t2", "-p", "MemoryMax=400M", "--wait", sd_host.python, "-c",
         ALLOC_200M],
    )  # fmt: skip
    assert sd_host.unit_property("t2", "Result") == "success"
    assert sd_host.unit_property("t2", "ExecMainStatus") == "0"
    sd_host.wait_for(
        lambda: "allocated ok" in sd_host.journalctl("-u", "t2", "-o", "cat"), 10, what="t2 output"
    )


def test_template_unit_tags_its_journal_lines(sd_host: SystemdHost, tmp_path: Path) -> None:
    unit_file = tmp_path / "sdh-echo@.service"
    unit_file.write_text(ECHO_TEMPLATE)
    assert sd_host.install_unit(unit_file) == "sdh-echo@.service"
    assert (
        sd_host.unit_property("sdh-echo@x.service", "FragmentPath")
        == "/run/systemd/system/sdh-echo@.service"
    )
    # The namespace's /run is its own.
    assert not Path("/run/systemd/system/sdh-echo@.service").exists()

    sd_host.systemctl("start", "sdh-echo@x.service", "sdh-echo@y.service")

    def tagged(value: str) -> str:
        return sd_host.journalctl(f"FOO={value}", "-o", "cat")

    sd_host.wait_for(lambda: "hello from x" in tagged("x"), 10, what="FOO=x line")
    sd_host.wait_for(lambda: "hello from y" in tagged("y"), 10, what="FOO=y line")
    assert "hello from y" not in tagged("x")
    assert "hello from x" not in tagged("y")


def test_machine_tmp_and_journal_are_untouched(tmp_path: Path, old_tmp_canary: Path) -> None:
    before = journal_listing()
    with SystemdHost("host-canary", tmp_path / "sdhost") as host:
        assert host.unit_property("systemd-tmpfiles-setup.service", "LoadState") == "masked"
        assert host.run(["test", "-e", str(old_tmp_canary)]).returncode == 0
        host.run(["systemd-cat", "-t", "sdhost-canary"], input="to the journal\n")
        host.wait_for(
            lambda: "to the journal" in host.journalctl("-t", "sdhost-canary", "-o", "cat"),
            10,
            what="the canary journal line",
        )
        # Ask journald to move its runtime journal to persistent storage, as the masked
        # systemd-journal-flush.service would: it must still not reach the machine.
        host.run(["journalctl", "--flush"], check=False)
        host.run(["journalctl", "--sync"], check=False)
    assert old_tmp_canary.exists()
    assert journal_listing() == before


def test_poweroff_leaves_nothing_running(tmp_path: Path) -> None:
    host = SystemdHost("host-off", tmp_path / "sdhost")
    try:
        host.start()
        systemd_pid = host.pid
        host.run(["systemd-run", "--unit=sleeper", "sleep", "infinity"])
        # An orphan outside any unit: reparented to the namespace's PID 1.
        host.run("sleep 1000 </dev/null >/dev/null 2>&1 &")
        assert len(host.namespace_pids()) >= 4  # systemd, journald, two sleeps
        assert host.cgroup_dirs()
        t0 = time.monotonic()
        host.poweroff()
        elapsed = time.monotonic() - t0
    finally:
        host.poweroff()
    assert not host.last_poweroff_forced
    assert elapsed < 10
    assert not host.running
    assert host.namespace_pids() == []
    assert host.cgroup_dirs() == []
    assert not Path(f"/proc/{systemd_pid}").exists() or host.pidns != os.readlink(
        f"/proc/{systemd_pid}/ns/pid"
    )
    host.poweroff()  # idempotent
    host.stop()


def test_poweroff_kills_a_host_that_will_not_stop(tmp_path: Path) -> None:
    host = SystemdHost("host-stuck", tmp_path / "sdhost")
    try:
        host.start()
        host.install_unit(STUBBORN_UNIT, "stubborn.service")
        host.systemctl("start", "stubborn.service")
        assert host.unit_property("stubborn.service", "ActiveState") == "active"
        t0 = time.monotonic()
        host.stop(timeout=3)
        elapsed = time.monotonic() - t0
    finally:
        host.poweroff()
    assert host.last_poweroff_forced
    assert elapsed < 15
    assert host.namespace_pids() == []
    assert host.cgroup_dirs() == []


def test_reboot_keeps_bound_state_and_renews_run(sd_host: SystemdHost, tmp_path: Path) -> None:
    sd_host.write_file("/var/lib/dispatch/ledger", "entry-1\n")
    sd_host.write_file("/run/dispatch/marker", "volatile\n")
    old_pidns, old_cgroup = sd_host.pidns, sd_host.cgroup_name
    machine_id = sd_host.run(["cat", "/etc/machine-id"]).stdout

    sd_host.reboot()

    assert sd_host.state == "running", f"failed units: {sd_host.failed_units}"
    assert sd_host.pidns != old_pidns
    assert not any(Path(p).exists() for p in Path("/sys/fs/cgroup").glob(f"*/{old_cgroup}"))
    assert sd_host.run(["cat", "/var/lib/dispatch/ledger"]).stdout == "entry-1\n"
    assert (tmp_path / "var-lib-dispatch" / "ledger").read_text() == "entry-1\n"
    assert sd_host.run(["test", "-e", "/run/dispatch/marker"], check=False).returncode == 1
    assert sd_host.run(["hostname"]).stdout.strip() == "host-a"
    assert sd_host.run(["cat", "/etc/machine-id"]).stdout == machine_id


def test_net_host_sees_only_its_loopback(tmp_path: Path) -> None:
    with SystemdHost("host-net", tmp_path / "sdhost", net=True) as host:
        assert host.state == "running", f"failed units: {host.failed_units}"
        links = host.run(["ip", "-o", "link", "show"]).stdout.splitlines()
        assert [line.split(":")[1].strip() for line in links] == ["lo"]
        assert "UP" in links[0]
        # sysfs too, not just netlink: the machine's /sys would list the machine's devices.
        assert host.run(["ls", "/sys/class/net"]).stdout.split() == ["lo"]
        assert host.run(["systemd-run", "--wait", "-p", "MemoryMax=20M", "/bin/true"])


def test_two_hosts_have_separate_names_and_cgroups(tmp_path: Path) -> None:
    with (
        SystemdHost("host-a", tmp_path / "a") as a,
        SystemdHost("host-b", tmp_path / "b") as b,
    ):
        assert a.run(["hostname"]).stdout.strip() == "host-a"
        assert b.run(["hostname"]).stdout.strip() == "host-b"
        # The same unit name on both hosts must not share a cgroup (nor its limits).
        a.run(["systemd-run", "--unit=same", "-p", "MemoryMax=64M", "sleep", "infinity"])
        b.run(["systemd-run", "--unit=same", "-p", "MemoryMax=128M", "sleep", "infinity"])
        limits = {}
        for host in (a, b):
            cgroup = host.unit_property("same.service", "ControlGroup")
            assert cgroup == f"/{host.cgroup_name}/system.slice/same.service"
            limit = Path(f"/sys/fs/cgroup/memory{cgroup}/memory.limit_in_bytes")
            limits[host.name] = int(limit.read_text())
        assert limits == {"host-a": 64 << 20, "host-b": 128 << 20}

        a.poweroff()
        assert b.unit_property("same.service", "ActiveState") == "active"
        assert b.run(["systemctl", "is-system-running"]).stdout.strip() == "running"
