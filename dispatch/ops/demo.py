"""`dispatch demo`: a whole round trip between two nodes in a temporary root, no systemd.

devbox signs a task into gpubox's inbox; gpubox verifies, queues and runs it (a built-in
fake agent that speaks stream-json) and signs the result; devbox verifies the result."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dispatch.core import config as config_mod
from dispatch.core.keys import Pins
from dispatch.core.model import Result
from dispatch.core.node import Node
from dispatch.core.runner import dispatch_argv, module_argv
from dispatch.ops.bootstrap import init_node
from dispatch.send import task as sender
from dispatch.send import waiting

SENDER, RECEIVER = "devbox", "gpubox"


@dataclass(frozen=True)
class DemoRun:
    base: Path
    task_id: str
    kid: str
    result: Result


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.startswith("DISPATCH_")}
    for key in saved:
        del os.environ[key]
    os.environ.update(values)
    try:
        yield
    finally:
        for key in [k for k in os.environ if k.startswith("DISPATCH_")]:
            del os.environ[key]
        os.environ.update(saved)


def run_demo(request: str, say: Callable[[str], None], keep: bool = False) -> DemoRun:
    base = Path(tempfile.mkdtemp(prefix="dispatch-demo-"))
    try:
        return _run(base, request, say)
    finally:
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


def _run(base: Path, request: str, say: Callable[[str], None]) -> DemoRun:
    root = base / "share"
    agent = shlex.join(module_argv("dispatch.ops.fake_agent"))
    envs: dict[str, dict[str, str]] = {}
    public = {}
    for name, peer in ((SENDER, RECEIVER), (RECEIVER, SENDER)):
        home = base / name
        report = init_node(
            root=root,
            node=name,
            peers=[peer],
            config_path=home / "dispatch.conf",
            key_dir=home / "keys",
            state_dir=home / "state",
            # The demo's fake agent runs as whoever runs the demo (root only when that is
            # who runs it, said explicitly: a real node drops the agent to dispatch-agent).
            run_as="root" if os.geteuid() == 0 else "",
            extra={
                "DISPATCH_AGENT_BIN": agent,
                "DISPATCH_LAUNCHER": "process",
                "DISPATCH_POLL_SEC": "0.2",
                # No signer socket: the demo's nodes sign in-process, never through the
                # signer of the host it runs on, which signs only as that host's node.
                "DISPATCH_SIGNER_SOCKET": str(home / "no-signer.sock"),
            },
        )
        public[name] = report.key
        envs[name] = {"DISPATCH_CONFIG": str(home / "dispatch.conf")}
        say(f"init  {name}: config {report.config_path}, key {report.key.kid}")
    # Each node pins the other's public key (`dispatch peers add`): no key is shared.
    for name, peer in ((SENDER, RECEIVER), (RECEIVER, SENDER)):
        Pins(base / name / "peers").add(public[peer], f"dispatch demo: {peer}'s init")
        say(f"pin   {name}: {peer}'s key {public[peer].fingerprint}")
    with _environ(envs[SENDER]):
        devbox = Node(config_mod.load())
        sent = sender.deliver(devbox, sender.build(devbox, to=RECEIVER, request=request))
    say(
        f"send  {SENDER} -> {RECEIVER}: task {sent.envelope.id} "
        f"signed with {sent.envelope.kid}, dropped in {sent.path.relative_to(base)}"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
    env.update(envs[RECEIVER])
    say(f"watch {RECEIVER}: verify, queue, run the fake agent, sign the result")
    subprocess.run(dispatch_argv("watch", "--once", "--quiet"), env=env, check=True, timeout=120)
    with _environ(envs[SENDER]):
        devbox = Node(config_mod.load())
        result = waiting.wait(devbox, sent.envelope.id, timeout=30)
    say(
        f"wait  {SENDER}: result signature verified (key {result.kid}), status "
        f"{result.status.value}, {result.elapsed_s:.2f}s on {result.answered_by}"
    )
    return DemoRun(base, sent.envelope.id, result.kid, result)
