"""Purging the .deb while a task runs leaves the host clean: on a clean Debian 12 root booted
with systemd (tests/packaging/debroot.py), a node started with `dispatch init --enable` runs a
long fake-agent task, and `apt-get purge -y dispatch` then leaves the system `running` (not
`degraded`), no failed unit, no unit of the package (no dispatch-exec@, sensor, signer socket,
no not-found leftovers) and no process."""

from __future__ import annotations

import time
from pathlib import Path

from tests.packaging.debroot import DebianRootHost
from tests.packaging.test_deb_install import (
    AGENT,
    SENDER,
    SENDER_CONF,
    SHARE,
    _apt,
    _dispatch_processes,
    _dispatch_units,
    _failed,
    debian_host,
)

__all__ = ["debian_host"]  # the fixture, used by name below


def _system_state(host: DebianRootHost) -> str:
    return host.run(["systemctl", "is-system-running"], check=False).stdout.strip()


def _wait_for(what: str, check: object, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_purge_while_a_task_runs_leaves_the_host_clean(
    debian_host: DebianRootHost, deb: Path
) -> None:
    h = debian_host
    _wait_for("the boot to settle", lambda: _system_state(h) in ("running", "degraded"))
    state_before, failed_before = _system_state(h), _failed(h)
    _apt(h, "install", f"/tmp/{deb.name}")
    h.run(
        [
            "dispatch",
            "init",
            "--local",
            "--enable",
            "--root",
            SHARE,
            "--node",
            "gpubox",
            "--peers",
            "devbox",
            "--set",
            f"DISPATCH_AGENT_BIN={AGENT}",
        ]
    )
    sender = ["--root", SHARE, "--node", "devbox", "--peers", "gpubox", "--config", SENDER_CONF]
    sender += ["--key-dir", f"{SENDER}/keys", "--state-dir", "/var/lib/dispatch/devbox"]
    # In-process: the default socket is gpubox's signer, which signs only as gpubox.
    sender += ["--set", "DISPATCH_SIGNER_SOCKET=/run/dispatch/devbox-signer.sock"]
    h.run(["dispatch", "init", "--local", *sender])
    tx_env = {"DISPATCH_CONFIG": SENDER_CONF}
    rx_line = h.run(["dispatch", "keys", "show"]).stdout.splitlines()[0]
    tx_line = h.run(["dispatch", "keys", "show"], env=tx_env).stdout.splitlines()[0]
    h.run(["dispatch", "peers", "add", "devbox", "-"], input=tx_line + "\n")
    h.run(["dispatch", "peers", "add", "gpubox", "-"], env=tx_env, input=rx_line + "\n")
    task_id = h.run(
        ["dispatch", "send", "--to", "gpubox", "--request", "a long job sleep=600"], env=tx_env
    ).stdout.strip()
    unit = f"dispatch-exec@{task_id}.service"
    _wait_for(unit, lambda: h.unit_property(unit, "ActiveState") == "active")
    # The node runs everything dispatch.target wants, and the task's execution.
    running = set(_dispatch_units(h, "active"))
    assert {unit, "dispatch.target", "dispatch-watch.path"} <= running, running

    _apt(h, "purge", "dispatch")

    leftover = _dispatch_units(h)
    assert not leftover, h.systemctl("list-units", "--all", "dispatch*").stdout
    assert _failed(h) == failed_before, h.systemctl("--failed").stdout
    assert _system_state(h) == state_before, h.systemctl("--failed").stdout
    _wait_for("the execution's processes to end", lambda: not _dispatch_processes(h), 15)
    # Nothing of the package is loaded any more, not even as not-found.
    listed = h.run(["systemctl", "list-units", "--all", "--plain", "--no-legend"]).stdout
    assert not [line for line in listed.splitlines() if "dispatch" in line], listed
