"""Boot a real systemd as PID 1 of a private PID+mount+UTS+IPC namespace, for integration tests.

The machines that run these tests have no systemd as PID 1, but systemd 252 is installed and
the tests run as root. A systemd booted like this is a full system manager (path units,
templates, cgroup limits, journald), but it shares the machine's root filesystem, devices and
cgroup hierarchies. Everything below that looks defensive is there because the first naive boot
acted on the machine itself:

- boot units that clean /tmp or flush the journal to /var/log/journal are masked, journald is
  volatile, and /var/log/journal is hidden behind a tmpfs inside the namespace;
- systemd remounts /sys/fs/cgroup read-only (a superblock change the machine shares) and leaves
  init.scope/system.slice cgroups at the root of every hierarchy, where a second host would
  share them: each host gets its own /sys/fs/cgroup tmpfs and its own cgroup subtree instead;
- /etc/hostname and /etc/machine-id are bound per host, so two hosts differ as real ones do.

The recipe in short: `unshare --pid --fork --mount --mount-proc --uts --ipc` runs a boot
script (written by `_write_boot_files`) that moves into its own cgroup subtree, mounts a
fresh /run with the masks and journald settings below, binds the host's files and
directories, and execs systemd as PID 1; commands enter with `nsenter`.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TypeVar

T = TypeVar("T")

SYSTEMD = Path("/lib/systemd/systemd")

# The harness may have been started through a pyenv shim; shims fork helper processes, which
# break low TasksMax= limits and slow every start. Units and commands get the interpreter itself.
REAL_PYTHON = os.path.realpath(sys.executable)

# Boot units that act on the machine rather than on the namespace.
MASKED_UNITS: tuple[str, ...] = (
    # Empty the machine's /tmp (and every test's temp dir with it).
    "systemd-tmpfiles-setup.service",
    "systemd-tmpfiles-setup-dev.service",
    "systemd-tmpfiles-clean.timer",
    "systemd-tmpfiles-clean.service",
    "tmp.mount",
    # Write kernel, module, binfmt and clock state, which no namespace isolates.
    "systemd-sysctl.service",
    "systemd-modules-load.service",
    "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount",
    "proc-sys-fs-binfmt_misc.mount",
    "kmod-static-nodes.service",
    "systemd-timesyncd.service",
    "systemd-pstore.service",
    # Write to the machine's root filesystem.
    "systemd-remount-fs.service",
    "systemd-sysusers.service",
    "systemd-journal-flush.service",
    "systemd-random-seed.service",
    "systemd-update-utmp.service",
    "systemd-machine-id-commit.service",
    "systemd-firstboot.service",
    "systemd-hwdb-update.service",
    "systemd-journal-catalog-update.service",
    "systemd-update-done.service",
    "ldconfig.service",
    # The machine's own maintenance (fstrim and e2scrub on its disk, apt, man-db, backups).
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "man-db.timer",
    "logrotate.timer",
)

JOURNALD_CONF = """\
[Journal]
# Never write the machine's /var/log/journal, even if something asks for a flush.
Storage=volatile
# /dev/kmsg is the machine's: its kernel log is not this host's.
ReadKMsg=no
"""

DEFAULT_ENV: Mapping[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "SYSTEMD_PAGER": "cat",
    "SYSTEMD_COLORS": "0",
}

_CGROUP_ROOT = "/sys/fs/cgroup"


class SystemdHostError(RuntimeError):
    """The namespace could not be booted or shut down cleanly."""


def wait_for(
    predicate: Callable[[], T], timeout: float, interval: float = 0.1, what: str = ""
) -> T:
    """Poll `predicate` until it returns something truthy and return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what or predicate!r}"
                f" (last value: {value!r})"
            )
        time.sleep(interval)


def _cgroup_hierarchies() -> list[tuple[str, str, frozenset[str]]]:
    """(mount point, fs type, super options) of the cgroup mounts at or under /sys/fs/cgroup."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            # Optional fields end at "-"; fs type, source and super options follow it.
            sep = fields.index("-")
            mount_point, fstype = fields[4], fields[sep + 1]
            if fstype not in ("cgroup", "cgroup2"):
                continue
            if mount_point != _CGROUP_ROOT and os.path.dirname(mount_point) != _CGROUP_ROOT:
                continue
            found.append((mount_point, fstype, frozenset(fields[sep + 3].split(","))))
    return found


def _ns_id(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _pids_in_pidns(pidns: str) -> list[int]:
    """Live processes of a PID namespace; zombies are dead and only wait for a reaper."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or _ns_id(int(entry)) != pidns:
            continue
        try:
            stat_line = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if stat_line[stat_line.rindex(")") + 2] != "Z":
            pids.append(int(entry))
    return pids


def _first_child(pid: int) -> int | None:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def _child_pidns(pid: int) -> str | None:
    child = _first_child(pid)
    return _ns_id(child) if child is not None else None


def _kill_in_pidns(pid: int, pidns: str) -> None:
    """SIGKILL `pid` only if it still belongs to `pidns`: a recycled pid is someone else's."""
    if _ns_id(pid) == pidns:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _die_with_parent() -> None:
    # If pytest is killed outright, unshare gets SIGKILL and (--kill-child) takes the
    # namespace's systemd, hence the whole namespace, with it.
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


def _remove_stale_cgroups(min_age: float = 60) -> None:
    """Remove empty sdhost.* subtrees left by a harness that was killed before its cleanup.

    A live host always has its systemd in its subtree; an empty one younger than `min_age`
    may be a host between creating its cgroup and moving into it, so it is left alone.
    """
    hierarchies = [mp for mp, _t, _o in _cgroup_hierarchies()]
    names = {
        entry
        for mp in hierarchies
        for entry in os.listdir(mp)
        if entry.startswith("sdhost.") and os.path.isdir(os.path.join(mp, entry))
    }
    now = time.time()
    for name in names:
        tops = [os.path.join(mp, name) for mp in hierarchies]
        tops = [t for t in tops if os.path.isdir(t)]
        try:
            if any(now - os.stat(t).st_mtime < min_age for t in tops):
                continue
            if any(_cgroup_tree_has_procs(t) for t in tops):
                continue
        except OSError:
            continue
        for top in tops:
            for dirpath, _dirs, _files in sorted(
                os.walk(top), key=lambda w: w[0].count("/"), reverse=True
            ):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)


def _cgroup_tree_has_procs(top: str) -> bool:
    for dirpath, _dirs, _files in os.walk(top):
        with open(os.path.join(dirpath, "cgroup.procs"), encoding="ascii") as f:
            if f.read().strip():
                return True
    return False


_LIVE: set[SystemdHost] = set()


@atexit.register
def _poweroff_leftovers() -> None:
    for host in list(_LIVE):
        with contextlib.suppress(Exception):
            host.poweroff(timeout=10)


class SystemdHost:
    """One "host": systemd 252 as PID 1 of its own PID, mount, UTS and IPC namespaces.

    `binds` maps a path inside the namespace to a directory (or file) on the machine that is
    bind-mounted over it, inside the namespace only. A missing mount point is created: under
    /run it lands in the namespace's private tmpfs; elsewhere it is an empty directory on the
    machine (e.g. /etc/dispatch), which is never removed because another host may be using
    it as its mount point at the same time.
    """

    python = REAL_PYTHON

    def __init__(
        self,
        name: str,
        workdir: Path,
        binds: dict[str, Path] | None = None,
        net: bool = False,
    ) -> None:
        if not name or "/" in name or len(name) > 64:
            raise ValueError(f"unusable host name: {name!r}")
        self.name = name
        self.workdir = Path(workdir).resolve()
        self.binds: dict[str, Path] = {}
        for target, source in (binds or {}).items():
            if not os.path.isabs(target):
                raise ValueError(f"bind target must be absolute: {target!r}")
            self.binds[os.path.normpath(target)] = Path(source).resolve()
        self.net = net
        self.machine_id = uuid.uuid4().hex
        # Set by start(); pidns and cgroup_name outlive poweroff() so tests can check leftovers.
        self.pid: int | None = None
        self.pidns: str | None = None
        self.cgroup_name: str | None = None
        self.state: str | None = None
        self.failed_units: list[str] = []
        self.boot_seconds: float | None = None
        self.last_poweroff_forced = False
        self._proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 60) -> None:
        """Boot; return once `systemctl is-system-running --wait` says running or degraded."""
        if self._proc is not None:
            raise SystemdHostError(f"[{self.name}] already started")
        t0 = time.monotonic()
        deadline = t0 + timeout
        self.workdir.mkdir(parents=True, exist_ok=True)
        _remove_stale_cgroups()
        for source in self.binds.values():
            if not source.exists():
                source.mkdir(parents=True)
        self.cgroup_name = f"sdhost.{self.name}.{uuid.uuid4().hex[:8]}"
        self.pidns = None
        self.state = None
        self.failed_units = []
        self.last_poweroff_forced = False
        boot = self._write_boot_files()
        log_path = self.workdir / "boot.log"
        argv = [
            _tool("unshare"), "--pid", "--fork", "--kill-child=SIGKILL", "--mount",
            "--mount-proc", "--uts", "--ipc", "--propagation", "private",
        ]  # fmt: skip
        if self.net:
            argv.append("--net")
        argv.append(str(boot))
        with open(log_path, "ab") as log:
            log.write(f"--- boot {time.strftime('%Y-%m-%dT%H:%M:%S')} ---\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # Not thread-safe in general; the harness starts hosts from pytest's main thread.
                preexec_fn=_die_with_parent,
                env={"PATH": DEFAULT_ENV["PATH"], "LANG": "C.UTF-8"},
            )
        _LIVE.add(self)
        try:
            self._wait_booted(deadline, timeout)
        except BaseException:
            self.poweroff(timeout=10)
            raise
        self.boot_seconds = time.monotonic() - t0

    def _wait_booted(self, deadline: float, timeout: float) -> None:
        assert self._proc is not None
        proc = self._proc
        systemd = os.path.realpath(SYSTEMD)

        def booted_systemd() -> int:
            if proc.poll() is not None:
                raise SystemdHostError(
                    f"[{self.name}] unshare exited with {proc.returncode} before systemd ran"
                    f"\n{self._boot_log_tail()}"
                )
            try:
                children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text()
                child = int(children.split()[0])
                # boot.sh is the child until it execs systemd.
                if os.readlink(f"/proc/{child}/exe") == systemd:
                    return child
            except (OSError, IndexError, ValueError):
                pass
            return 0

        def remaining() -> float:
            left = deadline - time.monotonic()
            if left <= 0:
                raise SystemdHostError(
                    f"[{self.name}] systemd did not boot within {timeout:g}s\n{self._diagnostics()}"
                )
            return left

        try:
            self.pid = wait_for(booted_systemd, remaining(), 0.02, "systemd to exec")
        except AssertionError:
            raise SystemdHostError(
                f"[{self.name}] boot.sh did not exec systemd within {timeout:g}s"
                f"\n{self._boot_log_tail()}"
            ) from None
        self.pidns = _ns_id(self.pid)
        private = f"/proc/{self.pid}/root/run/systemd/private"

        def private_socket() -> bool:
            if proc.poll() is not None:
                raise SystemdHostError(
                    f"[{self.name}] systemd exited with {proc.returncode} during boot"
                    f"\n{self._boot_log_tail()}"
                )
            try:
                return stat.S_ISSOCK(os.stat(private).st_mode)
            except OSError:
                return False

        try:
            wait_for(private_socket, remaining(), 0.02, f"{private}")
        except AssertionError:
            raise SystemdHostError(
                f"[{self.name}] systemd did not open /run/systemd/private within {timeout:g}s"
                f"\n{self._diagnostics()}"
            ) from None

        try:
            r = self.run(
                ["systemctl", "is-system-running", "--wait"], check=False, timeout=remaining()
            )
        except AssertionError as e:
            raise SystemdHostError(
                f"[{self.name}] boot did not finish within {timeout:g}s: {e}\n{self._diagnostics()}"
            ) from None
        self.state = r.stdout.strip()
        self.failed_units = self._failed_units()
        if self.state not in ("running", "degraded"):
            raise SystemdHostError(
                f"[{self.name}] systemd reached {self.state!r}, not running/degraded"
                f"\n{self._diagnostics()}"
            )
        # The bound /etc/hostname already names the host; this covers a machine without one.
        self.run(["hostname", self.name], timeout=remaining())

    def poweroff(self, timeout: float = 30) -> None:
        """Shut the namespace down; kill it if it will not go. Safe to call at any time."""
        proc = self._proc
        try:
            if proc is not None and proc.returncode is None:
                if self.pidns is None:
                    # Boot was cut short before we learnt the namespace: find it to sweep it.
                    self.pidns = _child_pidns(proc.pid)
                if proc.poll() is None and self.pid is not None:
                    deadline = time.monotonic() + timeout
                    try:
                        accepted = (
                            self.run(
                                ["systemctl", "poweroff"], check=False, timeout=min(10.0, timeout)
                            ).returncode
                            == 0
                        )
                    except AssertionError:
                        accepted = False
                    try:
                        # A systemd that did not take the request (still booting, or its
                        # socket is gone) is not worth waiting for.
                        proc.wait(timeout=max(0.0, deadline - time.monotonic()) if accepted else 0)
                    except subprocess.TimeoutExpired:
                        self.last_poweroff_forced = True
                else:
                    # No systemd to ask (boot failed or timed out before it ran): just kill.
                    self.last_poweroff_forced = proc.poll() is None
                self._kill(proc)
        finally:
            self._proc = None
            self.pid = None
            _LIVE.discard(self)
            self._sweep()

    stop = poweroff

    def reboot(self, timeout: float = 60) -> None:
        """Power off, then boot again with the same binds: bound state stays, /run is fresh."""
        self.poweroff()
        self.start(timeout=timeout)

    def __enter__(self) -> SystemdHost:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.poweroff()

    def _kill(self, proc: subprocess.Popen[bytes]) -> None:
        init = self.pid if self.pid is not None else _first_child(proc.pid)
        if init is not None and self.pidns is not None:
            # Killing the namespace's PID 1 makes the kernel kill everything in the namespace.
            _kill_in_pidns(init, self.pidns)
            # Let unshare reap it and exit: orphaned, it would linger as a zombie of the
            # machine's PID 1, which here reaps slowly.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        # Until we reap unshare its pid, and so its process group id, cannot be reused.
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def _sweep(self) -> None:
        """Kill anything left in the namespace or its cgroups, then remove the cgroups."""
        if self.pidns is not None:
            pidns = self.pidns

            def namespace_empty() -> bool:
                for pid in _pids_in_pidns(pidns):
                    _kill_in_pidns(pid, pidns)
                return not _pids_in_pidns(pidns)

            try:
                wait_for(namespace_empty, 10, 0.05, f"namespace {pidns} to empty")
            except AssertionError as e:
                raise SystemdHostError(f"[{self.name}] {e}") from None
        if self.cgroup_name is None:
            return
        leftovers: list[str] = []
        for mount_point, _fstype, _opts in _cgroup_hierarchies():
            top = os.path.join(mount_point, self.cgroup_name)
            if os.path.isdir(top) and not self._remove_cgroup_tree(top):
                leftovers.append(top)
        if leftovers:
            raise SystemdHostError(f"[{self.name}] cgroups still busy: {leftovers}")

    @staticmethod
    def _remove_cgroup_tree(top: str) -> bool:
        def attempt() -> bool:
            for dirpath, _dirs, _files in sorted(
                os.walk(top), key=lambda w: w[0].count("/"), reverse=True
            ):
                try:
                    with open(os.path.join(dirpath, "cgroup.procs"), encoding="ascii") as f:
                        pids = [int(p) for p in f.read().split()]
                except OSError:
                    pids = []
                # Only this host's processes can be in its private subtree.
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                try:
                    os.rmdir(dirpath)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    if e.errno != errno.EBUSY:
                        raise
                    return False
            return True

        try:
            # Cgroups of processes just killed stay busy until the kernel has reaped them.
            wait_for(attempt, 5, 0.05, f"removal of {top}")
        except AssertionError:
            return False
        return True

    # ------------------------------------------------------------------ boot files

    def _write_boot_files(self) -> Path:
        hostname = self.workdir / "hostname"
        hostname.write_text(self.name + "\n")
        machine_id = self.workdir / "machine-id"
        machine_id.write_text(self.machine_id + "\n")
        cgroupfs = self.workdir / "cgroupfs"
        cgroupfs.mkdir(exist_ok=True)

        q = shlex.quote
        hierarchies = _cgroup_hierarchies()
        lines = [
            "#!/bin/bash",
            "# Generated by tests/integration/sdhost.py; runs as PID 1 of the new namespace.",
            "set -euo pipefail",
            "",
            "# Own cgroup subtree, so systemd roots its tree there and not at the machine's root.",
            "# cpuset is left alone: a child cpuset rejects tasks until cpus/mems are set.",
        ]
        assert self.cgroup_name is not None
        for mount_point, _fstype, opts in hierarchies:
            if "cpuset" in opts:
                continue
            cg = q(f"{mount_point}/{self.cgroup_name}")
            lines.append(f"mkdir -p {cg} && echo 0 > {cg}/cgroup.procs")
        unified_only = bool(hierarchies) and hierarchies[0][0] == _CGROUP_ROOT
        if not unified_only:
            lines += [
                "",
                "# systemd remounts the /sys/fs/cgroup tmpfs read-only and adds directories to it;",
                "# on the machine's tmpfs that would change the machine. Give it a private one.",
                f"mount -t tmpfs -o mode=755 sdhost-cgroup {q(str(cgroupfs))}",
            ]
            for mount_point, _fstype, _opts in hierarchies:
                sub = q(f"{cgroupfs}/{os.path.basename(mount_point)}")
                lines.append(f"mkdir {sub} && mount --bind {q(mount_point)} {sub}")
        elif self.net:
            lines.append(f"mount --bind {_CGROUP_ROOT} {q(str(cgroupfs))}")
        if self.net:
            lines += [
                "",
                "# The machine's sysfs lists the machine's network devices; this one, the new",
                "# network namespace's. It hides /sys/fs/cgroup, put back below.",
                "mount -t sysfs sysfs /sys",
            ]
        elif not unified_only:
            lines.append(f"umount -R {_CGROUP_ROOT}")
        if self.net or not unified_only:
            lines.append(f"mount --move {q(str(cgroupfs))} {_CGROUP_ROOT}")
        lines += [
            "",
            "mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run",
            "mkdir -p /run/systemd/system /run/systemd/journald.conf.d",
            f"for u in {' '.join(MASKED_UNITS)}; do",
            '  ln -sf /dev/null "/run/systemd/system/$u"',
            "done",
            "cat > /run/systemd/journald.conf.d/sdhost.conf <<'EOF'",
            JOURNALD_CONF.rstrip("\n"),
            "EOF",
            "",
        ]
        # Bound over the machine's files, which must exist: creating them would change the
        # machine (without /etc/machine-id systemd makes up a transient id itself).
        if os.path.exists("/etc/machine-id"):
            lines.append(f"mount --bind {q(str(machine_id))} /etc/machine-id")
        if os.path.exists("/etc/hostname"):
            lines.append(f"mount --bind {q(str(hostname))} /etc/hostname")
        lines.append(f"hostname {q(self.name)}")
        if "/var/log/journal" not in self.binds and os.path.isdir("/var/log/journal"):
            lines.append("mount -t tmpfs -o mode=2755 tmpfs /var/log/journal")
        lines.append("")
        for target in sorted(self.binds, key=lambda t: t.count("/")):
            source = self.binds[target]
            make = "mkdir -p" if source.is_dir() else "install -D -m 644 /dev/null"
            lines.append(
                f"[ -e {q(target)} ] || {make} {q(target)};"
                f" mount --bind {q(str(source))} {q(target)}"
            )
        lines += [
            "",
            "exec env -i container=unshare"
            f" PATH={q(DEFAULT_ENV['PATH'])} LANG=C.UTF-8"
            f" {q(str(SYSTEMD))} --system --unit=basic.target"
            " --log-target=journal --show-status=no",
            "",
        ]
        boot = self.workdir / "boot.sh"
        boot.write_text("\n".join(lines))
        boot.chmod(0o755)
        return boot

    def _boot_log_tail(self, lines: int = 40) -> str:
        try:
            text = (self.workdir / "boot.log").read_text(errors="replace")
        except OSError:
            return "(no boot.log)"
        return "--- boot.log (tail) ---\n" + "\n".join(text.splitlines()[-lines:])

    def _diagnostics(self) -> str:
        parts = [self._boot_log_tail()]
        if self.running and self.pid is not None:
            for cmd in (
                ["systemctl", "list-jobs", "--no-pager"],
                ["systemctl", "list-units", "--failed", "--no-pager"],
                ["journalctl", "--no-pager", "-n", "40"],
            ):
                try:
                    r = self.run(cmd, check=False, timeout=5)
                    parts.append(f"--- {shlex.join(cmd)} ---\n{r.stdout}{r.stderr}")
                except AssertionError as e:
                    parts.append(f"--- {shlex.join(cmd)} ---\n{e}")
        return "\n".join(parts)

    def _failed_units(self) -> list[str]:
        r = self.run(
            ["systemctl", "list-units", "--failed", "--plain", "--no-legend", "--full"],
            check=False,
        )
        return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]

    # ------------------------------------------------------------------ commands

    def run(
        self,
        cmd: Sequence[str] | str,
        check: bool = True,
        timeout: float = 60,
        env: Mapping[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace (a string goes through /bin/sh -c).

        `env` is added to a clean root environment (DEFAULT_ENV), not to the test's.
        """
        if self.pid is None or not self.running:
            raise SystemdHostError(f"[{self.name}] is not running")
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        nsenter = [_tool("nsenter"), "-t", str(self.pid), "-m", "-p", "-u", "-i"]
        if self.net:
            nsenter.append("-n")
        full_env = {**DEFAULT_ENV, **(env or {})}
        # Own session, so a timeout can kill nsenter and the command it forked together.
        proc = subprocess.Popen(
            [*nsenter, "--", *argv],
            stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise AssertionError(
                f"[{self.name}] timed out after {timeout:g}s: {shlex.join(argv)}"
                f"\n--- stdout ---\n{out}--- stderr ---\n{err}"
            ) from None
        result = subprocess.CompletedProcess(argv, proc.returncode, out, err)
        if check and result.returncode != 0:
            raise AssertionError(
                f"[{self.name}] exit status {result.returncode}: {shlex.join(argv)}"
                f"\n--- stdout ---\n{out}--- stderr ---\n{err}"
            )
        return result

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", "--no-pager", *args], check=check)

    def journalctl(self, *args: str) -> str:
        return self.run(["journalctl", "--no-pager", *args]).stdout

    def daemon_reload(self) -> None:
        self.systemctl("daemon-reload")

    def write_file(self, path: str, content: str, mode: int = 0o644) -> None:
        """Write a file at `path` as seen inside the namespace (through its mounts)."""
        self.run(
            ["/bin/sh", "-c", 'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod "$2" "$1"',
             "sh", path, f"{mode:o}"],
            input=content,
        )  # fmt: skip

    def install_unit(self, src: Path | str, name: str | None = None, reload: bool = True) -> str:
        """Install a unit into /run/systemd/system (the namespace's private /run).

        `src` is a unit file on the machine or, as a str, the unit's text (then `name` is
        required). Returns the unit name.
        """
        if isinstance(src, Path):
            text = src.read_text()
            name = name or src.name
        else:
            text = src
            if name is None:
                raise ValueError("install_unit(text, name): a unit given as text needs a name")
        if "/" in name:
            raise ValueError(f"unit name must not contain '/': {name!r}")
        self.write_file(f"/run/systemd/system/{name}", text)
        if reload:
            self.daemon_reload()
        return name

    def unit_property(self, unit: str, prop: str) -> str:
        return self.run(["systemctl", "show", "-P", prop, "--", unit]).stdout.removesuffix("\n")

    def wait_for(
        self, predicate: Callable[[], T], timeout: float, interval: float = 0.1, what: str = ""
    ) -> T:
        try:
            return wait_for(predicate, timeout, interval, what)
        except AssertionError as e:
            raise AssertionError(f"[{self.name}] {e}") from None

    def namespace_pids(self) -> list[int]:
        """Machine pids of the processes in this host's PID namespace (current or last)."""
        return _pids_in_pidns(self.pidns) if self.pidns is not None else []

    def cgroup_dirs(self) -> list[str]:
        """Machine paths of this host's cgroup subtree (current or last boot) that exist."""
        if self.cgroup_name is None:
            return []
        paths = (os.path.join(mp, self.cgroup_name) for mp, _t, _o in _cgroup_hierarchies())
        return [p for p in paths if os.path.isdir(p)]

    def __repr__(self) -> str:
        return f"SystemdHost({self.name!r}, pid={self.pid}, state={self.state!r})"


def _tool(name: str) -> str:
    path = shutil.which(name, path=DEFAULT_ENV["PATH"])
    if path is None:
        raise SystemdHostError(f"{name} not found in {DEFAULT_ENV['PATH']}")
    return path


def missing_prerequisites() -> list[str]:
    """What this machine lacks to boot a SystemdHost; empty when it can."""
    problems = []
    if os.geteuid() != 0:
        problems.append(f"not running as root (euid {os.geteuid()})")
    for tool in ("unshare", "nsenter", "systemctl", "journalctl", "systemd-run"):
        if shutil.which(tool, path=DEFAULT_ENV["PATH"]) is None:
            problems.append(f"{tool} not found")
    if not os.access(SYSTEMD, os.X_OK):
        problems.append(f"{SYSTEMD} missing or not executable")
    if not _cgroup_hierarchies():
        problems.append(f"no cgroup hierarchy mounted under {_CGROUP_ROOT}")
    return problems
