"""What a Slurm gateway adds per task: from the executor's claim of the task (its started
marker, written just before it starts or submits the agent) to the agent's own first
instruction, with DISPATCH_LAUNCHER=slurm against the same executor spawning the agent itself
(what `process` and `systemd` both do once the executor runs).

    python -m bench.slurm [-n 10]        # about a minute; root, Slurm installed

Boots the tests' single-node cluster (tests/slurm/cluster.py), two nodes on a local share,
and sends n tasks one at a time (fake agent, which records when it starts), each driven by
one `dispatch promote`. Prints the median and p90 of each launcher, and their difference.
`python -m bench.hops` gives the hops before the executor under the systemd launcher (path
unit, promote, `dispatch-exec@` start), which a Slurm gateway pays the same way."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import log, parse_time, percentile
from dispatch.core.keys import Pins
from dispatch.ops.bootstrap import init_node
from tests.slurm.cluster import SlurmCluster


def _env(config: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
    env.update(DISPATCH_CONFIG=str(config), **extra)
    return env


def _dispatch(env: dict[str, str], *args: str, stderr: Path) -> str:
    # stderr to a file: executors the pass starts inherit it and would hold a pipe open.
    with stderr.open("a") as err:
        proc = subprocess.run(
            [sys.executable, "-m", "dispatch", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            timeout=120,
            check=True,
        )
    return proc.stdout


def measure(work: Path, cluster: SlurmCluster, launcher: str, n: int) -> list[float]:
    root = work / launcher / "share"
    agent_log = work / launcher / "agent.jsonl"
    agent = f"{shlex.quote(sys.executable)} -m dispatch.ops.fake_agent"
    configs = {}
    public = {}
    for name, peer in (("devbox", "gpubox"), ("gpubox", "devbox")):
        home = work / launcher / name
        report = init_node(
            root=root,
            node=name,
            peers=[peer],
            config_path=home / "dispatch.conf",
            key_dir=home / "keys",
            state_dir=home / "state",
            extra={
                "DISPATCH_AGENT_BIN": agent,
                "DISPATCH_LAUNCHER": launcher,
                "DISPATCH_MEMORY_MAX": "200M",
                "DISPATCH_CPU_QUOTA": "100%",
                "DISPATCH_SLURM_DIR": str(home / "jobs"),
            },
        )
        public[name] = report.key
        configs[name] = home / "dispatch.conf"
    # Each node pins the other's public key (`dispatch peers add`): no key is shared.
    for name, peer in (("devbox", "gpubox"), ("gpubox", "devbox")):
        Pins(work / launcher / name / "peers").add(public[peer], f"bench: {peer}'s init")
    sender = _env(configs["devbox"])
    gateway = _env(configs["gpubox"], DISPATCH_FAKE_AGENT_LOG=str(agent_log), **cluster.env)
    state = work / launcher / "gpubox" / "state" / "started"
    err = work / launcher / "stderr.log"
    samples = []
    for i in range(n):
        sent = json.loads(
            _dispatch(sender, "send", "--to", "gpubox", "--request", f"bench {i}", "--json",
                      stderr=err)
        )  # fmt: skip
        task_id = sent["id"]
        _dispatch(gateway, "promote", stderr=err)
        result = root / "devbox-to-gpubox" / "done" / f"{task_id}.result.json"
        deadline = time.monotonic() + 60
        while not result.exists():
            if time.monotonic() > deadline:
                raise RuntimeError(f"no result for {task_id} ({launcher}); see {err}")
            time.sleep(0.05)
        marker = json.loads((state / task_id).read_text())
        runs = [json.loads(line) for line in agent_log.read_text().splitlines()]
        (run,) = [r for r in runs if r["task_id"] == task_id]
        samples.append(float(run["at"]) - parse_time(marker["started_at"]))
        log(f"{launcher} {i + 1}/{n}: {samples[-1] * 1000:.0f} ms")
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dispatch-bench-slurm-") as tmp:
        work = Path(tmp)
        cluster = SlurmCluster(work / "slurm")
        cluster.start()
        try:
            figures = {name: measure(work, cluster, name, args.n) for name in ("process", "slurm")}
        finally:
            cluster.stop()
    print(f"executor's claim -> agent start, n={args.n} each, one task at a time\n")
    print("| launcher | p50 | p90 | min | max |")
    print("| --- | --- | --- | --- | --- |")
    for name, values in figures.items():
        row = [statistics.median(values), percentile(values, 90), min(values), max(values)]
        print(f"| {name} | " + " | ".join(f"{v * 1000:.0f} ms" for v in row) + " |")
    added = statistics.median(figures["slurm"]) - statistics.median(figures["process"])
    print(f"\nadded by Slurm (p50 difference): {added * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
