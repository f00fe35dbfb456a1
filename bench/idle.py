"""What each system costs while nothing is sent: CPU time, resident memory and the number of
its processes over a window, on every host of a site.

CPU: the cgroup v2 `cpu.stat` usage of the slices that hold the system's units (see
systems.DISPATCH_SLICES / ORIGINAL_SLICES: dispatch-watch.service, dispatch-heartbeat.service
and every dispatch-exec@; the original's watcher unit). A slice keeps counting the CPU of
units that have ended, so every short-lived promote pass is in it. For the original, the
utime+stime of its watcher processes (/proc/<pid>/stat) is kept as a check.
Memory: every sample sums the VmRSS (/proc/<pid>/status) of the system's live processes and
the memory cgroup usage (MemoryCurrent) of its live units.
Processes: every sample counts the processes in the system's units (by their cgroup) on
every host; the report gives the time average, the share of samples with any, and the
longest time one pid was seen alive.
The whole hosts' CPU (systemd, journald, sshfs: everything in their cgroup subtrees) is
measured too, since a system can move work into systemd itself."""

from __future__ import annotations

import glob
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import clk_tck
from bench.systems import DISPATCH_SLICES, ORIGINAL_SLICES
from tests.integration.sdhost import SystemdHost, _pids_in_pidns

SAMPLE_S = 0.05


def _slices(system: str) -> tuple[str, ...]:
    return DISPATCH_SLICES if system == "dispatch" else ORIGINAL_SLICES


def _cgroup_path(pid: int) -> str:
    """The pid's cgroup v2 path (the `0::` line)."""
    try:
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:]
    except OSError:
        pass
    return ""


def belongs(system: str, cgroup: str) -> bool:
    return any(f"/{s.rsplit('/', 1)[-1]}/" in cgroup + "/" for s in _slices(system))


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu_ticks(pid: int) -> int:
    """utime + stime of a live process, in clock ticks."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def _hierarchy(host: SystemdHost, probe: str) -> str | None:
    """The host's cgroup directory in the hierarchy that has `probe` (a controller file)."""
    for directory in host.cgroup_dirs():
        if os.path.exists(os.path.join(directory, probe)):
            return directory
    return None


def _usage_usec(path: str) -> int:
    try:
        with open(os.path.join(path, "cpu.stat"), encoding="ascii") as f:
            for line in f:
                if line.startswith("usage_usec "):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _read_int(path: str) -> int:
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 0


@dataclass
class Sample:
    count: int
    rss_kib: int
    cgroup_bytes: int


@dataclass
class IdleWindow:
    system: str
    seconds: float
    samples: list[Sample] = field(default_factory=list)
    pid_seen: dict[tuple[str, int], tuple[float, float, str]] = field(default_factory=dict)
    cpu_s: float = 0.0
    host_cpu_s: float = 0.0
    proc_cpu_s: float | None = None  # the original's watchers, from /proc/<pid>/stat

    def summary(self) -> dict[str, Any]:
        n = max(1, len(self.samples))
        longest = max(self.pid_seen.values(), key=lambda v: v[1] - v[0], default=None)
        return {
            "seconds": self.seconds,
            "samples": len(self.samples),
            "cpu_s": self.cpu_s,
            "cpu_percent_of_one_core": 100 * self.cpu_s / self.seconds,
            "proc_stat_cpu_s": self.proc_cpu_s,
            "host_cpu_s": self.host_cpu_s,
            "rss_mean_kib": sum(s.rss_kib for s in self.samples) / n,
            "rss_max_kib": max((s.rss_kib for s in self.samples), default=0),
            "cgroup_mean_bytes": sum(s.cgroup_bytes for s in self.samples) / n,
            "cgroup_max_bytes": max((s.cgroup_bytes for s in self.samples), default=0),
            "procs_mean": sum(s.count for s in self.samples) / n,
            "procs_max": max((s.count for s in self.samples), default=0),
            "procs_time_share": sum(1 for s in self.samples if s.count) / n,
            "distinct_pids": len(self.pid_seen),
            "longest_pid_s": longest[1] - longest[0] if longest else 0.0,
            "longest_pid_cmd": longest[2][:160] if longest else "",
        }


def _unit_memory_dirs(host: SystemdHost, system: str) -> list[str]:
    memory = _hierarchy(host, "memory.usage_in_bytes")
    if memory is None:
        return []
    return [d for s in _slices(system) for d in glob.glob(f"{memory}/{s}/*.service")]


def _sample(hosts: list[SystemdHost], system: str, window: IdleWindow, now: float) -> None:
    count = rss = cgroup = 0
    for host in hosts:
        if host.pidns is None:
            continue
        for pid in _pids_in_pidns(host.pidns):
            if not belongs(system, _cgroup_path(pid)):
                continue
            count += 1
            rss += _rss_kib(pid)
            key = (host.name, pid)
            first = window.pid_seen[key][0] if key in window.pid_seen else now
            window.pid_seen[key] = (first, now, _cmdline(pid))
        for directory in _unit_memory_dirs(host, system):
            cgroup += _read_int(os.path.join(directory, "memory.usage_in_bytes"))
    window.samples.append(Sample(count, rss, cgroup))


def _system_usec(hosts: list[SystemdHost], system: str) -> int:
    total = 0
    for host in hosts:
        unified = _hierarchy(host, "cgroup.subtree_control")
        if unified is not None:
            total += sum(_usage_usec(f"{unified}/{s}") for s in _slices(system))
    return total


def _hosts_usec(hosts: list[SystemdHost]) -> int:
    return sum(_usage_usec(u) for h in hosts if (u := _hierarchy(h, "cgroup.subtree_control")))


def measure(hosts: list[SystemdHost], system: str, seconds: float) -> IdleWindow:
    """Sample for `seconds` with the system already running on `hosts`."""
    window = IdleWindow(system, seconds)
    watchers: list[int] = []
    if system == "original":
        watchers = [
            pid
            for h in hosts
            for pid in _pids_in_pidns(h.pidns or "")
            if "dispatch_watcher.py" in _cmdline(pid)
        ]
    ticks0 = {pid: _cpu_ticks(pid) for pid in watchers}
    system0, hosts0 = _system_usec(hosts, system), _hosts_usec(hosts)
    stop = threading.Event()
    began = time.time()

    def sampler() -> None:
        while not stop.is_set():
            _sample(hosts, system, window, time.time())
            stop.wait(SAMPLE_S)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    time.sleep(seconds)
    stop.set()
    thread.join(10)
    window.seconds = time.time() - began
    window.cpu_s = (_system_usec(hosts, system) - system0) / 1e6
    window.host_cpu_s = (_hosts_usec(hosts) - hosts0) / 1e6
    if watchers:
        window.proc_cpu_s = sum(_cpu_ticks(pid) - t for pid, t in ticks0.items()) / clk_tck()
    return window
