"""A receiving node `gpubox` under a real systemd (the shipped units, as in
tests/integration), fed by two senders, `devbox` and `laptop`, that run in the same
namespace with their own configs, key pairs (each pinning the others' public keys) and
state, as other hosts would.

The test process reaches the namespace's files through /proc/<its systemd>/root, so it sees
exactly what the units see, mounts made inside the namespace (a size-limited share, a share
bound and unbound) included. `dispatch audit` runs inside the namespace, as an operator
would run it there."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.integration.dispatch_host import (
    AGENT_USER,
    DISPATCH,
    VENV_BIN,
    install_units,
    missing_for_units,
    pin_each_other,
)
from tests.integration.sdhost import SystemdHost, missing_prerequisites

T = TypeVar("T")

RECEIVER = "gpubox"
SENDERS = ("devbox", "laptop")
MNT = "/mnt/dispatch"
ROOT = f"{MNT}/share"
BACKING = f"{MNT}/backing"
STAGING = f"{ROOT}/.staging"
AGENT_LOG = f"{MNT}/agent-runs.jsonl"
STATE = "/var/lib/dispatch"
PYTHON = str(VENV_BIN / "python")
WATCH = "dispatch-watch.service"
PATH_UNIT = "dispatch-watch.path"
LEGACY_SECRET = "hostile-corpus-schema2-" + "0123456789abcdef" * 3


def prerequisites() -> list[str]:
    """What this machine lacks for these tests; they fail (never skip) when it lacks any."""
    return missing_prerequisites() + list(missing_for_units())


def new_host(name: str, workdir: Path) -> SystemdHost:
    for sub in ("etc-dispatch", "var-lib-dispatch", "mnt-dispatch"):
        (workdir / sub).mkdir(parents=True, exist_ok=True, mode=0o755)
    return SystemdHost(
        name,
        workdir / "sdhost",
        binds={
            "/etc/dispatch": workdir / "etc-dispatch",
            "/var/lib/dispatch": workdir / "var-lib-dispatch",
            "/mnt/dispatch": workdir / "mnt-dispatch",
        },
    )


def sender_conf(sender: str) -> str:
    return f"/etc/dispatch/{sender}/dispatch.conf"


class HostileNode:
    def __init__(self, host: SystemdHost) -> None:
        self.host = host
        self.kid = ""
        self.timer = False
        self.share = "dir"

    # -- paths ---------------------------------------------------------------------------
    def ns(self, path: str) -> Path:
        """A path inside the namespace, as the test process reaches it."""
        assert self.host.pid is not None, "host is not running"
        return Path(f"/proc/{self.host.pid}/root{path}")

    def lane(self, sender: str = "devbox") -> Path:
        return self.ns(f"{ROOT}/{sender}-to-{RECEIVER}")

    def lane_ns(self, sender: str = "devbox") -> str:
        return f"{ROOT}/{sender}-to-{RECEIVER}"

    # -- set-up --------------------------------------------------------------------------
    def setup(
        self, *, settings: dict[str, str] | None = None, timer: bool = True, share: str = "dir"
    ) -> None:
        """`share`: "dir" (a directory), "bind" (a bind mount of BACKING at ROOT, which the
        tests unmount and mount again) or "tmpfs:<size>" (a size-limited filesystem)."""
        h = self.host
        self.timer, self.share = timer, share
        h.run(
            ["sh", "-c", f"mkdir -p {ROOT} {BACKING} && : > {AGENT_LOG} && chmod 666 {AGENT_LOG}"]
        )
        self.mount_share()
        values = {
            "DISPATCH_AGENT_BIN": f"{PYTHON} -m dispatch.ops.fake_agent",
            "DISPATCH_RUN_AS": AGENT_USER,
            "DISPATCH_POLL_SEC": "1",
            "DISPATCH_MAX_PARALLEL": "2",
            # The promoter's stay (20 s by default) after a busy pass would make every wait
            # for a quiet node wait it out; the stay's own tests ask for a longer one.
            "DISPATCH_PROMOTE_LINGER_S": "3",
            "DISPATCH_MEMORY_MAX": "300M",
        }
        values.update(settings or {})
        sets = [a for k, v in values.items() for a in ("--set", f"{k}={v}")]
        out = h.run(
            [
                DISPATCH,
                "init",
                "--local",
                "--root",
                ROOT,
                "--node",
                RECEIVER,
                "--peers",
                ",".join(SENDERS),
                *sets,
            ]
        ).stdout
        self.kid = out.split("key ")[1].split()[0]
        for sender in SENDERS:
            h.run(
                [
                    DISPATCH,
                    "init",
                    "--local",
                    "--root",
                    ROOT,
                    "--node",
                    sender,
                    "--peers",
                    RECEIVER,
                    "--config",
                    sender_conf(sender),
                    "--key-dir",
                    f"/etc/dispatch/{sender}/keys",
                    "--state-dir",
                    f"{STATE}/{sender}",
                    # No signer of their own: they sign in-process. Not the default socket,
                    # which is this host's, whose signer signs only as gpubox.
                    "--set",
                    f"DISPATCH_SIGNER_SOCKET=/run/dispatch/{sender}-signer.sock",
                ]
            )
        pin_each_other(h, {RECEIVER: None, **{s: sender_conf(s) for s in SENDERS}})
        # The original's senders (schema 2) share one HMAC key with this node: its ring only.
        h.run(["sh", "-c", f"umask 077 && printf '%s\\n' {LEGACY_SECRET} > /tmp/klegacy.key"])
        h.run([DISPATCH, "keys", "import", "/tmp/klegacy.key"])
        h.run(["mkdir", "-p", STAGING])
        self.install()

    def mount_share(self) -> None:
        # systemd in a container (as here) leaves / private, so a mount change would not
        # reach the units' own mount namespaces; on a real host / is shared and it does.
        self.host.run(["mount", "--make-rshared", "/"])
        if self.share == "bind":
            self.host.run(["mount", "--bind", BACKING, ROOT])
        elif self.share.startswith("tmpfs:"):
            size = self.share.split(":", 1)[1]
            self.host.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size},mode=755", "dispatch-share", ROOT]
            )

    def install(self) -> None:
        """The shipped units (again after a reboot: /run is fresh), then start watching."""
        install_units(self.host, f"[Service]\nEnvironment=DISPATCH_FAKE_AGENT_LOG={AGENT_LOG}\n")
        self.host.daemon_reload()
        timers = ["dispatch-watch.timer", "dispatch-heartbeat.timer"] if self.timer else []
        self.host.systemctl("start", PATH_UNIT, *timers)

    def reboot(self) -> None:
        """A clean restart of the whole host (systemd stops every unit first)."""
        self.host.reboot()
        self.after_boot()

    def crash(self) -> None:
        """A power cut: the namespace's systemd and everything in it SIGKILLed at once."""
        proc, pid = self.host._proc, self.host.pid
        assert proc is not None and pid is not None
        os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
        self.host.poweroff()
        self.host.start()
        self.after_boot()

    def after_boot(self) -> None:
        # /run is fresh and the namespace's own mounts are gone: put the share back and
        # install the units again, as a package would have them on disk.
        if self.share != "dir":
            self.mount_share()
        self.install()

    # -- keys ----------------------------------------------------------------------------
    def secret(self) -> bytes:
        """The HMAC key of schema-2 senders, in this node's ring only."""
        return self.ns("/etc/dispatch/keys/klegacy.key").read_bytes().strip()

    def keys(self) -> dict[str, tuple[str, Ed25519PrivateKey]]:
        """Each node's own key pair (kid, private key), read where only it keeps it."""
        out = {}
        for node in (RECEIVER, *SENDERS):
            where = "/etc/dispatch/keys" if node == RECEIVER else f"/etc/dispatch/{node}/keys"
            pem = self.ns(f"{where}/{node}.ed25519").read_bytes()
            private = serialization.load_pem_private_key(pem, password=None)
            assert isinstance(private, Ed25519PrivateKey)
            raw = private.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
            out[node] = ("ed" + hashlib.sha256(raw).hexdigest()[:16], private)
        return out

    # -- the senders' side ---------------------------------------------------------------
    def dispatch(
        self, *args: str, sender: str | None = "devbox", check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        env = {"DISPATCH_CONFIG": sender_conf(sender)} if sender else {}
        return self.host.run([DISPATCH, *args], env=env, check=check, timeout=timeout)

    def send(self, request: str, *flags: str, sender: str = "devbox") -> str:
        out = self.dispatch(
            "send", "--to", RECEIVER, "--request", request, "--json", *flags, sender=sender
        )
        task_id: str = json.loads(out.stdout)["id"]
        return task_id

    def send_many(
        self, requests: list[str], sender: str = "devbox", timeout: float = 600
    ) -> list[str]:
        """Many tasks from one sender process (signed and delivered by dispatch's sender
        code, one after the other, as a busy sender would)."""
        script = (
            "import sys\n"
            "from dispatch.core import config\n"
            "from dispatch.send import task as sender\n"
            "from dispatch.core.node import Node\n"
            "node = Node(config.load())\n"
            "for line in sys.stdin:\n"
            f"    env = sender.build(node, to={RECEIVER!r}, request=line.rstrip('\\n'))\n"
            "    sender.deliver(node, env)\n"
            "    print(env.id, flush=True)\n"
        )
        proc = self.host.run(
            [PYTHON, "-c", script],
            env={"DISPATCH_CONFIG": sender_conf(sender)},
            input="".join(r.replace("\n", " ") + "\n" for r in requests),
            timeout=timeout,
        )
        return proc.stdout.split()

    # -- what the node shows -------------------------------------------------------------
    def names(self, sender: str, stage: str) -> list[str]:
        try:
            return sorted(os.listdir(self.lane(sender) / stage))
        except FileNotFoundError:
            return []

    def result(self, task_id: str, sender: str = "devbox") -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(
                (self.lane(sender) / "done" / f"{task_id}.result.json").read_bytes()
            )
        except (FileNotFoundError, ValueError):
            return None
        return data

    def results(self, ids: Iterable[str], sender: str = "devbox") -> dict[str, dict[str, Any]]:
        found = {}
        for task_id in ids:
            data = self.result(task_id, sender)
            if data is not None:
                found[task_id] = data
        return found

    def wait_results(
        self, ids: list[str], sender: str = "devbox", timeout: float = 120
    ) -> dict[str, dict[str, Any]]:
        def all_there() -> dict[str, dict[str, Any]]:
            got = self.results(ids, sender)
            return got if len(got) == len(ids) else {}

        try:
            return self.host.wait_for(
                all_there, timeout, interval=0.25, what=f"{len(ids)} results in {sender}'s lane"
            )
        except AssertionError:
            missing = sorted(set(ids) - set(self.results(ids, sender)))
            raise AssertionError(
                f"{len(missing)} of {len(ids)} results missing after "
                f"{timeout}s, e.g. {missing[:3]}; "
                f"{self.snapshot()}"
            ) from None

    def agent_runs(self) -> list[dict[str, Any]]:
        runs = []
        for line in self.ns(AGENT_LOG).read_text().splitlines():
            try:
                runs.append(json.loads(line))
            except ValueError:
                continue  # a line being written right now
        return runs

    def ran(self, task_id: str) -> int:
        return sum(1 for run in self.agent_runs() if run.get("task_id") == task_id)

    def busy_exec_units(self) -> list[str]:
        out = self.host.run(
            [
                "systemctl",
                "list-units",
                "--all",
                "--plain",
                "--no-legend",
                "dispatch-exec@*.service",
            ]
        ).stdout
        return [
            line.split()[0]
            for line in out.splitlines()
            if len(line.split()) > 3 and line.split()[2] not in ("inactive", "failed")
        ]

    def failed_units(self) -> list[str]:
        out = self.host.run(
            ["systemctl", "list-units", "--failed", "--all", "--plain", "--no-legend", "dispatch*"]
        ).stdout
        return [line.split()[0] for line in out.splitlines() if line.strip()]

    def unit_state(self, unit: str) -> tuple[str, str, str]:
        out = self.host.run(
            ["systemctl", "show", "-p", "ActiveState,SubState,Result", "--", unit]
        ).stdout
        props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        return props["ActiveState"], props["SubState"], props["Result"]

    def outbox(self) -> list[str]:
        try:
            return sorted(os.listdir(self.ns(f"{STATE}/outbox")))
        except FileNotFoundError:
            return []

    def snapshot(self) -> str:
        stages = {
            f"{s}/{st}": len([n for n in self.names(s, st) if not n.startswith(".")])
            for s in SENDERS
            for st in ("inbox", "pending-ack", "processing", "done")
        }
        return (
            f"stages {stages}, busy units {len(self.busy_exec_units())}, "
            f"outbox {len(self.outbox())}, {WATCH} {self.unit_state(WATCH)}, "
            f"{PATH_UNIT} {self.unit_state(PATH_UNIT)}"
        )

    def quiet(self) -> bool:
        for sender in SENDERS:
            for stage in ("inbox", "processing"):
                if any(
                    not n.startswith(".") and not n.endswith(".tmp")
                    for n in self.names(sender, stage)
                ):
                    return False
        return (
            not self.busy_exec_units()
            and not self.outbox()
            and self.unit_state(WATCH)[0] in ("inactive", "failed")
        )

    def wait_quiet(self, timeout: float = 120) -> None:
        """Inboxes and processing/ empty, no execution busy, no result deferred, no pass
        running: twice in a row, a second apart."""

        def settled() -> bool:
            if not self.quiet():
                return False
            time.sleep(1)
            return self.quiet()

        try:
            self.host.wait_for(settled, timeout, interval=0.5, what="the node at rest")
        except AssertionError:
            raise AssertionError(f"not at rest after {timeout}s: {self.snapshot()}") from None

    def kick(self) -> None:
        self.host.run(["sh", "-c", "mkdir -p /run/dispatch && touch /run/dispatch/kick"])

    # -- the invariant checker -----------------------------------------------------------
    def audit(self, *, settled: bool = True) -> subprocess.CompletedProcess[str]:
        return self.host.run(
            [
                DISPATCH,
                "audit",
                "--root",
                ROOT,
                "--state-dir",
                STATE,
                "--agent-log",
                AGENT_LOG,
                *(["--settled"] if settled else []),
            ],
            check=False,
            timeout=300,
        )

    def assert_audit(self) -> str:
        proc = self.audit()
        assert proc.returncode == 0, f"dispatch audit:\n{proc.stdout}{proc.stderr}"
        return proc.stdout.strip()

    def assert_healthy(self) -> None:
        """Invariant 6 and no failed unit: the path unit watches, the last pass succeeded."""
        self.host.wait_for(
            lambda: self.unit_state(PATH_UNIT)[:2] == ("active", "waiting"),
            30,
            interval=0.2,
            what=f"{PATH_UNIT} waiting",
        )
        assert self.unit_state(PATH_UNIT)[2] == "success", self.unit_state(PATH_UNIT)
        assert self.failed_units() == [], self.failed_units()

    def journal(self, *args: str) -> str:
        return self.host.journalctl(*args)


class Sampler:
    """Counts busy `dispatch-exec@` units, as systemd lists them, in a thread."""

    def __init__(self, node: HostileNode) -> None:
        self.node = node
        self.samples: list[int] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(len(self.node.busy_exec_units()))
            except Exception as exc:  # host rebooting: note it, keep sampling
                self.errors.append(str(exc)[:200])
                time.sleep(0.2)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def in_thread(target: Callable[[], T]) -> Callable[[], T]:
    """Run `target` in a thread now; the returned call joins it and returns its value."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = target()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join() -> T:
        thread.join()
        if "error" in box:
            raise box["error"]
        value: T = box["value"]
        return value

    return join


def send_both(node: HostileNode, requests: list[str]) -> dict[str, list[str]]:
    """Half the tasks from each sender, both sending at once."""
    half = len(requests) // 2
    joins = {
        "devbox": in_thread(lambda: node.send_many(requests[:half], "devbox")),
        "laptop": in_thread(lambda: node.send_many(requests[half:], "laptop")),
    }
    return {sender: join() for sender, join in joins.items()}


def all_results(
    node: HostileNode, sent: dict[str, list[str]], timeout: float
) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for sender, ids in sent.items():
        found.update(node.wait_results(ids, sender, timeout=timeout))
    return found


def fail_without_prerequisites() -> None:
    problems = prerequisites()
    if problems:
        pytest.fail(
            "tests/hostile boots systemd in a namespace and needs: " + "; ".join(problems),
            pytrace=False,
        )
