"""Shared fixtures: a shared root with two nodes (devbox sends, gpubox receives), each with
its own config, key pair (each pinning the other's public key) and state, all in a temp
dir; the fake agent as the agent."""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dispatch.core import config as config_mod
from dispatch.core.keys import Pins
from dispatch.core.node import Node
from dispatch.ops.bootstrap import init_node


@dataclass
class NodeSetup:
    name: str
    env: dict[str, str]
    home: Path

    def node(self, **overrides: str) -> Node:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
        env.update(self.env)
        env.update(overrides)
        return Node(config_mod.load(env))


@dataclass
class Pair:
    root: Path
    sender: NodeSetup
    receiver: NodeSetup
    agent_log: Path

    def agent_runs(self) -> list[dict[str, object]]:
        if not self.agent_log.exists():
            return []
        return [json.loads(line) for line in self.agent_log.read_text().splitlines()]


@pytest.fixture
def pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pair]:
    for key in [k for k in os.environ if k.startswith("DISPATCH_")]:
        monkeypatch.delenv(key)
    root = tmp_path / "share"
    agent_log = tmp_path / "agent-runs.jsonl"
    agent = f"{shlex.quote(sys.executable)} -m dispatch.ops.fake_agent"
    setups = {}
    public = {}
    for name, peer in (("devbox", "gpubox"), ("gpubox", "devbox")):
        home = tmp_path / name
        report = init_node(
            root=root,
            node=name,
            peers=[peer],
            config_path=home / "dispatch.conf",
            key_dir=home / "keys",
            state_dir=home / "state",
            # The unit tests run the fake agent as the test's own user (root in CI): a
            # node does that only when told so explicitly.
            run_as="root" if os.geteuid() == 0 else "",
            extra={
                "DISPATCH_AGENT_BIN": agent,
                "DISPATCH_LAUNCHER": "process",
                "DISPATCH_POLL_SEC": "0.2",
                # Signed in-process (no signer socket there), whatever runs on this machine.
                "DISPATCH_SIGNER_SOCKET": str(home / "no-signer.sock"),
            },
        )
        public[name] = report.key
        setups[name] = NodeSetup(
            name,
            {
                "DISPATCH_CONFIG": str(home / "dispatch.conf"),
                "DISPATCH_FAKE_AGENT_LOG": str(agent_log),
            },
            home,
        )
    for name, peer in (("devbox", "gpubox"), ("gpubox", "devbox")):
        Pins(tmp_path / name / "peers").add(public[peer], f"test: {peer}'s init")
    # Executions started as child processes read their config from the environment.
    monkeypatch.setenv("DISPATCH_FAKE_AGENT_LOG", str(agent_log))
    yield Pair(root, setups["devbox"], setups["gpubox"], agent_log)
