"""A dispatch node under a real systemd: the shipped units and generator installed in a
SystemdHost, node `gpubox` receiving from `devbox`. The sender runs in the same namespace
with its own config, key ring copy and state, as a second host would."""

from __future__ import annotations

import json
import shlex
import sys
import time
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
AGENT_USER = "nobody"


def install_units(host: SystemdHost, test_dropin: str = "") -> None:
    """The real unit files; only the binary's path differs (a venv here, /usr/bin in a
    package)."""
    for unit in sorted((TOP / "units").iterdir()):
        text = unit.read_text().replace("/usr/bin/dispatch", DISPATCH)
        host.install_unit(text, unit.name, reload=False)
    host.write_file(
        "/run/systemd/system-generators/dispatch-generator",
        f'#!/bin/sh\nexec {VENV_BIN / "dispatch-generator"} "$@"\n',
        mode=0o755,
    )
    if test_dropin:
        host.write_file("/run/systemd/system/dispatch-exec@.service.d/90-test.conf", test_dropin)


class DispatchHost:
    def __init__(self, host: SystemdHost) -> None:
        self.host = host
        self.kid = ""

    # -- set-up --------------------------------------------------------------------------
    def setup(
        self, *, timer: bool = False, settings: dict[str, str] | None = None, exec_dropin: str = ""
    ) -> None:
        h = self.host
        h.run(["mkdir", "-p", ROOT])
        h.run(["sh", "-c", f": > {AGENT_LOG} && chmod 666 {AGENT_LOG}"])
        values = {
            "DISPATCH_AGENT_BIN": f"{VENV_BIN / 'python'} -m dispatch.ops.fake_agent",
            "DISPATCH_RUN_AS": AGENT_USER,
            "DISPATCH_POLL_SEC": "1",
            "DISPATCH_MAX_PARALLEL": "2",
            "DISPATCH_MEMORY_MAX": "300M",
        }
        values.update(settings or {})
        sets = [a for k, v in values.items() for a in ("--set", f"{k}={v}")]
        out = h.run(
            [DISPATCH, "init", "--root", ROOT, "--node", "gpubox", "--peers", "devbox", *sets]
        ).stdout
        self.kid = out.split("key ")[1].split()[0]
        h.run(
            [
                DISPATCH,
                "init",
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
                "--key-file",
                f"/etc/dispatch/keys/{self.kid}.key",
            ]
        )
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
