"""What a promote pass and a refill cost as the backlog grows: does a drain stay linear?

    .venv/bin/python -m bench.backlog [-n 100,1000]      # about 1 min, no systemd needed

For each backlog size, two nodes in a temporary directory (`dispatch init`'s code), that
many tasks sent and admitted while the killswitch holds them, then, with every slot taken
(a launcher whose executions never end), the CPU time (this process's, so the machine's
load matters little) of one full pass and of one refill, the two things the promote
process repeats while a backlog drains (receive/promote/settle.py)."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from dispatch.core import config
from dispatch.core.keys import Pins
from dispatch.core.node import Node
from dispatch.ops.bootstrap import init_node
from dispatch.receive.launch import Launcher
from dispatch.receive.promote import PassReport, promote, refill
from dispatch.send.task import build, deliver

REPEAT = 5


class SlotsTaken:
    """A launcher whose cap is always full: the pass does everything but start."""

    def running(self) -> set[str]:
        return {f"busy-{i}" for i in range(64)}

    def stopping(self) -> set[str]:
        return set()

    def start(self, task_id: str) -> None:
        raise AssertionError("no slot is free")

    def stop(self, task_id: str) -> None:
        return None

    def resume(self, task_id: str, marker: Mapping[str, object]) -> bool:
        return False

    def unit(self, task_id: str) -> str:
        return ""


def nodes(work: Path) -> tuple[Node, Node]:
    root, public = work / "share", {}
    for name, peer in (("devbox", "gpubox"), ("gpubox", "devbox")):
        home = work / name
        public[name] = init_node(
            root=root,
            node=name,
            peers=[peer],
            config_path=home / "dispatch.conf",
            key_dir=home / "keys",
            state_dir=home / "state",
            run_as="nobody",
            extra={"DISPATCH_LAUNCHER": "process", "DISPATCH_AGENT_BIN": "/bin/true"},
        ).key
    for name, peer in (("devbox", "gpubox"), ("gpubox", "devbox")):
        Pins(work / name / "peers").add(public[peer], "bench")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
    made = []
    for name in ("devbox", "gpubox"):
        made.append(
            Node(config.load({**env, "DISPATCH_CONFIG": str(work / name / "dispatch.conf")}))
        )
    return made[0], made[1]


def cpu_ms(call: Callable[[Node, Launcher], PassReport], node: Node) -> float:
    began = time.process_time()
    for _ in range(REPEAT):
        call(node, SlotsTaken())
    return (time.process_time() - began) / REPEAT * 1000


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.backlog")
    parser.add_argument("-n", default="100,1000", help="backlog sizes (default 100,1000)")
    sizes = [int(n) for n in parser.parse_args().n.split(",")]
    print("| backlog | full pass | per queued task | refill | per queued task |")
    print("|---|---|---|---|---|")
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="dispatch-bench-backlog-") as work:
            sender, receiver = nodes(Path(work))
            for i in range(n):
                deliver(sender, build(sender, to="gpubox", request=f"backlog {i}"))
            promote(receiver, SlotsTaken())  # admits them all
            full, fill = cpu_ms(promote, receiver), cpu_ms(refill, receiver)
            print(
                f"| {n} | {full:.1f} ms | {full / n * 1000:.0f} µs | {fill:.2f} ms "
                f"| {fill / n * 1000:.1f} µs |"
            )


if __name__ == "__main__":
    main()
