"""Helpers for the unit suite: envelopes built and signed by hand (independently of
`dispatch.core.signing`: each node's PEM key read with `cryptography` itself), the real CLI
as a subprocess, and draining a node with real executions."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dispatch.core.node import Node
from dispatch.core.spool import Lane
from dispatch.core.wire import canonical, new_id, now_utc, rfc3339
from dispatch.receive.launch.process import ProcessLauncher
from dispatch.receive.promote import PassReport, promote
from dispatch.receive.watch import watch
from tests.conftest import NodeSetup, Pair

BIN = Path(sys.executable).parent


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
    env.update(extra)
    return env


def env_for(setup: NodeSetup, **extra: str) -> dict[str, str]:
    env = clean_env(**setup.env)
    env.update(extra)
    return env


def run(
    argv: list[str], env: dict[str, str], *, timeout: float = 60, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=timeout, input=stdin, check=False
    )


def cli(
    setup: NodeSetup | None,
    *args: str,
    timeout: float = 60,
    env: dict[str, str] | None = None,
    **extra: str,
) -> subprocess.CompletedProcess[str]:
    """`python -m dispatch ARGS` as `setup`'s node (or with exactly `env`)."""
    if env is None:
        env = env_for(setup, **extra) if setup is not None else clean_env(**extra)
    return run([sys.executable, "-m", "dispatch", *args], env, timeout=timeout)


def configure(setup: NodeSetup, **values: str | int) -> None:
    """Append KEY=VALUE lines to a node's config file (later lines win)."""
    path = Path(setup.env["DISPATCH_CONFIG"])
    with path.open("a") as handle:
        for key, value in values.items():
            handle.write(f"{key}={value}\n")


def lane_in(pair: Pair) -> Lane:
    """The lane devbox → gpubox, as the receiver sees it."""
    return pair.receiver.node().spool.lane("devbox", "gpubox")


def kid_of(private: Ed25519PrivateKey) -> str:
    """The documented key id: "ed" + the first 16 hex digits of SHA-256 of the raw key."""
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return "ed" + hashlib.sha256(raw).hexdigest()[:16]


def node_key(setup: NodeSetup) -> tuple[str, Ed25519PrivateKey]:
    """A node's own private key, read from its PEM file (what only that node holds)."""
    pem = (setup.home / "keys" / f"{setup.name}.ed25519").read_bytes()
    private = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(private, Ed25519PrivateKey)
    return kid_of(private), private


def sender_key(pair: Pair) -> tuple[str, Ed25519PrivateKey]:
    return node_key(pair.sender)


def signed(private: Ed25519PrivateKey, obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` with `sig`: Ed25519 over the canonical JSON of every other field."""
    out = {k: v for k, v in obj.items() if k != "sig"}
    out["sig"] = private.sign(canonical(out)).hex()
    return out


def verifies(private: Ed25519PrivateKey, obj: dict[str, Any]) -> bool:
    from cryptography.exceptions import InvalidSignature

    body = {k: v for k, v in obj.items() if k != "sig"}
    try:
        private.public_key().verify(bytes.fromhex(obj["sig"]), canonical(body))
    except InvalidSignature:
        return False
    return True


def legacy_hmac_key(pair: Pair) -> tuple[str, bytes]:
    """One HMAC key in both nodes' rings, as the original and schema 3 shared it: for the
    schema-2 and schema-3 paths only."""
    secret = b"0123456789abcdef" * 4
    for setup in (pair.sender, pair.receiver):
        ring = setup.home / "keys"
        path = ring / "klegacy.key"
        if not path.exists():
            path.write_bytes(secret + b"\n")
            path.chmod(0o600)
    return "klegacy", secret


def mac(secret: bytes, obj: dict[str, Any]) -> str:
    body = {k: v for k, v in obj.items() if k != "hmac"}
    return hmac.new(secret, canonical(body), hashlib.sha256).hexdigest()


def sign_v2(secret: bytes, fields: dict[str, str]) -> str:
    """Sign like the original `dispatch-send` does (HMAC over six fields joined by `|`)."""
    payload = "|".join(
        fields[k] for k in ("id", "from", "to", "created", "priority", "request")
    ).encode("utf-8")
    return hmac.new(secret, payload, hashlib.sha256).hexdigest()


def hmac_signed(secret: bytes, obj: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in obj.items() if k != "hmac"}
    out["hmac"] = mac(secret, out)
    return out


def envelope(pair: Pair, *, sign: bool = True, **overrides: Any) -> dict[str, Any]:
    """A schema-4 envelope devbox → gpubox, signed after the overrides (so a test changes
    what it means, not whether the signature holds) with the key of its `from` when that is
    one of the pair (devbox's otherwise), under that key's id unless `kid` is overridden."""
    obj: dict[str, Any] = {
        "schema": 4,
        "kind": "task",
        "id": new_id(),
        "from": "devbox",
        "to": "gpubox",
        "created": rfc3339(now_utc()),
        "priority": "normal",
        "request": "hello there",
        "require_ack": False,
        "require_dangerous": False,
        "timeout_s": 60,
        "max_output_bytes": 100_000,
        "callback": "file",
        "parent": None,
        "hops": 0,
    }
    obj.update(overrides)
    kid, private = node_key(pair.receiver if obj["from"] == "gpubox" else pair.sender)
    obj.setdefault("kid", kid)
    if isinstance(obj["id"], str) and (obj["from"], obj["to"]) == ("devbox", "gpubox"):
        # As the sender would: what it signs, it records as sent on that lane.
        pair.sender.node().sent.record(obj["id"], "devbox", "gpubox")
    return signed(private, obj) if sign else obj


def drop(lane: Lane, obj: dict[str, Any] | bytes, name: str | None = None) -> Path:
    """Put bytes into the inbox the way a sender does (write elsewhere, rename in)."""
    data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    if name is None:
        assert isinstance(obj, dict)
        name = f"{obj['id']}.json"
    lane.tmp.mkdir(parents=True, exist_ok=True)
    staged = lane.tmp / f"staging-{new_id()}"
    staged.write_bytes(data)
    target = lane.inbox / name
    os.rename(staged, target)
    return target


def promote_once(node: Node) -> PassReport:
    """One promote pass; waits for any execution it started, so a test that expects nothing
    to run can check the agent log afterwards."""
    launcher = ProcessLauncher(node)
    report = promote(node, launcher)
    launcher.wait_all(60)
    return report


def drain(node: Node, max_seconds: float = 60) -> PassReport:
    return watch(node, once=True, max_seconds=max_seconds)


def reason_of(lane: Lane, name: str) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((lane.rejected / f"{name}.reason.json").read_text())
    return record


def assert_rejected(lane: Lane, name: str, reason: str) -> dict[str, Any]:
    assert os.path.lexists(lane.rejected / name), f"{name} not in rejected/"
    assert not os.path.lexists(lane.inbox / name)
    record = reason_of(lane, name)
    assert record["reason"] == reason, record
    return record


def result_json(lane: Lane, task_id: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(lane.result_path(task_id).read_text())
    return data


def wait_for(predicate: Callable[[], bool], timeout: float = 20, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.05)


def events_of(pair: Pair, name: str) -> list[str]:
    """The receiver's events called `name`, as logged on the share."""
    log = pair.root / "logs" / "gpubox.jsonl"
    return [line for line in log.read_text().splitlines() if f'"event": "{name}"' in line]


def runs_of(pair: Pair, task_id: str) -> list[dict[str, object]]:
    return [r for r in pair.agent_runs() if r["task_id"] == task_id]


def pgid_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
