"""The .deb's whole life on a clean Debian root booted with systemd (tests/packaging/
debroot.py; Debian 12, and the run-and-purge test on every release in RELEASES): apt installs
it and its dependencies; the fresh install starts nothing and fails nothing; the release's own
systemd-analyze passes the units; `dispatch init`, `systemctl start dispatch-watch.path` and a
`dispatch send --wait` from a second node identity give a verified result, and the journal of
dispatch-exec@ tells the task; `apt purge` then leaves no unit, file or process of the
package."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.packaging.conftest import TRIGGERS, UNITS
from tests.packaging.debroot import RELEASES, SUITE, DebianRootHost, unpack_root

SHARE = "/srv/dispatch-share"
SENDER = "/etc/dispatch/devbox"
SENDER_CONF = f"{SENDER}/dispatch.conf"
AGENT = "/usr/bin/python3 -m dispatch.ops.fake_agent"
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive"}
# Where a file of the package could be left behind; the share is the user's data.
LEFTOVER_SCAN = (
    "find / -xdev -name '*dispatch*' -not -path '/srv/*' -not -path '/proc/*';"
    " find /run -xdev -name '*dispatch*'"
)


@pytest.fixture
def debian_host(
    request: pytest.FixtureRequest, tmp_path: Path, deb: Path, systemd_host_prerequisites: None
) -> Iterator[DebianRootHost]:
    """A booted root of Debian 12, or of the release a test names with
    `@pytest.mark.parametrize("debian_host", [...], indirect=True)`."""
    root = unpack_root(tmp_path / "root", getattr(request, "param", SUITE))
    shutil.copy(deb, root / "tmp" / deb.name)
    host = DebianRootHost("debian-pkgtest", tmp_path / "sdhost", root)
    try:
        host.start(timeout=120)
        yield host
    finally:
        try:
            host.poweroff()
        finally:
            # Only once the namespace, and every mount in it, is gone.
            if not host.namespace_pids():
                shutil.rmtree(root, ignore_errors=True)


def _dispatch_units(host: DebianRootHost, *states: str) -> list[str]:
    argv = ["systemctl", "list-units", "--all", "--plain", "--no-legend", "--full"]
    if states:
        argv.append("--state=" + ",".join(states))
    out = host.run([*argv, "dispatch*"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _failed(host: DebianRootHost) -> set[str]:
    out = host.run(
        ["systemctl", "list-units", "--failed", "--plain", "--no-legend", "--full"]
    ).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _dispatch_processes(host: DebianRootHost) -> list[str]:
    found = []
    for pid in host.namespace_pids():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "dispatch" in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def _apt(host: DebianRootHost, *args: str) -> None:
    argv = ["apt-get", "-y", "-q", "--no-install-recommends", *args]
    proc = host.run(argv, env=APT_ENV, check=False, timeout=600)
    if proc.returncode != 0 and "Failed to fetch" in proc.stdout + proc.stderr:
        # The cached lists (at most a week old) name a version the mirror dropped since.
        host.run(["apt-get", "update", "-q"], env=APT_ENV, timeout=600)
        proc = host.run(argv, env=APT_ENV, check=False, timeout=600)
    assert proc.returncode == 0, f"{argv}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


MACHINE_CA = "/etc/ssl/certs/ca-certificates.crt"
MCP_TOOLS = {
    "dispatch_send",
    "dispatch_wait",
    "dispatch_result",
    "dispatch_cancel",
    "dispatch_logs",
    "dispatch_status",
}
# The installed package's own stand-in for an agent CLI drives the session
# (fake_agent.mcp_session: each request after the answer before it, stdin open till the end).
MCP_CLIENT = (
    "import json; from dispatch.ops.fake_agent import mcp_session; "
    "print(json.dumps(mcp_session(['dispatch', 'mcp'], [{'method': 'tools/list'}])))"
)


def _mcp_by_its_hint(h: DebianRootHost, env: dict[str, str]) -> None:
    """Without the SDK (no distribution packages it), `dispatch mcp` prints how to install
    it; that, done word for word on the stock root, makes the package's `dispatch mcp` answer
    `initialize` and `tools/list` over stdio."""
    from dispatch.mcp.sdk import SDK_HINT, SDK_VENV

    proc = h.run(["dispatch", "mcp"], env=env, check=False)
    assert proc.returncode == 2 and proc.stdout == "", proc
    assert len(proc.stderr.splitlines()) == 1 and SDK_HINT in proc.stderr, proc.stderr
    # The hint's "Debian and Ubuntu: apt install python3-venv first".
    assert "apt install python3-venv" in proc.stderr
    _apt(h, "install", "python3-venv")
    # pip in the root fetches from PyPI; the machine's own CA bundle, which a TLS-intercepting
    # proxy may need, is the only thing the test adds to the hint's environment.
    shutil.copyfile(MACHINE_CA, h.root / "tmp/machine-ca.pem")
    h.run(["sh", "-c", SDK_HINT], env={"PIP_CERT": "/tmp/machine-ca.pem"}, timeout=600)
    served = h.run(["python3", "-c", MCP_CLIENT], env=env, timeout=90)
    replies = {int(k): v for k, v in json.loads(served.stdout).items()}
    assert replies[1]["result"]["serverInfo"]["name"] == "dispatch", replies[1]
    assert {tool["name"] for tool in replies[2]["result"]["tools"]} == MCP_TOOLS, replies[2]
    # Not the package's: the purge below must not be blamed for it.
    h.run(["rm", "-rf", SDK_VENV])


@pytest.mark.parametrize("debian_host", sorted(RELEASES), indirect=True)
def test_deb_install_run_and_purge(debian_host: DebianRootHost, deb: Path) -> None:
    h = debian_host
    failed_before = _failed(h)
    assert h.run(["dpkg-query", "-W", "dispatch"], check=False).returncode != 0
    assert not _dispatch_units(h)
    before = set(h.run(["sh", "-c", LEFTOVER_SCAN]).stdout.split())

    # -- install: with apt, dependencies resolved from the archive ----------------------------
    _apt(h, "install", f"/tmp/{deb.name}")
    assert (
        h.run(["dpkg-query", "-W", "-f", "${Status}", "dispatch"]).stdout == "install ok installed"
    )
    for module in ("systemd.journal", "click", "pyinotify"):
        h.run(["/usr/bin/python3", "-c", f"import {module}"])
    # Byte-compiled at install: the units run under ProtectSystem=strict.
    h.run(["sh", "-c", "ls /usr/lib/python3/dist-packages/dispatch/__pycache__/cli.*.pyc"])

    # -- a fresh install starts nothing and fails nothing -------------------------------------
    for trigger in TRIGGERS:
        assert h.systemctl("is-enabled", trigger, check=False).stdout.strip() == "enabled"
        # postinst started it; its ConditionDirectoryNotEmpty= (no key yet) kept it inactive.
        assert h.unit_property(trigger, "ConditionResult") == "no", trigger
    assert not _dispatch_units(h, "active", "activating", "failed")
    assert _failed(h) == failed_before
    assert not _dispatch_processes(h)
    for path, mode in (
        ("/etc/dispatch/keys", "700 root root"),
        ("/var/lib/dispatch", "700 root root"),
    ):
        assert h.run(["stat", "-c", "%a %U %G", path]).stdout.strip() == mode, path
    # The conffile is the commented template until `dispatch init` fills it in.
    assert (
        h.run(
            ["grep", "-c", "^DISPATCH_", "/etc/dispatch/dispatch.conf"], check=False
        ).stdout.strip()
        == "0"
    )
    conffiles = h.run(["cat", "/var/lib/dpkg/info/dispatch.conffiles"]).stdout
    assert "/etc/dispatch/dispatch.conf" in conffiles.split()
    h.run(["test", "-x", "/usr/lib/systemd/system-generators/dispatch-generator"])
    # The units as this release's systemd reads them (Debian 13: 257; the machine's is 252).
    h.run(["systemd-analyze", "verify", "--man=no", *(u.replace("@.", "@check.") for u in UNITS)])
    h.run(["test", "-s", "/usr/share/man/man1/dispatch.1.gz"])

    # -- dispatch init, the path unit, a task from a second node identity ---------------------
    out = h.run(
        [
            "dispatch",
            "init",
            "--local",
            "--root",
            SHARE,
            "--node",
            "gpubox",
            "--peers",
            "devbox",
            "--set",
            f"DISPATCH_AGENT_BIN={AGENT}",
            "--set",
            "DISPATCH_POLL_SEC=1",
        ]
    ).stdout
    kid = out.split("key ")[1].split()[0]
    # init reloaded systemd: the generator has rendered the node's lanes.
    lanes = h.run(["cat", "/run/systemd/generator/dispatch-watch.path.d/50-lanes.conf"]).stdout
    assert f"PathChanged={SHARE}/devbox-to-gpubox/inbox" in lanes
    h.systemctl("start", "dispatch-watch.path")
    assert h.unit_property("dispatch-watch.path", "ActiveState") == "active"
    h.run(
        [
            "dispatch",
            "init",
            "--local",
            "--root",
            SHARE,
            "--node",
            "devbox",
            "--peers",
            "gpubox",
            "--config",
            SENDER_CONF,
            "--key-dir",
            f"{SENDER}/keys",
            "--state-dir",
            "/var/lib/dispatch/devbox",
            # In-process: the default socket is gpubox's signer, which signs only as gpubox.
            "--set",
            "DISPATCH_SIGNER_SOCKET=/run/dispatch/devbox-signer.sock",
        ]
    )
    # Each identity pins the other's public key (what `dispatch keys show` prints there).
    rx_line = h.run(["dispatch", "keys", "show"]).stdout.splitlines()[0]
    tx_env = {"DISPATCH_CONFIG": SENDER_CONF}
    tx_line = h.run(["dispatch", "keys", "show"], env=tx_env).stdout.splitlines()[0]
    h.run(["dispatch", "peers", "add", "devbox", "-"], input=tx_line + "\n")
    h.run(["dispatch", "peers", "add", "gpubox", "-"], env=tx_env, input=rx_line + "\n")
    sent = h.run(
        [
            "dispatch",
            "send",
            "--to",
            "gpubox",
            "--request",
            "package smoke test",
            "--wait",
            "--wait-timeout",
            "90",
            "--json",
        ],
        env={"DISPATCH_CONFIG": SENDER_CONF},
        timeout=150,
    )
    reply = json.loads(sent.stdout)
    task_id, result = reply["id"], reply["result"]
    assert result["status"] == "ok", result
    assert result["answered_by"] == "gpubox" and result["kid"] == kid, result
    assert result["unit"] == f"dispatch-exec@{task_id}.service", result
    assert "package smoke test" in result["final_text"], result
    # The sender's own check of the signed result file.
    verified = json.loads(
        h.run(
            ["dispatch", "result", task_id, "--json"], env={"DISPATCH_CONFIG": SENDER_CONF}
        ).stdout
    )
    assert verified["status"] == "ok"
    journal = h.journalctl("-u", "dispatch-exec@*", "-o", "verbose")
    assert f"DISPATCH_TASK_ID={task_id}" in journal, journal[-3000:]
    assert f"dispatch-exec@{task_id}.service" in journal

    # -- the MCP server, by the hint it prints ----------------------------------------------
    _mcp_by_its_hint(h, {"DISPATCH_CONFIG": SENDER_CONF})

    # -- purge: no unit, file or process of the package left -----------------------------------
    _apt(h, "purge", "dispatch")
    assert h.run(["dpkg-query", "-W", "-f", "${Status}", "dispatch"], check=False).stdout in (
        "",
        "unknown ok not-installed",
    )
    assert not _dispatch_units(h), h.systemctl("list-units", "--all", "dispatch*").stdout
    # (exit status 1: no unit file matches)
    assert not h.run(
        ["systemctl", "list-unit-files", "--plain", "--no-legend", "dispatch*"], check=False
    ).stdout.strip()
    # Executions end, and their cgroups with them, just after their units stop.
    deadline = time.monotonic() + 10
    while _dispatch_processes(h) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _dispatch_processes(h)
    after = set(h.run(["sh", "-c", LEFTOVER_SCAN]).stdout.split())
    # (less what another package installed since, e.g. python3-venv's openssl man pages)
    left = [p for p in sorted(after - before) if h.run(["dpkg", "-S", p], check=False).returncode]
    assert not left, f"left behind by the package: {left}"
    assert _failed(h) == failed_before
