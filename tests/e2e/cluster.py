"""Several dispatch hosts sharing a real network filesystem, for end-to-end tests.

    file server namespace (own net, mount, PID namespaces)
        sshd -f <private config>, listening on port 2222 of that namespace only,
        exporting <workdir>/server/export
      veth s1 10.77.1.1/24 ---- 10.77.1.2/24 e2e0   host "a" (SystemdHost, own netns)
      veth s2 10.77.2.1/24 ---- 10.77.2.2/24 e2e0   host "b"
      ...

Each host is a SystemdHost(net=True): its own systemd, PID, mount, UTS and network namespace,
its own /etc/dispatch (config, its own key pair, the others' pinned public keys) and
/var/lib/dispatch, and a mount unit that mounts the export at /mnt/dispatch/share with
sshfs, as an operator's fstab line would.
The export itself is hidden inside every host (an empty directory is bound over the server's
directory), so a host reaches the shared root only through its own sshfs mount: inotify sees
none of the writes another host makes, as on NFS.

Nothing here touches the machine's own network or mounts: veth pairs are created inside the
server's namespace with their peer moved straight into a host's, sshd gets a private /run,
and every namespace dies with its PID 1. See tests/integration/sdhost.py for the hosts.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from tests.integration.dispatch_host import (
    AGENT_USER,
    DISPATCH,
    VENV_BIN,
    install_units,
    missing_for_units,
)
from tests.integration.sdhost import (
    DEFAULT_ENV,
    SystemdHost,
    _die_with_parent,
    _kill_in_pidns,
    _ns_id,
    _pids_in_pidns,
    missing_prerequisites,
    wait_for,
)

T = TypeVar("T")

SSH_PORT = 2222
MNT = "/mnt/dispatch"
SHARE = f"{MNT}/share"  # DISPATCH_ROOT on every host: the sshfs mount point itself
MOUNT_UNIT = "mnt-dispatch-share.mount"
AGENT_LOG = f"{MNT}/agent-runs.jsonl"  # host-local: /mnt/dispatch is bound per host
HOST_IFACE = "e2e0"
TOOLS = ("sshd", "ssh", "ssh-keygen", "sshfs", "fusermount3", "ip", "unshare", "nsenter")

# sshfs 3.7 (bookworm): `reconnect` brings the same mount back when the server returns (open
# file handles from before stay dead); ServerAlive*/ConnectTimeout bound how long a request
# can block on an unreachable server (about 4 s) before it fails with EIO; no directory or
# attribute caching, so a poller sees other hosts' files at once (as NFS with actimeo=0);
# allow_other lets the agent's user and every unit see the mount, default_permissions has
# the kernel check modes as on a local disk.
SSHFS_OPTIONS = (
    "reconnect",
    "ServerAliveInterval=2",
    "ServerAliveCountMax=2",
    "ConnectTimeout=3",
    "BatchMode=yes",
    "StrictHostKeyChecking=yes",
    "dir_cache=no",
    "entry_timeout=0",
    "attr_timeout=0",
    "negative_timeout=0",
    "allow_other",
    "default_permissions",
    "_netdev",
)


def missing_e2e_prerequisites() -> list[str]:
    problems = missing_prerequisites() + list(missing_for_units())
    for tool in TOOLS:
        if shutil.which(tool, path=DEFAULT_ENV["PATH"]) is None:
            problems.append(
                f"{tool} not found (scripts/setup-dev installs sshfs, "
                "openssh-server, openssh-client, fuse3, iproute2)"
            )
    if not os.path.exists("/dev/fuse"):
        problems.append("/dev/fuse missing: the kernel has no FUSE")
    try:
        if "fuse" not in Path("/proc/filesystems").read_text().split():
            problems.append("the kernel does not list fuse in /proc/filesystems")
    except OSError as exc:
        problems.append(f"/proc/filesystems: {exc.strerror}")
    return problems


def _tool(name: str) -> str:
    path = shutil.which(name, path=DEFAULT_ENV["PATH"])
    if path is None:
        raise RuntimeError(f"{name} not found")
    return path


def _run(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={"PATH": DEFAULT_ENV["PATH"], "LANG": "C.UTF-8"},
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"exit status {proc.returncode}: {shlex.join(argv)}\n{proc.stdout}{proc.stderr}"
        )
    return proc


# ---------------------------------------------------------------------------------- keys


class SshKeys:
    """The file server's host key and the client key every host mounts with, made fresh for
    each test session; never the machine's own /etc/ssh or /root/.ssh."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.host_key = directory / "ssh_host_ed25519_key"
        self.client_key = directory / "id_ed25519"
        self.authorized_keys = directory / "authorized_keys"

    def generate(self) -> SshKeys:
        self.dir.mkdir(parents=True, exist_ok=True)
        for key in (self.host_key, self.client_key):
            if not key.exists():
                _run(
                    [
                        _tool("ssh-keygen"),
                        "-q",
                        "-t",
                        "ed25519",
                        "-N",
                        "",
                        "-C",
                        f"dispatch-e2e {key.name}",
                        "-f",
                        str(key),
                    ]
                )
        self.authorized_keys.write_text(Path(f"{self.client_key}.pub").read_text())
        self.authorized_keys.chmod(0o600)
        return self

    def known_hosts(self, addresses: Iterable[str]) -> str:
        pub = Path(f"{self.host_key}.pub").read_text().split()
        return "".join(f"[{a}]:{SSH_PORT} {pub[0]} {pub[1]}\n" for a in addresses)


# ---------------------------------------------------------------------------------- server

SERVER_INIT = """\
#!/bin/bash
# PID 1 of the file server's namespaces (generated by tests/e2e/cluster.py).
set -euo pipefail
# sshd wants /run/sshd; a private /run keeps the machine's untouched.
mount -t tmpfs -o mode=755 e2e-server-run /run
mkdir -m 755 /run/sshd
ip link set lo up
touch /run/e2e-ready
# Stay PID 1 and reap the sshd processes that end (bash reaps any child on SIGCHLD).
trap 'exit 0' TERM
while :; do sleep 3600 & wait $! || true; done
"""


class FileServer:
    """sshd in its own network, mount and PID namespaces, exporting `export`."""

    def __init__(self, workdir: Path, keys: SshKeys) -> None:
        self.workdir = workdir
        self.keys = keys
        self.export = workdir / "export"
        self.config = workdir / "sshd_config"
        self.log = workdir / "sshd.log"
        self.pid: int | None = None  # PID 1 of the namespace, as the machine sees it
        self.pidns: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.links: dict[str, int] = {}  # host name -> link index (10.77.<i>.0/24)

    def start(self, timeout: float = 20) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.export.mkdir(mode=0o755, exist_ok=True)
        self.config.write_text(
            f"# dispatch e2e file server; nothing else reads this file\n"
            f"Port {SSH_PORT}\nListenAddress 0.0.0.0\n"
            f"HostKey {self.keys.host_key}\n"
            f"AuthorizedKeysFile {self.keys.authorized_keys}\n"
            "PermitRootLogin prohibit-password\nPubkeyAuthentication yes\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            # The keys live in a pytest temp dir under the world-writable /tmp.
            "StrictModes no\n"
            "PidFile none\nPrintMotd no\nUseDNS no\nAllowTcpForwarding no\n"
            "X11Forwarding no\nClientAliveInterval 2\nClientAliveCountMax 2\n"
            "Subsystem sftp internal-sftp\nLogLevel VERBOSE\n"
        )
        init = self.workdir / "server-init.sh"
        init.write_text(SERVER_INIT)
        init.chmod(0o755)
        with open(self.workdir / "server.log", "ab") as log:
            self._proc = subprocess.Popen(
                [
                    _tool("unshare"),
                    "--net",
                    "--mount",
                    "--pid",
                    "--fork",
                    "--kill-child=SIGKILL",
                    "--propagation",
                    "private",
                    str(init),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                env={"PATH": DEFAULT_ENV["PATH"], "LANG": "C.UTF-8"},
            )
        _LIVE_SERVERS.add(self)
        try:
            self._wait_ready(timeout)
            self.start_sshd()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        proc = self._proc
        assert proc is not None
        own_ns = _ns_id(os.getpid())

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(
                    f"file server namespace exited with {proc.returncode}:\n"
                    + (self.workdir / "server.log").read_text()
                )
            try:
                child = int(
                    Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0]
                )
            except (OSError, IndexError, ValueError):
                return False
            ns = _ns_id(child)
            if ns is None or ns == own_ns:
                return False
            self.pid, self.pidns = child, ns
            return os.path.exists(f"/proc/{child}/root/run/e2e-ready")

        wait_for(ready, timeout, 0.02, "the file server namespace")

    def nsenter(self, *argv: str, pid_ns: bool = False) -> list[str]:
        assert self.pid is not None
        opts = ["-n", "-m"] + (["-p"] if pid_ns else [])
        return [_tool("nsenter"), "-t", str(self.pid), *opts, "--", *argv]

    def sshd_pids(self) -> list[int]:
        """The listener and every session process (sftp runs inside them: internal-sftp)."""
        if self.pidns is None:
            return []
        sshd = os.path.realpath(_tool("sshd"))
        pids = []
        for pid in _pids_in_pidns(self.pidns):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/exe") == sshd:
                    pids.append(pid)
        return pids

    def listening(self) -> bool:
        """Is anything listening on SSH_PORT in the server's network namespace?"""
        try:
            lines = Path(f"/proc/{self.pid}/net/tcp").read_text().splitlines()[1:]
        except OSError:
            return False
        return any(
            f":{SSH_PORT:04X}" in line.split()[1] and line.split()[3] == "0A" for line in lines
        )

    def start_sshd(self) -> None:
        # -E: sshd logs to our file; it daemonises inside the PID namespace.
        _run(self.nsenter(_tool("sshd"), "-f", str(self.config), "-E", str(self.log), pid_ns=True))
        wait_for(self.listening, 10, 0.02, f"sshd listening on port {SSH_PORT}")

    def kill_sshd(self) -> list[int]:
        """The file server dies: every sshd process (listener, sessions, sftp) gets SIGKILL,
        so established connections break and new ones are refused."""
        assert self.pidns is not None
        victims = self.sshd_pids()
        for pid in victims:
            _kill_in_pidns(pid, self.pidns)
        wait_for(
            lambda: not self.sshd_pids() and not self.listening(), 10, 0.02, "sshd processes to die"
        )
        return victims

    # -- network -------------------------------------------------------------------
    def link(self, host: SystemdHost) -> tuple[str, str]:
        """A veth pair between the server and `host`: created in the server's namespace, its
        peer moved straight into the host's, so the machine's own namespace never holds one."""
        assert host.pid is not None
        index = len(self.links) + 1
        if index > 250:
            raise ValueError("too many hosts")
        self.links[host.name] = index
        server_if, server_ip, host_ip = f"s{index}", f"10.77.{index}.1", f"10.77.{index}.2"
        _run(
            self.nsenter(
                _tool("ip"),
                "link",
                "add",
                server_if,
                "type",
                "veth",
                "peer",
                "name",
                HOST_IFACE,
                "netns",
                str(host.pid),
            )
        )
        _run(self.nsenter(_tool("ip"), "addr", "add", f"{server_ip}/24", "dev", server_if))
        _run(self.nsenter(_tool("ip"), "link", "set", server_if, "up"))
        host.run(
            [
                "sh",
                "-c",
                f"ip link set lo up && ip addr add {host_ip}/24 dev {HOST_IFACE}"
                f" && ip link set {HOST_IFACE} up",
            ]
        )
        return server_ip, host_ip

    def set_link(self, host: str, up: bool) -> None:
        """Cut (or restore) one host's link: its requests hang until sshfs gives up."""
        _run(
            self.nsenter(_tool("ip"), "link", "set", f"s{self.links[host]}", "up" if up else "down")
        )

    # -- teardown ------------------------------------------------------------------
    def stop(self) -> None:
        proc, pidns = self._proc, self.pidns
        try:
            if proc is not None:
                init = self.pid
                if init is not None and pidns is not None:
                    # PID 1 gone: the kernel kills the whole namespace; the veth pairs die
                    # with the network namespace.
                    _kill_in_pidns(init, pidns)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            if pidns is not None:

                def empty() -> bool:
                    for pid in _pids_in_pidns(pidns):
                        _kill_in_pidns(pid, pidns)
                    return not _pids_in_pidns(pidns)

                wait_for(empty, 10, 0.05, "the file server namespace to empty")
        finally:
            self._proc = None
            self.pid = None
            _LIVE_SERVERS.discard(self)


_LIVE_SERVERS: set[FileServer] = set()


@atexit.register
def _stop_leftover_servers() -> None:
    for server in list(_LIVE_SERVERS):
        with contextlib.suppress(Exception):
            server.stop()


# ---------------------------------------------------------------------------------- hosts


# What `dispatch init` leaves a node running; dispatch-sensor.service exits at once on a node
# in timer mode.
NODE_UNITS = (
    "dispatch-watch.path",
    "dispatch-watch.timer",
    "dispatch-heartbeat.timer",
    "dispatch-sensor.service",
)
# On sshfs the nodes run the sensor (DISPATCH_WATCH_MODE=auto); DISPATCH_E2E_WATCH_MODE=timer
# runs the whole suite on the polling fallback instead. A test's own settings still win.
FORCED_WATCH_MODE = (
    {"DISPATCH_WATCH_MODE": os.environ["DISPATCH_E2E_WATCH_MODE"]}
    if os.environ.get("DISPATCH_E2E_WATCH_MODE")
    else {}
)


def mount_unit(server_ip: str, export: Path, identity: Path, known_hosts: Path) -> str:
    options = ",".join(
        (
            f"port={SSH_PORT}",
            f"IdentityFile={identity}",
            f"UserKnownHostsFile={known_hosts}",
            *SSHFS_OPTIONS,
        )
    )
    return (
        "[Unit]\n"
        "Description=dispatch shared root (sshfs from the e2e file server)\n"
        "[Mount]\n"
        f"What=root@{server_ip}:{export}\n"
        f"Where={SHARE}\n"
        "Type=fuse.sshfs\n"
        f"Options={options}\n"
        "TimeoutSec=20\n"
    )


class Node:
    """One dispatch host of the cluster, driven from inside: systemctl, journalctl and the
    dispatch CLI run in the host's namespaces."""

    def __init__(self, name: str, host: SystemdHost, hostdir: Path) -> None:
        self.name = name
        self.host = host
        self.dir = hostdir
        self.kid = ""

    # -- commands ------------------------------------------------------------------
    def run(
        self, cmd: list[str] | str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return self.host.run(cmd, check=check, timeout=timeout)

    def dispatch(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return self.host.run([DISPATCH, *args], check=check, timeout=timeout)

    def send(self, to: str, request: str, *flags: str) -> str:
        out = self.dispatch("send", "--to", to, "--request", request, "--json", *flags)
        task_id: str = json.loads(out.stdout)["id"]
        return task_id

    def wait(self, task_id: str, timeout: float = 60) -> dict[str, Any]:
        """`dispatch wait --json` on this (the sending) host: the verified result."""
        return self.wait_noting(task_id, timeout)[0]

    def wait_noting(self, task_id: str, timeout: float = 60) -> tuple[dict[str, Any], str]:
        """The verified result and what `dispatch wait` said on stderr meanwhile."""
        proc = self.dispatch(
            "wait", task_id, "--json", "--timeout", str(timeout), check=False, timeout=timeout + 30
        )
        assert proc.stdout.strip(), (
            f"[{self.name}] wait {task_id}: rc={proc.returncode} {proc.stderr}"
        )
        result: dict[str, Any] = json.loads(proc.stdout)
        return result, proc.stderr

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.dispatch("status", "--json").stdout)
        return data

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.host.systemctl(*args, check=check)

    def journal(self, *args: str) -> str:
        return self.host.journalctl(*args)

    def failed_units(self) -> list[str]:
        out = self.run(
            ["systemctl", "list-units", "--failed", "--all", "--plain", "--no-legend", "--full"],
            check=False,
        ).stdout
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def agent_runs(self) -> list[dict[str, Any]]:
        """Every run of the fake agent on this host (its log is host-local)."""
        text = self.run(["cat", AGENT_LOG]).stdout
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def ran(self, task_id: str) -> int:
        return sum(1 for r in self.agent_runs() if r["task_id"] == task_id)

    def lane_files(self, lane: str, stage: str) -> list[str]:
        return self.run(["ls", "-A", f"{SHARE}/{lane}/{stage}"]).stdout.split()

    def write(self, path: str, content: str) -> None:
        self.host.write_file(path, content)

    def invocation(self, unit: str) -> str:
        return self.host.unit_property(unit, "InvocationID")

    def wait_until(self, what: str, predicate: Callable[[], T], timeout: float = 30) -> T:
        return self.host.wait_for(predicate, timeout, interval=0.2, what=what)

    def __repr__(self) -> str:
        return f"Node({self.name!r})"


class Cluster:
    """A file server and one dispatch host per name, all peers of one another."""

    def __init__(
        self,
        workdir: Path,
        keys: SshKeys,
        names: Iterable[str],
        settings: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.workdir = workdir
        self.keys = keys
        self.names = list(names)
        self.settings = settings or {}
        self.server = FileServer(workdir / "server", keys)
        self.nodes: dict[str, Node] = {}

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    # -- set-up --------------------------------------------------------------------
    def start(self) -> Cluster:
        try:
            self.server.start()
            hosts = {name: self._boot(name) for name in self.names}
            for name, node in hosts.items():
                self._mount(node)
                self.nodes[name] = node
            self._init_dispatch()
        except BaseException:
            self.stop()
            raise
        return self

    def _boot(self, name: str) -> Node:
        hostdir = self.workdir / "hosts" / name
        hidden = hostdir / "hidden"
        hidden.mkdir(parents=True)
        host = SystemdHost(
            name,
            hostdir / "sdhost",
            net=True,
            binds={
                "/etc/dispatch": hostdir / "etc-dispatch",
                "/var/lib/dispatch": hostdir / "var-lib-dispatch",
                MNT: hostdir / "mnt",
                # The export (and the server's keys) exist on this machine, so in every host:
                # an empty directory over them. The share is reachable through sshfs only.
                str(self.server.workdir): hidden,
            },
        )
        node = Node(name, host, hostdir)
        # Registered first, so stop() powers it off even if its boot fails half-way.
        self.nodes[name] = node
        host.start()
        return node

    def _mount(self, node: Node) -> None:
        server_ip, _host_ip = self.server.link(node.host)
        ssh = node.dir / "ssh"
        ssh.mkdir(mode=0o700)
        identity = ssh / "id_ed25519"
        shutil.copyfile(self.keys.client_key, identity)
        identity.chmod(0o600)
        known_hosts = ssh / "known_hosts"
        known_hosts.write_text(self.keys.known_hosts([server_ip]))
        node.run(["mkdir", "-p", SHARE])
        node.host.install_unit(
            mount_unit(server_ip, self.server.export, identity, known_hosts), MOUNT_UNIT
        )
        node.systemctl("start", MOUNT_UNIT)
        fstype = node.run(["findmnt", "-n", "-o", "FSTYPE", SHARE]).stdout.strip()
        assert fstype == "fuse.sshfs", f"[{node.name}] {SHARE} is {fstype!r}"
        # The export is not visible any other way from inside the host.
        hidden = node.run(["ls", "-A", str(self.server.export)], check=False)
        assert hidden.returncode != 0 and "No such file" in hidden.stderr, hidden

    def _init_dispatch(self) -> None:
        lines = {}
        for name in self.names:
            node = self.nodes[name]
            peers = ",".join(n for n in self.names if n != name)
            values = {
                **FORCED_WATCH_MODE,
                "DISPATCH_AGENT_BIN": f"{VENV_BIN / 'python'} -m dispatch.ops.fake_agent",
                "DISPATCH_RUN_AS": AGENT_USER,
                "DISPATCH_POLL_SEC": "1",
                "DISPATCH_MAX_PARALLEL": "2",
                # The promoter's stay (20 s by default) after a busy pass would make every wait
                # for a quiet node wait it out; the stay's own tests ask for a longer one.
                "DISPATCH_PROMOTE_LINGER_S": "3",
                "DISPATCH_MEMORY_MAX": "300M",
                **self.settings.get(name, {}),
            }
            sets = [a for k, v in values.items() for a in ("--set", f"{k}={v}")]
            install_units(
                node.host, f"[Service]\nEnvironment=DISPATCH_FAKE_AGENT_LOG={AGENT_LOG}\n"
            )
            node.run(["sh", "-c", f": > {AGENT_LOG} && chmod 666 {AGENT_LOG}"])
            argv = [DISPATCH, "init", "--root", SHARE, "--node", name, "--peers", peers, *sets]
            out = node.run(argv).stdout
            node.kid = out.split("key ")[1].split()[0]
            # What init printed for the operator to paste on each peer: a public key line.
            lines[name] = next(
                line.split(": ", 1)[1]
                for line in out.splitlines()
                if line.startswith("public key: ")
            )
        # Each host pins every other's public key; no key file goes between hosts.
        for name in self.names:
            for other, line in lines.items():
                if other != name:
                    self.nodes[name].host.run(
                        [DISPATCH, "peers", "add", other, "-"], input=line + "\n"
                    )
        for name in self.names:
            node = self.nodes[name]
            node.host.daemon_reload()
            node.systemctl("start", *NODE_UNITS)
        kids = {node.kid for node in self.nodes.values()}
        assert len(kids) == len(self.names), f"every host must have a key of its own: {kids}"

    # -- helpers -------------------------------------------------------------------
    def parallel(self, *calls: Callable[[], T]) -> list[T]:
        """Run the calls at the same time (e.g. waits on several hosts); their results."""
        with ThreadPoolExecutor(max_workers=max(1, len(calls))) as pool:
            futures = [pool.submit(call) for call in calls]
            return [f.result() for f in futures]

    def lanes(self) -> list[str]:
        return [f"{a}-to-{b}" for a in self.names for b in self.names if a != b]

    def leftovers(self) -> dict[str, list[str]]:
        """Anything still in an inbox, pending-ack, processing or tmp of any lane."""
        node = next(iter(self.nodes.values()))
        found = {}
        for lane in self.lanes():
            for stage in ("tmp", "inbox", "pending-ack", "processing"):
                names = [n for n in node.lane_files(lane, stage) if not n.endswith(".tmp")]
                if names:
                    found[f"{lane}/{stage}"] = names
        return found

    def save_journals(self) -> list[Path]:
        saved = []
        for node in self.nodes.values():
            if not node.host.running:
                continue
            path = node.dir / "journal.txt"
            with contextlib.suppress(Exception):
                text = node.host.run(
                    ["journalctl", "--no-pager", "-o", "short-precise"], check=False, timeout=30
                ).stdout
                path.write_text(text)
                saved.append(path)
        return saved

    # -- teardown ------------------------------------------------------------------
    def stop(self) -> None:
        """Power off every host, then the server; try all of them whatever fails."""
        errors: list[str] = []
        for node in reversed(list(self.nodes.values())):
            try:
                node.host.poweroff(timeout=20)
            except Exception as exc:
                errors.append(f"{node.name}: {exc}")
        try:
            self.server.stop()
        except Exception as exc:
            errors.append(f"file server: {exc}")
        if errors:
            raise RuntimeError("cluster teardown: " + "; ".join(errors))

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------------- machine


def machine_snapshot(marker: str) -> dict[str, Any]:
    """What the e2e suite must leave as it found it on the machine itself: its network links
    and mounts (only those this suite could have made: other work may run beside it), the
    sshd privilege-separation dir, sshd/sshfs processes. `marker` is a path that every
    command line and mount source of this suite contains (its temp dir)."""
    out = _run([_tool("ip"), "-o", "link", "show"]).stdout
    links = sorted(
        name
        for line in out.splitlines()
        if line.strip()
        if re.fullmatch(rf"s\d+|{HOST_IFACE}", (name := line.split(":")[1].strip().split("@")[0]))
    )
    ours = (MNT, "/etc/dispatch", "/var/lib/dispatch", "/run/sshd", marker)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        mounts = sorted(
            f"{fields[4]} ({fields[fields.index('-') + 1]})"
            for fields in (line.split() for line in f)
            if fields[fields.index("-") + 1].startswith("fuse")
            or any(fields[4] == p or fields[4].startswith(p + "/") for p in ours)
        )
    return {
        "network links": links,
        "mounts": mounts,
        "/run/sshd exists": os.path.exists("/run/sshd"),
        "sshd or sshfs processes": _daemons(marker),
    }


def _daemons(marker: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and comm in ("sshd", "sshfs", "ssh") and marker.encode() in cmdline:
            found.append(f"{entry} {cmdline.decode(errors='replace')[:160]}")
    return sorted(found)
