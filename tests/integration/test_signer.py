"""The local signer under the real units: dispatch-signer.socket starts dispatch-signer.service
on the first request. A user in group `dispatch` sends and waits with no key file; a user
outside it is refused with one line; the key stays root's, 0600, unreadable to them."""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.dispatch_host import (
    AGENT_LOG,
    DISPATCH,
    ROOT,
    SENDER_CONF,
    SENDER_SIGNER_SOCKET,
    TOP,
    VENV_BIN,
    DispatchHost,
    sandbox_dropin,
)
from tests.integration.sdhost import SystemdHost

MEMBER = "daemon"  # an existing unprivileged user, put in group dispatch in the host only
STRANGER = "nobody"
SOCKET = SENDER_SIGNER_SOCKET
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
    h.daemon_reload()
    h.systemctl("start", "devbox-signer.socket")


def as_user(h: SystemdHost, user: str, *args: str, check: bool = True) -> Any:
    """`args` as `user` with its groups from the host's /etc/group (a login would)."""
    env = {"DISPATCH_CONFIG": SENDER_CONF, "XDG_STATE_HOME": f"/tmp/state-{user}"}
    h.run(["install", "-d", "-o", user, f"/tmp/state-{user}"])
    gid = h.run(["id", "-g", user]).stdout.strip()
    argv = ["setpriv", f"--reuid={user}", f"--regid={gid}", "--init-groups", *args]
    return h.run(argv, env=env, check=check)


def start_key_audit(h: SystemdHost, key: str, name: str = "key-audit") -> None:
    """fanotify on the key file (tests/integration/open_audit.py) as a transient unit, which
    writes to the host's own /run: nothing of an earlier host is in it."""
    script = str(TOP / "tests/integration/open_audit.py")
    out = f"/run/{name}.txt"
    h.run(["systemd-run", "--unit", name, str(VENV_BIN / "python"), script, key, out])
    h.wait_for(lambda: "ready" in h.run(["cat", out], check=False).stdout, 30)


def key_openers(h: SystemdHost, name: str = "key-audit") -> list[str]:
    """The command line of every process that opened the key since the audit started."""
    h.systemctl("stop", f"{name}.service")
    lines = h.run(["cat", f"/run/{name}.txt"]).stdout.splitlines()
    return [line.split(" ", 1)[1].rsplit(" [", 1)[0] for line in lines if line != "ready"]


def events_of(h: SystemdHost, unit: str = "devbox-signer.service") -> list[dict[str, Any]]:
    story = h.journalctl("-u", unit, "-o", "json")
    return [json.loads(line) for line in story.splitlines() if line.strip()]


def uid_of(h: SystemdHost, user: str) -> str:
    return h.run(["id", "-u", user]).stdout.strip()


def test_a_group_member_sends_and_waits_and_a_stranger_is_refused(host: SystemdHost) -> None:
    d = DispatchHost(host)
    d.setup(timer=False)
    # Every open of devbox's key from here on, by whom: the signer starts (and reads the key)
    # on the first request, so all of its opens are seen too.
    start_key_audit(host, KEY)
    sender_signer(host)
    key_mode = host.run(["stat", "-c", "%a %U", KEY]).stdout.split()
    assert key_mode == ["600", "root"]
    # `dispatch init` gave the outgoing lane's sender directories to the group: no chgrp.
    lane = f"{ROOT}/devbox-to-gpubox"
    modes = host.run(["stat", "-c", "%a %G", f"{lane}/tmp", f"{lane}/inbox", f"{lane}/cancel"])
    assert modes.stdout.split("\n")[:3] == ["2775 dispatch"] * 3, modes.stdout
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
    openers = key_openers(host)
    assert openers, "the audit saw no open at all: it would prove nothing"
    assert all(" signer --idle" in line for line in openers), "\n".join(openers)
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


def child_of(result: dict[str, Any]) -> str:
    text = str(result["final_text"])
    assert "sent " in text, text
    return text.split("sent ", 1)[1].split()[0]


def failure_of(d: DispatchHost, task_id: str) -> str:
    """The one line the agent's `dispatch send` printed when it was refused."""
    runs = [r for r in d.agent_runs() if r.get("task_id") == task_id]
    assert len(runs) == 1 and runs[0].get("sent") is None, runs
    failure = str(runs[0].get("send_failure"))
    assert "\n" not in failure
    return failure


def refusals_for(h: SystemdHost, task_id: str) -> list[str]:
    return [
        str(e.get("MESSAGE"))
        for e in events_of(h, "dispatch-signer.service")
        if e.get("DISPATCH_EVENT") == "signer_refused" and e.get("DISPATCH_EXECUTION") == task_id
    ]


def test_an_agent_running_as_nobody_chains_through_the_signer_and_the_courier(
    host: SystemdHost,
) -> None:
    """The agent (nobody, in dispatch-exec@<id>.service) holds no key, cannot read the
    node's config and cannot write the share: the signer knows it by its cgroup and signs
    only a child of <id> (chain fields it sets itself), and the executor's courier delivers
    it from the execution's outbox. Nothing is loosened by hand."""
    d = DispatchHost(host)
    # A second peer, c, outside the chain set: the agent may not send there. With the timer,
    # as a node runs: each send here follows the last result at once, while the pass the
    # execution's end started may be ending, and a path unit's start merges into it.
    d.setup(timer=True, peers="devbox,c", settings={"DISPATCH_CHAIN_PEERS": "devbox"})
    host.systemctl("start", "dispatch-signer.socket")
    assert host.run(["stat", "-c", "%a", "/etc/dispatch/dispatch.conf"]).stdout.strip() == "640"
    lane = f"{ROOT}/gpubox-to-devbox"
    node_key = "/etc/dispatch/keys/gpubox.ed25519"
    assert host.run(["stat", "-c", "%a %U", node_key]).stdout.split() == ["600", "root"]
    start_key_audit(host, node_key)

    # Through `dispatch send`, and through the MCP server's dispatch_send tool.
    children = {}
    for via in ("", " via=mcp"):
        task_id = d.send(f"relay send=devbox chain=1{via}")
        result = d.wait(task_id)
        assert result["status"] == "ok", result
        log = host.run(["cat", f"{ROOT}/devbox-to-gpubox/done/{task_id}.log"]).stdout
        assert "sent " in str(result["final_text"]), log
        child_id = child_of(result)
        child = json.loads(host.run(["cat", f"{lane}/inbox/{child_id}.json"]).stdout)
        assert (child["from"], child["parent"], child["hops"]) == ("gpubox", task_id, 1)
        assert f"# child task {child_id} delivered to devbox" in log
        children[task_id] = child_id
    # The key was opened by the signer alone: never by the agent, its `dispatch send` or
    # its MCP server, nor by the executor, which had its result signed too.
    openers = key_openers(host)
    assert openers and all("dispatch signer" in line for line in openers), openers
    signer_events = events_of(host, "dispatch-signer.service")
    signed = [e for e in signer_events if e.get("DISPATCH_EVENT") == "signer_signed"]
    by_agents = [e for e in signed if e.get("DISPATCH_UID") != "0"]
    assert sorted(str(e.get("DISPATCH_EXECUTION")) for e in by_agents) == sorted(children)
    assert {e.get("DISPATCH_UID") for e in by_agents} == {uid_of(host, "nobody")}
    by_executors = [e for e in signed if e.get("DISPATCH_UID") == "0"]
    assert sorted(str(e.get("DISPATCH_EXECUTION")) for e in by_executors) == sorted(children)
    assert all("by its executor" in str(e.get("MESSAGE")) for e in by_executors)
    # The node recorded what it sent for its agent (its own sent log, root's).
    for child_id in children.values():
        host.run(["test", "-f", f"/var/lib/dispatch/sent/{child_id}"])
    # The peer accepts them: one promote pass of devbox admits both as genuine.
    host.run(
        [DISPATCH, "promote"],
        env={"DISPATCH_CONFIG": SENDER_CONF, "DISPATCH_LAUNCHER": "process"},
    )
    for child_id in children.values():
        entry = json.loads(host.run(["cat", f"/var/lib/dispatch/devbox/seen/{child_id}"]).stdout)
        assert entry["stage"] not in ("rejected", "inbox"), entry

    # The agent follows its child to its end (`dispatch send --wait`): its own sent record
    # is in its box, and the result on the share verifies with the pinned public keys.
    host.run(
        [
            "systemd-run",
            "--unit",
            "devbox-watch",
            "-E",
            f"DISPATCH_CONFIG={SENDER_CONF}",
            "-E",
            "DISPATCH_LAUNCHER=process",
            "-E",
            f"DISPATCH_FAKE_AGENT_LOG={AGENT_LOG}",
            "-E",
            f"DISPATCH_AGENT_BIN={VENV_BIN / 'python'} -m dispatch.ops.fake_agent",
            DISPATCH,
            "watch",
        ]
    )
    try:
        task_id = d.send("relay send=devbox chain=1 wait=90")
        result = d.wait(task_id, timeout=150)
    finally:
        host.systemctl("stop", "devbox-watch.service", check=False)
    waited_for = child_of(result)
    answer = host.run(["cat", f"{lane}/done/{waited_for}.result.json"]).stdout
    assert "(child ended ok) to devbox" in result["final_text"], answer

    # What it may not sign: each refused with one line, and recorded by the signer.
    forged_parent = "0b6d1b8e-2f4a-4c1e-9d7a-3f5e6a7b8c9d"
    cases = {
        f"relay send=devbox parent={forged_parent}": "may sign only its own children",
        "relay send=devbox hops=5": "children are at hops 1, not 6",
        "relay send=c": "may send children to devbox (DISPATCH_CHAIN_PEERS), not 'c'",
    }
    # Each through `dispatch send` and through the MCP server's dispatch_send tool.
    for (request, why), via in itertools.product(cases.items(), ("", " via=mcp")):
        task_id = d.send(request + via)
        result = d.wait(task_id)
        assert result["status"] == "ok", result
        failure = failure_of(d, task_id)
        if not via:
            assert failure.startswith("dispatch: the signer refused: execution "), failure
        assert why in failure, (via, failure)
        assert [why in line for line in refusals_for(host, task_id)] == [True], request + via
    # Nothing of theirs reached the lane (devbox's pass took the two children in).
    assert host.run(["ls", "-A", f"{lane}/inbox"]).stdout.split() == []

    # After its execution ended: a process the agent left behind (systemd would kill it
    # with the unit; KillMode=process lets it outlive the execution, to try) is refused.
    host.write_file(
        "/run/systemd/system/dispatch-exec@.service.d/95-leftover.conf",
        "[Service]\nKillMode=process\n",
    )
    host.daemon_reload()
    task_id = d.send("relay send=devbox late=5")
    assert d.wait(task_id)["status"] == "ok"

    def late() -> list[dict[str, Any]]:
        return [r for r in d.agent_runs() if r.get("late_of") == task_id]

    attempt = d.wait_until("the leftover process's send", late, timeout=30)[0]
    assert attempt["sent"] is None
    story = [
        (e.get("DISPATCH_EVENT"), e.get("MESSAGE"))
        for e in events_of(host, "dispatch-signer.service")
        if e.get("DISPATCH_EXECUTION") == task_id
    ]
    assert "is not running here: it may sign nothing" in attempt["send_failure"], (attempt, story)
    assert "\n" not in attempt["send_failure"]
    assert any("is not running here" in line for line in refusals_for(host, task_id))
    # A later execution of the same id does not run: its agent (and its chain) never starts.
    first = next(iter(children))
    host.systemctl("start", f"dispatch-exec@{first}.service", check=False)
    assert [r.get("task_id") for r in d.agent_runs()].count(first) == 1
    # The boxes went with their executions.
    assert host.run(["ls", "-A", "/run/dispatch/exec"]).stdout.split() == []
