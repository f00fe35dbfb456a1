"""Key management through the CLI: `init` prints the command that pins a node's key on its
peers, `peers add|list|remove`, `keys rotate` (the old key verifies until removed, peers
learn the new one from a statement the old key signed), and a published key that differs
from the pin, refused and reported. No private key ever goes from one node to another."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dispatch.core.keys import PublicKey
from dispatch.send import task as sender
from tests.conftest import NodeSetup, Pair
from tests.unit.helpers import (
    assert_rejected,
    clean_env,
    cli,
    drain,
    drop,
    envelope,
    lane_in,
    node_key,
    result_json,
    signed,
)


def show(setup: NodeSetup) -> dict[str, str]:
    proc = cli(setup, "keys", "show", "--json")
    assert proc.returncode == 0, proc.stderr
    shown: dict[str, str] = json.loads(proc.stdout)
    return shown


def pin(pair: Pair, node: str, text: str) -> subprocess.CompletedProcess[str]:
    """`dispatch peers add NODE -` on the receiver, the key on stdin."""
    env = clean_env(**pair.receiver.env)
    return subprocess.run(
        [sys.executable, "-m", "dispatch", "peers", "add", node, "-"],
        env=env,
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def send(pair: Pair, request: str) -> str:
    tx = pair.sender.node()
    return sender.deliver(tx, sender.build(tx, to="gpubox", request=request)).envelope.id


def test_two_nodes_set_up_with_init_and_the_printed_command(tmp_path: Path) -> None:
    """The README's set-up: `init` on each host, then on each the command the other's init
    printed. Only public key lines travel; then a task runs and its result verifies."""
    agent = f"{shlex.quote(sys.executable)} -m dispatch.ops.fake_agent"
    printed = {}
    envs = {}
    for name, peer in (("devbox", "gpubox"), ("gpubox", "devbox")):
        home = tmp_path / name
        envs[name] = clean_env(DISPATCH_CONFIG=str(home / "dispatch.conf"))
        proc = cli(
            None,
            "init",
            "--local",
            "--root",
            str(tmp_path / "share"),
            "--node",
            name,
            "--peers",
            peer,
            "--config",
            str(home / "dispatch.conf"),
            "--key-dir",
            str(home / "keys"),
            "--state-dir",
            str(home / "state"),
            # The fake agent runs as this test's user; a node runs it as root only when told.
            "--run-as",
            "root" if os.geteuid() == 0 else "",
            "--set",
            f"DISPATCH_AGENT_BIN={agent}",
            "--set",
            "DISPATCH_LAUNCHER=process",
            env=envs[name],
        )
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        command = lines[lines.index(next(x for x in lines if x.startswith("on each peer"))) + 1]
        printed[name] = command.strip()
    for name, peer in (("devbox", "gpubox"), ("gpubox", "devbox")):
        # Run exactly what the peer's init printed, as an operator pastes it.
        proc = subprocess.run(
            ["sh", "-c", printed[peer].replace("dispatch ", f"{sys.executable} -m dispatch ")],
            env=envs[name],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"pinned {peer}'s key ed")
    # No private key file exists anywhere but on its own node.
    keys = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.ed25519"))
    assert keys == ["devbox/keys/devbox.ed25519", "gpubox/keys/gpubox.ed25519"]
    sent = cli(None, "send", "--to", "gpubox", "--request", "hello", "--json", env=envs["devbox"])
    assert sent.returncode == 0, sent.stderr
    task_id = json.loads(sent.stdout)["id"]
    watch = cli(None, "watch", "--once", "--quiet", env=envs["gpubox"])
    assert watch.returncode == 0, watch.stderr
    waited = cli(None, "wait", task_id, "--timeout", "30", env=envs["devbox"])
    assert waited.returncode == 0, waited.stderr
    assert "fake agent (acceptEdits) did: hello" in waited.stdout


def test_peers_list_remove_and_add_again(pair: Pair) -> None:
    rows = json.loads(cli(pair.receiver, "peers", "list", "--json").stdout)
    devbox = show(pair.sender)
    by_node = {r["node"]: r for r in rows}
    assert set(by_node) == {"devbox", "gpubox"}  # its peer, and its own key
    assert by_node["devbox"]["fingerprint"] == devbox["fingerprint"]
    assert by_node["devbox"]["kid"] == devbox["kid"]
    assert by_node["devbox"]["source"] == "test: devbox's init" and by_node["devbox"]["pinned_at"]
    assert by_node["devbox"]["problem"] == ""
    text = cli(pair.receiver, "peers", "list").stdout
    assert f"devbox           {devbox['kid']}  {devbox['fingerprint']}  pinned " in text

    removed = cli(pair.receiver, "peers", "remove", "devbox")
    assert removed.returncode == 0 and devbox["kid"] in removed.stdout
    rows = json.loads(cli(pair.receiver, "peers", "list", "--json").stdout)
    assert {"node": "devbox", "kid": None, "problem": "no key pinned"} in rows
    lane = lane_in(pair)
    refused = send(pair, "from an unpinned node")
    drain(pair.receiver.node())
    assert_rejected(lane, f"{refused}.json", "unknown_key")

    # Pinned again from the line `dispatch keys show` prints on devbox.
    proc = pin(pair, "devbox", devbox["line"] + "\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"pinned devbox's key {devbox['kid']} {devbox['fingerprint']}\n"
    again = pin(pair, "devbox", devbox["line"] + "\n")
    assert "was pinned already" in again.stdout
    rows = json.loads(cli(pair.receiver, "peers", "list", "--json").stdout)
    assert next(r for r in rows if r["node"] == "devbox")["source"] == "stdin"
    task_id = send(pair, "pinned again")
    drain(pair.receiver.node())
    assert result_json(lane, task_id)["status"] == "ok"


def test_peers_add_refuses_what_is_not_that_nodes_key(pair: Pair) -> None:
    gpubox_line = show(pair.receiver)["line"]
    for text, words in (
        (gpubox_line, "the key line is gpubox's key, not devbox's"),
        ("ssh-ed25519 AAAA devbox\n", "not a dispatch-ed25519 public key line"),
        ("dispatch-ed25519 !!! devbox\n", "not base64"),
        ("dispatch-ed25519 AAAA devbox\n", "is 32 bytes, this one is 3"),
        ("", "no public key line found"),
    ):
        proc = pin(pair, "devbox", text)
        assert proc.returncode == 2 and words in proc.stderr, (text, proc.stderr)
        assert proc.stderr.count("\n") == 1
    bad_name = cli(pair.receiver, "peers", "add", "Dev Box", "-")
    assert bad_name.returncode == 2 and "not a valid node name" in bad_name.stderr
    nothing = cli(pair.receiver, "peers", "remove", "laptop")
    assert nothing.returncode == 2 and "no key pinned for laptop" in nothing.stderr


def test_a_published_key_that_differs_from_the_pin_is_refused_and_reported(pair: Pair) -> None:
    pinned = (pair.receiver.home / "peers" / "devbox.pub").read_text()
    other = PublicKey("devbox", os.urandom(32))
    (pair.root / "nodes" / "devbox.pub").write_text(other.line() + "\n")
    rows = json.loads(cli(pair.receiver, "peers", "list", "--json").stdout)
    problem = next(r for r in rows if r["node"] == "devbox")["problem"]
    assert other.fingerprint in problem and problem.endswith("refused")
    status = json.loads(cli(pair.receiver, "status", "--json").stdout)
    assert other.fingerprint in status["peers"][0]["key_problem"]
    assert "key: the key devbox publishes" in cli(pair.receiver, "status").stdout
    # Never adopted: the pin is unchanged, and tasks signed with the published key's
    # would-be owner are refused.
    assert (pair.receiver.home / "peers" / "devbox.pub").read_text() == pinned
    impostor = Ed25519PrivateKey.generate()
    obj = signed(impostor, {**envelope(pair, sign=False), "kid": PublicKey("x", b"1" * 32).kid})
    drop(lane_in(pair), obj)
    drain(pair.receiver.node())
    assert_rejected(lane_in(pair), f"{obj['id']}.json", "unknown_key")
    # A genuine key still works meanwhile.
    task_id = send(pair, "still pinned")
    drain(pair.receiver.node())
    assert result_json(lane_in(pair), task_id)["status"] == "ok"


def test_rotation_old_key_verifies_until_removed_then_unknown_key(pair: Pair) -> None:
    lane = lane_in(pair)
    old_kid, old_private = node_key(pair.sender)
    before = send(pair, "signed with the old key")
    proc = cli(pair.sender, "keys", "rotate")
    assert proc.returncode == 0, proc.stderr
    statement = pair.root / "nodes" / "devbox.rotation.json"
    assert f"dispatch peers add devbox {statement}" in proc.stdout
    new_kid, _ = node_key(pair.sender)
    assert new_kid != old_kid and f"new key {new_kid}" in proc.stdout
    assert (pair.sender.home / "keys" / "devbox.ed25519").stat().st_mode & 0o777 == 0o600
    # The receiver has not learnt it yet: the new key's task is refused, the old one runs.
    after = send(pair, "signed with the new key")
    drain(pair.receiver.node())
    assert result_json(lane, before)["status"] == "ok"
    assert_rejected(lane, f"{after}.json", "unknown_key")
    # The statement, signed by the pinned old key, pins the new one.
    added = cli(pair.receiver, "peers", "add", "devbox", str(statement))
    assert added.returncode == 0, added.stderr
    assert added.stdout.startswith(f"pinned devbox's key {new_kid}")
    rows = json.loads(cli(pair.receiver, "peers", "list", "--json").stdout)
    sources = {r["kid"]: r["source"] for r in rows if r["node"] == "devbox"}
    assert sources[new_kid] == f"rotation statement signed by {old_kid} ({statement})"
    # Until the old key is removed, what it signed still verifies...
    late = envelope(pair, sign=False)
    old_signed = signed(old_private, {**late, "kid": old_kid})
    drop(lane, old_signed)
    fresh = send(pair, "the new key, pinned")
    drain(pair.receiver.node())
    assert result_json(lane, old_signed["id"])["status"] == "ok"
    assert result_json(lane, fresh)["status"] == "ok"
    # ... and after, it is refused with unknown_key.
    removed = cli(pair.receiver, "peers", "remove", "devbox", "--kid", old_kid)
    assert removed.returncode == 0 and old_kid in removed.stdout
    stale_key = signed(old_private, {**envelope(pair, sign=False), "kid": old_kid})
    drop(lane, stale_key)
    drain(pair.receiver.node())
    assert_rejected(lane, f"{stale_key['id']}.json", "unknown_key")
    # On the sender, the new key signs; its old one stays pinned as its own until removed.
    own = json.loads(cli(pair.sender, "keys", "list", "--json").stdout)
    assert [(k["kid"], k["signing"]) for k in own] == [(old_kid, False), (new_kid, True)]


def test_a_rotation_statement_not_signed_by_a_pinned_key_is_refused(pair: Pair) -> None:
    assert cli(pair.sender, "keys", "rotate").returncode == 0
    statement = pair.root / "nodes" / "devbox.rotation.json"
    obj = json.loads(statement.read_text())
    impostor = Ed25519PrivateKey.generate()
    forged = signed(impostor, {**obj, "key": PublicKey("devbox", os.urandom(32)).line()})
    statement.write_text(json.dumps(forged))
    proc = cli(pair.receiver, "peers", "add", "devbox", str(statement))
    assert proc.returncode == 3 and "does not verify" in proc.stderr
    assert "pin devbox's new key by hand instead" in proc.stderr
    # Nor is a statement for another node taken as this one's.
    statement.write_text(json.dumps(obj))
    proc = cli(pair.receiver, "peers", "add", "laptop", str(statement))
    assert proc.returncode == 2 and "rotates 'devbox'" in proc.stderr
    assert len(json.loads(cli(pair.receiver, "peers", "list", "--json").stdout)) == 2
