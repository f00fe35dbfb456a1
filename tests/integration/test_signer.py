"""The local signer under the real units: dispatch-signer.socket starts dispatch-signer.service
on the first request. A user in group `dispatch` sends and waits with no key file; a user
outside it is refused with one line; the key stays root's, 0600, unreadable to them."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.dispatch_host import (
    DISPATCH,
    ROOT,
    SENDER_CONF,
    TOP,
    DispatchHost,
    sandbox_dropin,
)
from tests.integration.sdhost import SystemdHost

MEMBER = "daemon"  # an existing unprivileged user, put in group dispatch in the host only
STRANGER = "nobody"
SOCKET = "/run/dispatch/devbox-signer.sock"
KEY = "/etc/dispatch/devbox/keys/devbox.ed25519"


@pytest.fixture
def host(tmp_path: Path) -> Iterator[SystemdHost]:
    # The host's own /etc/group: group dispatch with one member, not on this machine.
    group = tmp_path / "group"
    shutil.copy("/etc/group", group)
    with group.open("a") as out:
        out.write(f"dispatch:x:899:{MEMBER}\n")
    (tmp_path / "mnt-dispatch").mkdir(mode=0o755)
    sd = SystemdHost(
        "gpubox",
        tmp_path / "sdhost",
        binds={
            "/etc/dispatch": tmp_path / "etc-dispatch",
            "/var/lib/dispatch": tmp_path / "var-lib-dispatch",
            "/mnt/dispatch": tmp_path / "mnt-dispatch",
            "/etc/group": group,
        },
    )
    try:
        sd.start()
        yield sd
    finally:
        sd.poweroff()


def sender_signer(h: SystemdHost) -> None:
    """The sender (node devbox, in the same namespace) gets its own signer: the shipped units
    with its config and socket, as its own host would run them."""
    socket_unit = (TOP / "units/dispatch-signer.socket").read_text()
    service = (TOP / "units/dispatch-signer.service").read_text()
    h.install_unit(
        socket_unit.replace("/run/dispatch/signer.sock", SOCKET), "devbox-signer.socket", False
    )
    service = (
        service.replace("/usr/bin/dispatch", DISPATCH)
        .replace("/etc/dispatch/dispatch.conf", SENDER_CONF)
        .replace("dispatch-signer.socket", "devbox-signer.socket")
    )
    h.install_unit(service, "devbox-signer.service", False)
    binds = sandbox_dropin()
    if binds:
        h.write_file("/run/systemd/system/devbox-signer.service.d/80-checkout.conf", binds)
    h.run(["sh", "-c", f"echo DISPATCH_SIGNER_SOCKET={SOCKET} >> {SENDER_CONF}"])
    h.daemon_reload()
    h.systemctl("start", "devbox-signer.socket")
    # README: the sender's outgoing lane writable by the group.
    lane = f"{ROOT}/devbox-to-gpubox"
    h.run(["sh", "-c", f"chgrp -R dispatch {lane} && chmod -R g+w {lane}"])


def as_user(h: SystemdHost, user: str, *args: str, check: bool = True) -> Any:
    """`args` as `user` with its groups from the host's /etc/group (a login would)."""
    env = {"DISPATCH_CONFIG": SENDER_CONF, "XDG_STATE_HOME": f"/tmp/state-{user}"}
    h.run(["install", "-d", "-o", user, f"/tmp/state-{user}"])
    gid = h.run(["id", "-g", user]).stdout.strip()
    argv = ["setpriv", f"--reuid={user}", f"--regid={gid}", "--init-groups", *args]
    return h.run(argv, env=env, check=check)


def events_of(h: SystemdHost) -> list[dict[str, Any]]:
    story = h.journalctl("-u", "devbox-signer.service", "-o", "json")
    return [json.loads(line) for line in story.splitlines() if line.strip()]


def uid_of(h: SystemdHost, user: str) -> str:
    return h.run(["id", "-u", user]).stdout.strip()


def test_a_group_member_sends_and_waits_and_a_stranger_is_refused(host: SystemdHost) -> None:
    d = DispatchHost(host)
    d.setup(timer=False)
    sender_signer(host)
    key_mode = host.run(["stat", "-c", "%a %U", KEY]).stdout.split()
    assert key_mode == ["600", "root"]
    # The member cannot read the key...
    denied = as_user(host, MEMBER, "cat", KEY, check=False)
    assert denied.returncode != 0
    # ...and sends and waits through the signer.
    sent = as_user(host, MEMBER, DISPATCH, "send", "--to", "gpubox", "--request", "hi", "--json")
    task_id = json.loads(sent.stdout)["id"]
    waited = as_user(host, MEMBER, DISPATCH, "wait", task_id, "--json", "--timeout", "60")
    assert json.loads(waited.stdout)["status"] == "ok"
    # No process holds the key open (the signer reads it once as it starts, then closes it).
    holders = host.run(
        [
            "sh",
            "-c",
            f'for f in /proc/[0-9]*/fd/*; do [ "$(readlink $f)" = {KEY} ] && echo $f; done; true',
        ]
    ).stdout
    assert holders.strip() == ""
    signed = [e for e in events_of(host) if e.get("DISPATCH_EVENT") == "signer_signed"]
    assert signed and signed[0].get("DISPATCH_UID") == uid_of(host, MEMBER)
    # Outside the group: one clear line. The config is the group's (0640 root:dispatch), so
    # the stranger names the settings itself, as anyone may: the signer is the gate.
    settings = {
        "DISPATCH_CONFIG": "/dev/null",
        "DISPATCH_ROOT": ROOT,
        "DISPATCH_NODE": "devbox",
        "DISPATCH_PEERS": "gpubox",
        "DISPATCH_KEY_DIR": "/etc/dispatch/devbox/keys",
        "DISPATCH_STATE_DIR": "/var/lib/dispatch/devbox",
        "DISPATCH_SIGNER_SOCKET": SOCKET,
    }
    sets = [f"{k}={v}" for k, v in settings.items()]
    refused = as_user(
        host,
        STRANGER,
        "env",
        *sets,
        DISPATCH,
        "send",
        "--to",
        "gpubox",
        "--request",
        "x",
        check=False,
    )
    err = refused.stderr.strip().splitlines()
    assert refused.returncode != 0, err
    assert len(err) == 1 and "the signer refused: uid" in err[0], err
    assert "may not sign as devbox" in err[0] and "group 'dispatch'" in err[0]
    refusals = [e for e in events_of(host) if e.get("DISPATCH_EVENT") == "signer_refused"]
    assert refusals and refusals[-1].get("DISPATCH_UID") == uid_of(host, STRANGER)
