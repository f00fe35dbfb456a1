"""The README's two-host set-up, followed word for word on two clean Debian 12 roots, each
booted with its own systemd (tests/packaging/debroot.py), sharing one tmpfs mounted at
/mnt/share in both (a share both hosts see, on a filesystem of its own as a mounted share
is). The commands come from the README itself: every line starting with `devbox# ` or
`gpubox# ` in the fenced blocks that follow a `<!-- readme-walk -->` marker, run in order.
Only what cannot be written in advance is filled in: each node's public key line (what its
own `dispatch init` printed) and the package file's version. It ends with `dispatch doctor`
all `pass` on both hosts. Then one host's config breaks, and the other's doctor says so."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.packaging.conftest import TOP
from tests.packaging.debroot import DebianRootHost, unpack_root

MARKER = "<!-- readme-walk -->"
HOSTS = ("devbox", "gpubox")
PROMPT = re.compile(r"^(devbox|gpubox)# (.+)$")
KEY_LINE = re.compile(r"dispatch-ed25519 \S+ (devbox|gpubox)")
DEB_NAME = re.compile(r"\./dispatch_\S+_all\.deb")
ENV = {"DEBIAN_FRONTEND": "noninteractive"}
DOCTOR_WAIT_S = 90


def walk(readme: str) -> list[tuple[str, str]]:
    """(host, command) for every prompt line of the marked blocks, in order."""
    steps = []
    for part in readme.split(MARKER)[1:]:
        block = re.match(r"\s*```[a-z]*\n(.*?)\n```", part, re.S)
        assert block is not None, f"no fenced block right after {MARKER}"
        for line in block.group(1).splitlines():
            found = PROMPT.match(line)
            if found:
                steps.append((found.group(1), found.group(2)))
    return steps


def test_the_walk_is_found_in_the_readme() -> None:
    steps = walk((TOP / "README.md").read_text())
    commands = [f"{host}# {cmd}" for host, cmd in steps]
    # What the set-up cannot do without, each on both hosts and in this order.
    for needed in ("apt-get install", "dispatch init", "dispatch peers add", "systemctl enable"):
        hosts = [c.split("#")[0] for c in commands if needed in c]
        assert sorted(hosts) == sorted(HOSTS), (needed, commands)
    assert commands[-2:] == ["devbox# dispatch doctor", "gpubox# dispatch doctor"]


@pytest.fixture
def share(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "share"
    path.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "mode=755", "readme-share", str(path)], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def hosts(
    tmp_path: Path, deb: Path, share: Path, systemd_host_prerequisites: None
) -> Iterator[dict[str, DebianRootHost]]:
    started: dict[str, DebianRootHost] = {}
    try:
        for name in HOSTS:
            root = unpack_root(tmp_path / f"root-{name}")
            shutil.copy(deb, root / "root" / deb.name)
            host = DebianRootHost(
                name, tmp_path / f"sdhost-{name}", root, root_binds={"/mnt/share": share}
            )
            started[name] = host
            host.start(timeout=120)
        yield started
    finally:
        for host in started.values():
            try:
                host.poweroff()
            finally:
                if not host.namespace_pids():
                    shutil.rmtree(host.root, ignore_errors=True)


def _doctor(host: DebianRootHost, command: str) -> subprocess.CompletedProcess[str]:
    """`dispatch doctor` as the README runs it, again until it passes: the peers' first
    heartbeats come a few seconds after `systemctl enable --now`."""
    deadline = time.monotonic() + DOCTOR_WAIT_S
    while True:
        proc = host.run(f"cd /root && {command}", check=False, env=ENV)
        if proc.returncode == 0 or time.monotonic() > deadline:
            return proc
        time.sleep(2)


def test_readme_two_host_setup_ends_with_doctor_all_pass(
    hosts: dict[str, DebianRootHost], deb: Path
) -> None:
    keys: dict[str, str] = {}
    doctors: dict[str, str] = {}
    for name, command in walk((TOP / "README.md").read_text()):
        host = hosts[name]
        command = DEB_NAME.sub(f"./{deb.name}", command)
        for node in KEY_LINE.findall(command):
            assert node in keys, f"{name}# {command}: {node}'s key is not known yet"
        command = KEY_LINE.sub(lambda m: keys[m.group(1)], command)
        if command.startswith("dispatch doctor"):
            proc = _doctor(host, command)
            doctors[name] = proc.stdout
        else:
            proc = host.run(f"cd /root && {command}", check=False, env=ENV, timeout=600)
        assert proc.returncode == 0, (
            f"{name}# {command}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
        print(f"{name}# {command}\n{proc.stdout}{proc.stderr}")  # pytest -s: for the README
        printed = re.search(r"^public key: (dispatch-ed25519 \S+ (\w+))$", proc.stdout, re.M)
        if printed:
            assert printed.group(2) == name
            keys[name] = printed.group(1)
    assert sorted(doctors) == sorted(HOSTS)
    for name, out in doctors.items():
        lines = out.splitlines()
        checks = [line for line in lines if not line.startswith(" ")]
        assert checks and all(line.startswith("pass  ") for line in checks), f"{name}:\n{out}"
        assert any(line.split()[1:3] == ["peer", HOSTS[1 - HOSTS.index(name)]] for line in checks)

    # Then gpubox's config breaks (a typo, then daemon-reload): under its units' sandboxes its
    # heartbeat still reaches the share, saying why, and devbox's doctor fails for that peer.
    gpubox, devbox = hosts["gpubox"], hosts["devbox"]
    gpubox.run("echo DISPATCH_POLL_SEC=3s >> /etc/dispatch/dispatch.conf")
    gpubox.daemon_reload()
    beat = gpubox.systemctl("start", "dispatch-heartbeat.service", check=False)
    assert beat.returncode != 0  # the unit fails visibly on the host itself
    assert "DISPATCH_POLL_SEC" in gpubox.journalctl("-u", "dispatch-heartbeat.service")
    proc = devbox.run(["dispatch", "doctor"], check=False)
    peer = next(x for x in proc.stdout.splitlines() if x.split()[1:3] == ["peer", "gpubox"])
    assert proc.returncode == 1 and peer.startswith("FAIL  "), proc.stdout
    assert "config broken: " in peer and "DISPATCH_POLL_SEC" in peer, proc.stdout
    status = devbox.run(["dispatch", "status"], check=False).stdout
    assert " FAIL config broken: " in status, status
