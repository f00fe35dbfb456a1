"""A dispatch node under a real systemd: the shipped units and generator installed in a
SystemdHost, node `gpubox` receiving from `devbox`. The sender runs in the same namespace
with its own config, key pair and state, as a second host would; each pins the other's
public key with `dispatch peers add`, as the README's set-up does."""

from __future__ import annotations

import json
import os
import shlex
import stat
import sys
import sysconfig
import time
from functools import cache
from pathlib import Path
from typing import Any

from tests.integration.sdhost import SystemdHost

TOP = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
DISPATCH = str(VENV_BIN / "dispatch")
MNT = "/mnt/dispatch"
ROOT = f"{MNT}/share"
AGENT_LOG = f"{MNT}/agent-runs.jsonl"
SENDER_CONF = "/etc/dispatch/devbox/dispatch.conf"
SENDER_SIGNER_SOCKET = "/run/dispatch/devbox-signer.sock"
AGENT_USER = "nobody"


# What the units' sandboxes hide from them: PrivateTmp= gives every unit a /tmp and /var/tmp
# of its own, and ProtectHome= (all but the exec unit) hides the homes. A checkout or venv
# there (`git clone ... /tmp/x`, a clone in ~) is bound into every unit at its own path,
# read-only; under the homes the units also get ProtectHome=tmpfs, an empty tmpfs over
# /home, /root and /run/user, since a bind beneath ProtectHome=yes has no mount point to
# land on (and the agent's user can cross a tmpfs where it cannot cross a 0700 home). A
# package installs to /usr/bin, which every unit sees: there, nothing of this applies.
PRIVATE_TMP = ("/tmp", "/var/tmp")
HOMES = ("/home", "/root", "/run/user")


def _under(path: str, tops: tuple[str, ...]) -> bool:
    return any(path == top or path.startswith(top + "/") for top in tops)


@cache
def unit_binds() -> tuple[str, ...]:
    """The directories the units run dispatch from that their sandboxes hide: the checkout
    (an editable install imports from it), the venv, the interpreter's own prefix."""
    wanted = sorted(
        {os.path.realpath(p) for p in (TOP, sys.prefix, sys.base_prefix)}
        | {os.path.dirname(os.path.realpath(sys.executable))}
    )
    hidden = [p for p in wanted if _under(p, PRIVATE_TMP + HOMES)]
    # A directory inside another one already bound comes with it.
    return tuple(p for p in hidden if not any(_under(p, (q,)) for q in hidden if q != p))


def sandbox_dropin() -> str:
    binds = unit_binds()
    if not binds:
        return ""
    lines = ["[Service]", "# tests/integration/dispatch_host.py: the checkout, where units see it"]
    if any(_under(p, HOMES) for p in binds):
        lines.append("ProtectHome=tmpfs")
    lines += [f"BindReadOnlyPaths={p}" for p in binds]
    return "\n".join(lines) + "\n"


def _other_cannot(path: str, bit: int) -> str | None:
    """Why a user with no claim on `path` (the agent's `nobody`) cannot reach it, or None.
    Above a bound directory the unit sees fresh, traversable directories instead."""
    roots = [b for b in unit_binds() if _under(path, (b,))]
    stop = roots[0] if roots else "/"
    current = path
    while True:
        try:
            mode = os.stat(current).st_mode
        except OSError as e:
            return f"{current}: {e.strerror}"
        need = bit if current == path else stat.S_IXOTH
        if not mode & need:
            return f"{current} is mode {stat.S_IMODE(mode):04o}"
        if current in (stop, "/"):
            return None
        current = os.path.dirname(current)


@cache
def missing_for_units() -> tuple[str, ...]:
    """What keeps the units (and the agent, run as AGENT_USER) from running this checkout's
    dispatch; empty when nothing does."""
    if not os.access(DISPATCH, os.X_OK):
        return (
            f"{DISPATCH} is missing: the tests run the venv's dispatch inside the hosts; "
            "run `scripts/setup-dev test` (or `make test`) first",
        )
    agent_needs = [
        (os.path.realpath(VENV_BIN / "python"), stat.S_IXOTH),
        (sysconfig.get_path("purelib"), stat.S_IXOTH),
        (str(TOP / "dispatch" / "ops" / "fake_agent.py"), stat.S_IROTH),
    ]
    problems = []
    for path, bit in agent_needs:
        why = _other_cannot(os.path.realpath(path), bit)
        if why:
            problems.append(
                f"the agent runs as {AGENT_USER}, who cannot reach {path} ({why}): "
                "clone the repository where other users can read it, or chmod o+rX the path"
            )
    return tuple(problems)


def install_units(host: SystemdHost, test_dropin: str = "") -> None:
    """The real unit files; only the binary's path differs (a venv here, /usr/bin in a
    package), and a checkout the sandboxes would hide is bound into them (sandbox_dropin)."""
    problems = missing_for_units()
    if problems:
        raise AssertionError("; ".join(problems))
    for unit in sorted((TOP / "units").iterdir()):
        text = unit.read_text().replace("/usr/bin/dispatch", DISPATCH)
        host.install_unit(text, unit.name, reload=False)
    binds = sandbox_dropin()
    if binds:
        for service in sorted((TOP / "units").glob("*.service")):
            host.write_file(f"/run/systemd/system/{service.name}.d/80-checkout.conf", binds)
    host.write_file(
        "/run/systemd/system-generators/dispatch-generator",
        f'#!/bin/sh\nexec {VENV_BIN / "dispatch-generator"} "$@"\n',
        mode=0o755,
    )
    if test_dropin:
        host.write_file("/run/systemd/system/dispatch-exec@.service.d/90-test.conf", test_dropin)


def pin_each_other(host: SystemdHost, confs: dict[str, str | None]) -> dict[str, str]:
    """Every node pins every other's public key, the line `dispatch keys show` prints there
    (node -> its config, None for the default): no key file is copied. Returns the lines."""
    lines = {}
    for node, conf in confs.items():
        env = {"DISPATCH_CONFIG": conf} if conf else {}
        lines[node] = host.run([DISPATCH, "keys", "show"], env=env).stdout.splitlines()[0]
    for node, conf in confs.items():
        env = {"DISPATCH_CONFIG": conf} if conf else {}
        for other, line in lines.items():
            if other != node:
                host.run([DISPATCH, "peers", "add", other, "-"], env=env, input=line + "\n")
    return lines


class DispatchHost:
    def __init__(self, host: SystemdHost) -> None:
        self.host = host
        self.kid = ""

    # -- set-up --------------------------------------------------------------------------
    def setup(
        self,
        *,
        timer: bool = False,
        settings: dict[str, str] | None = None,
        exec_dropin: str = "",
        peers: str = "devbox",
    ) -> None:
        h = self.host
        h.run(["mkdir", "-p", ROOT])
        h.run(["sh", "-c", f": > {AGENT_LOG} && chmod 666 {AGENT_LOG}"])
        values = {
            "DISPATCH_AGENT_BIN": f"{VENV_BIN / 'python'} -m dispatch.ops.fake_agent",
            "DISPATCH_RUN_AS": AGENT_USER,
            "DISPATCH_POLL_SEC": "1",
            "DISPATCH_MAX_PARALLEL": "2",
            # The promoter's stay (20 s by default) after a busy pass would make every wait
            # for a quiet node wait it out; the stay's own tests ask for a longer one.
            "DISPATCH_PROMOTE_LINGER_S": "3",
            "DISPATCH_MEMORY_MAX": "300M",
            # These hosts' roots are on a local disk (auto: inotify alone, the timer every
            # minute); a test that starts the timer wants its passes every poll period.
            **({"DISPATCH_WATCH_MODE": "timer"} if timer else {}),
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
                "gpubox",
                "--peers",
                peers,
                *sets,
            ]
        ).stdout
        self.kid = out.split("key ")[1].split()[0]
        h.run(
            [
                DISPATCH,
                "init",
                "--local",
                "--root",
                ROOT,
                "--node",
                "devbox",
                "--peers",
                "gpubox",
                "--config",
                SENDER_CONF,
                "--key-dir",
                "/etc/dispatch/devbox/keys",
                "--state-dir",
                "/var/lib/dispatch/devbox",
                # This test machine has no dispatch-agent user (the packages make one).
                "--run-as",
                AGENT_USER,
                # devbox's own signer socket (tests/integration/test_signer.py starts one):
                # gpubox's, at the default path, signs only as gpubox.
                "--set",
                f"DISPATCH_SIGNER_SOCKET={SENDER_SIGNER_SOCKET}",
            ]
        )
        pin_each_other(h, {"gpubox": None, "devbox": SENDER_CONF})
        dropin = f"[Service]\nEnvironment=DISPATCH_FAKE_AGENT_LOG={AGENT_LOG}\n" + exec_dropin
        install_units(h, dropin)
        h.daemon_reload()
        h.systemctl("start", "dispatch-watch.path")
        if timer:
            h.systemctl("start", "dispatch-watch.timer")

    # -- the sender's side ---------------------------------------------------------------
    def dispatch(
        self, *args: str, sender: bool = True, check: bool = True, timeout: float = 60
    ) -> Any:
        env = {"DISPATCH_CONFIG": SENDER_CONF} if sender else {}
        return self.host.run([DISPATCH, *args], env=env, check=check, timeout=timeout)

    def send(self, request: str, *flags: str) -> str:
        out = self.dispatch("send", "--to", "gpubox", "--request", request, "--json", *flags)
        task_id: str = json.loads(out.stdout)["id"]
        return task_id

    def wait(self, task_id: str, timeout: float = 60) -> dict[str, Any]:
        proc = self.dispatch(
            "wait", task_id, "--json", "--timeout", str(timeout), check=False, timeout=timeout + 30
        )
        assert proc.stdout.strip(), f"wait {task_id}: rc={proc.returncode} {proc.stderr}"
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    # -- what the receiving host shows -----------------------------------------------------
    def agent_runs(self) -> list[dict[str, Any]]:
        text = self.host.run(["cat", AGENT_LOG]).stdout
        return [json.loads(line) for line in text.splitlines() if line.strip()]

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

    def lane_files(self, stage: str) -> list[str]:
        out = self.host.run(["ls", "-A", f"{ROOT}/devbox-to-gpubox/{stage}"]).stdout
        return out.split()

    def unit_state(self, unit: str) -> tuple[str, str]:
        return (
            self.host.unit_property(unit, "ActiveState"),
            self.host.unit_property(unit, "SubState"),
        )

    def wait_until(self, what: str, predicate: Any, timeout: float = 30) -> Any:
        return self.host.wait_for(predicate, timeout, interval=0.2, what=what)

    def shell(self, script: str) -> str:
        return self.host.run(["sh", "-c", script]).stdout

    def write_raw(self, name: str, content: str) -> None:
        self.host.write_file(f"{ROOT}/devbox-to-gpubox/inbox/{name}", content)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def quote(text: str) -> str:
    return shlex.quote(text)
