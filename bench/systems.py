"""The two systems under test, each driven the way its own documentation says, on a site
(one host with a local share, or two hosts over sshfs).

- dispatch: the shipped units and generator under a real systemd in a PID namespace
  (tests/integration/sdhost.py), path + timer units, the systemd launcher; tasks sent with
  `dispatch send` on the sending host.
- the original (its bin/ at DISPATCH_ORIGINAL_BIN): its watcher started as its README says
  (`DISPATCH_SIDE=<node> bin/dispatch-watch-b`, under "systemd or your supervisor of
  choice": here a transient unit of the same namespaced systemd), tasks sent with its
  `bin/dispatch-send`.

Both run the same agent wrapper scripts (written into each host's /mnt/dispatch/bin):
`fake-agent` execs `python -m dispatch.ops.fake_agent "$@"` (which appends a JSON line with its
own start time "at" to DISPATCH_FAKE_AGENT_LOG), `noop-agent` prints one stream-json result
line. Every path below is either inside a host (`*_in`) or the same file as the machine sees
it (bench driver side), which is where results are polled from.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from bench.common import BenchError, empty_dir, log, parse_time, read_jsonl
from tests.integration.dispatch_host import DISPATCH, VENV_BIN
from tests.integration.sdhost import SystemdHost, wait_for

SENDER, RECEIVER = "devbox", "gpubox"
LANE = f"{SENDER}-to-{RECEIVER}"
MNT_IN = "/mnt/dispatch"  # host-local in every host (bound per host)
SHARE_IN = f"{MNT_IN}/share"  # dispatch's DISPATCH_ROOT in every host
# The original project is kept outside this repository: DISPATCH_ORIGINAL_BIN names its bin/
# (dispatch-send, dispatch-watch-b, dispatch_lib.py).
ORIGINAL_BIN_ENV = "DISPATCH_ORIGINAL_BIN"
ORIGINAL_BIN = Path(os.environ.get(ORIGINAL_BIN_ENV, "")).absolute()
SYSTEM_PYTHON = "/usr/bin/python3"  # what the original's `#!/usr/bin/env python3` finds
STAGES = ("inbox", "pending-ack", "processing", "done", "rejected")
AGENTS = ("fake-agent", "noop-agent")

FAKE_AGENT = """#!/bin/sh
# bench: the project's fake agent (stream-json; logs its own start to $DISPATCH_FAKE_AGENT_LOG)
exec {python} -m dispatch.ops.fake_agent "$@"
"""
NOOP_AGENT = """#!/bin/sh
# bench: an agent that does nothing but answer, in the claude CLI's stream-json
echo '{"type":"result","subtype":"success","is_error":false,"result":"noop"}'
"""

# CPU time per system comes from cgroup v2's cpu.stat (usage_usec), which a slice keeps
# accumulating after its units' runs have ended. systemd 252 cannot give CPUUsageNSec on this
# machine's cgroup v1 layout (cpu and cpuacct are separate hierarchies, and systemd expects
# them co-mounted), so the bench puts the units it measures into slices of their own:
# dispatch's oneshots in bench-dispatch.slice (executions are in dispatch.slice already),
# the original's watcher in bench-original.slice. Nothing else about the units changes.
DISPATCH_SLICES = ("bench.slice/bench-dispatch.slice", "dispatch.slice")
ORIGINAL_SLICES = ("bench.slice/bench-original.slice",)
SLICE_DROPIN = "[Service]\nSlice=bench-dispatch.slice\n"
SLICED_UNITS = ("dispatch-watch.service", "dispatch-heartbeat.service", "dispatch-sensor.service")

# The original's dispatch-send, many times in one process (for bursts and backlogs): the
# same calls in the same order as bin/dispatch-send's main().
ORIGINAL_BATCH = """
import sys
sys.path.insert(0, sys.argv[1])
import dispatch_lib as d
n, prefix, to, sender = int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
for i in range(n):
    task = d.new_task(sender, to, f"{prefix} {i}", "normal", "file")
    path = d.enqueue(task)
    d.log_event(sender, "task_send", f"-> {to}: {task['request'][:80]}", task["id"])
    print(task["id"], task["created"], flush=True)
"""

# `dispatch send` many times in one process: the same sender.build/deliver as the command.
DISPATCH_BATCH = """
import sys
from dispatch.core import config
from dispatch.send import task as sender
from dispatch.core.node import Node
n, prefix, to = int(sys.argv[1]), sys.argv[2], sys.argv[3]
node = Node(config.load())
for i in range(n):
    envelope = sender.build(node, to=to, request=f"{prefix} {i}")
    sender.deliver(node, envelope)
    print(envelope.id, envelope.created, flush=True)
"""


@dataclass
class Site:
    """Where the systems run: a sending and a receiving host (one and the same locally) and a
    share that both reach at SHARE_IN; `share` is that share as the machine sees it."""

    label: str
    sender: SystemdHost
    receiver: SystemdHost
    share: Path
    sender_mnt: Path  # the sending host's /mnt/dispatch, machine side
    receiver_mnt: Path  # the receiving host's /mnt/dispatch, machine side
    receiver_conf: Path  # the receiving host's /etc/dispatch/dispatch.conf, machine side
    sender_conf_in: str | None  # DISPATCH_CONFIG for `dispatch send` (None: the default)

    def hosts(self) -> list[SystemdHost]:
        return [self.sender] if self.sender is self.receiver else [self.sender, self.receiver]


def original_missing() -> str:
    """Why the original cannot be measured here, or ""."""
    if not os.environ.get(ORIGINAL_BIN_ENV):
        return f"{ORIGINAL_BIN_ENV} is not set (the original project's bin/ directory)"
    if not (ORIGINAL_BIN / "dispatch-send").is_file():
        return f"{ORIGINAL_BIN_ENV}={ORIGINAL_BIN} has no dispatch-send"
    return ""


def write_agents(mnt: Path) -> None:
    """The agent wrappers in a host's /mnt/dispatch/bin (outside /tmp, which exec units make
    private), readable and executable by the agent's user; the venv they run is bound into
    the units where their sandboxes would hide it (tests/integration/dispatch_host.py)."""
    bindir = mnt / "bin"
    bindir.mkdir(mode=0o755, exist_ok=True)
    for name, text in (
        ("fake-agent", FAKE_AGENT.format(python=sys.executable)),
        ("noop-agent", NOOP_AGENT),
    ):
        path = bindir / name
        path.write_text(text)
        path.chmod(0o755)


def agent_in(agent: str) -> str:
    if agent not in AGENTS:
        raise ValueError(f"unknown agent {agent!r}")
    return f"{MNT_IN}/bin/{agent}"


@dataclass(frozen=True)
class Sent:
    task_id: str
    request: str
    sent_at: float  # the envelope's `created` (send time); see created_of
    source: str  # where sent_at came from


class System(Protocol):
    name: str
    site: Site

    @property
    def lane(self) -> Path:
        """The lane devbox-to-gpubox, machine side."""

    @property
    def agent_log(self) -> Path:
        """Where the fake agent on the receiver appends its start records, machine side."""

    def start(self, *, cap: int, agent: str, poll_sec: int) -> None:
        """Start the receiving side with these knobs (it may already be running)."""

    def stop(self) -> None:
        """Stop the receiving side and wait until no execution is left."""

    def send(self, request: str) -> Sent:
        """Send one task with the system's own command-line sender."""

    def send_batch(self, n: int, prefix: str) -> list[Sent]:
        """Send n tasks from one process, back to back (a burst)."""

    def hold(self) -> None: ...

    def release(self) -> None: ...

    def reset(self) -> None:
        """Empty the lane and the agent's log (the system is stopped)."""

    def journal_since(self, unix: float) -> list[str]:
        """What the receiver logged of its passes since then (a stalled figure's why)."""


def _created_of(lane: Path, task_id: str, audit: Path, event: str) -> tuple[float, str]:
    """The envelope's `created`, read from wherever the task file is now; if it has already
    gone (finished), the sender's own audit-log line for the send (written just after)."""
    for stage in ("inbox", "processing", "pending-ack"):
        try:
            data = json.loads((lane / stage / f"{task_id}.json").read_text())
            return parse_time(str(data["created"])), "created"
        except (OSError, ValueError, KeyError):
            continue
    for row in reversed(read_jsonl(audit)):
        if row.get("task_id") == task_id and row.get("event") == event:
            return parse_time(str(row["ts"])), "audit-log"
    raise BenchError(f"no send time for {task_id}")


def receiver_journal(site: Site, unix: float, units: tuple[str, ...]) -> list[str]:
    """The receiver's journal of these units since `unix`: at most its first and last 150
    lines (a stalled figure's why, for the bench's log)."""
    argv = ["journalctl", "-o", "short-precise", "--no-pager", "--since", f"@{int(unix) - 1}"]
    for unit in units:
        argv += ["-u", unit]
    lines = site.receiver.run(argv, check=False).stdout.splitlines()
    return lines if len(lines) <= 300 else [*lines[:150], "...", *lines[-150:]]


def reset_lane(lane: Path) -> None:
    for stage in STAGES:
        empty_dir(lane / stage)


def set_conf(path: Path, values: dict[str, str]) -> None:
    """Set KEY=VALUE lines in a dispatch.conf (machine side), replacing existing ones."""
    lines = path.read_text().splitlines()
    for key, value in values.items():
        pattern = re.compile(rf"^\s*{re.escape(key)}=")
        new = f"{key}={value}"
        for i, line in enumerate(lines):
            if pattern.match(line):
                lines[i] = new
                break
        else:
            lines.append(new)
    path.write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- dispatch


# dispatch-sensor.service exits at once on a node in timer mode (a local share).
NODE_UNITS = (
    "dispatch-watch.path",
    "dispatch-watch.timer",
    "dispatch-heartbeat.timer",
    "dispatch-sensor.service",
)
RECEIVER_UNITS = ("dispatch-watch.path", "dispatch-watch.timer", "dispatch-sensor.service")


class DispatchSystem:
    name = "dispatch"

    def __init__(self, site: Site) -> None:
        self.site = site
        self.knobs: dict[str, str] = {}

    @property
    def lane(self) -> Path:
        return self.site.share / LANE

    @property
    def agent_log(self) -> Path:
        return self.site.receiver_mnt / "agent-runs.jsonl"

    def install_slices(self) -> None:
        for host in self.site.hosts():
            for unit in SLICED_UNITS:
                host.write_file(f"/run/systemd/system/{unit}.d/95-bench.conf", SLICE_DROPIN)
            host.daemon_reload()

    def start(self, *, cap: int, agent: str, poll_sec: int) -> None:
        knobs = {
            "DISPATCH_MAX_PARALLEL": str(cap),
            "DISPATCH_AGENT_BIN": agent_in(agent),
            "DISPATCH_POLL_SEC": str(poll_sec),
        }
        if knobs != self.knobs:
            set_conf(self.site.receiver_conf, knobs)
            # The generator derives the timer period and the slice's TasksMax from the config.
            self.site.receiver.daemon_reload()
            self.knobs = knobs
        self.site.receiver.systemctl("start", *RECEIVER_UNITS)

    def stop(self) -> None:
        host = self.site.receiver
        host.systemctl("stop", *reversed(RECEIVER_UNITS))
        # An execution's ExecStopPost= may queue a pass meanwhile: its job is cancelled.
        host.systemctl("stop", "dispatch-watch.service", check=False)

        def idle() -> bool:
            out = host.run(
                [
                    "systemctl",
                    "list-units",
                    "--all",
                    "--plain",
                    "--no-legend",
                    "dispatch-exec@*.service",
                ]
            ).stdout
            return not [
                line
                for line in out.splitlines()
                if len(line.split()) > 3 and line.split()[2] not in ("inactive", "failed")
            ]

        wait_for(idle, 120, 0.2, "dispatch executions to end")

    def start_everywhere(self) -> None:
        """Every host's units as `dispatch init` leaves a node: path, timer, heartbeat."""
        for host in self.site.hosts():
            host.systemctl("start", *NODE_UNITS)

    def stop_everywhere(self) -> None:
        for host in self.site.hosts():
            host.systemctl("stop", *NODE_UNITS)
        self.stop()

    def _sender_env(self) -> dict[str, str]:
        conf = self.site.sender_conf_in
        return {"DISPATCH_CONFIG": conf} if conf else {}

    def send(self, request: str) -> Sent:
        out = self.site.sender.run(
            [DISPATCH, "send", "--to", RECEIVER, "--request", request, "--json"],
            env=self._sender_env(),
        ).stdout
        task_id = str(json.loads(out)["id"])
        at, source = _created_of(
            self.lane, task_id, self.site.share / "logs" / f"{SENDER}.jsonl", "task_sent"
        )
        return Sent(task_id, request, at, source)

    def send_batch(self, n: int, prefix: str) -> list[Sent]:
        out = self.site.sender.run(
            [str(VENV_BIN / "python"), "-c", DISPATCH_BATCH, str(n), prefix, RECEIVER],
            env=self._sender_env(),
            timeout=60 + n * 0.5,
        ).stdout
        return _parse_batch(out, prefix)

    def hold(self) -> None:
        self.site.sender.run(
            [DISPATCH, "killswitch", "on", "--reason", "bench: queueing"], env=self._sender_env()
        )

    def release(self) -> None:
        self.site.sender.run([DISPATCH, "killswitch", "off"], env=self._sender_env())

    def reset(self) -> None:
        reset_lane(self.lane)
        self.agent_log.write_text("")

    def journal_since(self, unix: float) -> list[str]:
        return receiver_journal(
            self.site,
            unix,
            (
                "dispatch-watch.service",
                "dispatch-watch.path",
                "dispatch-watch.timer",
                "dispatch-signer.service",
            ),
        )


def _parse_batch(out: str, prefix: str) -> list[Sent]:
    sent = []
    for i, line in enumerate(out.split("\n")):
        if line.strip():
            task_id, created = line.split()
            sent.append(Sent(task_id, f"{prefix} {i}", parse_time(created), "created"))
    return sent


# ----------------------------------------------------------------------------- original

WATCH_UNIT = "orig-watch.service"


class OriginalSystem:
    name = "original"

    def __init__(self, site: Site) -> None:
        self.site = site
        self.root = site.share / "orig"
        self.root_in = f"{SHARE_IN}/orig"

    @property
    def lane(self) -> Path:
        return self.root / LANE

    @property
    def agent_log(self) -> Path:
        return self.site.receiver_mnt / "orig-agent-runs.jsonl"

    def setup(self) -> None:
        """The README's Setup section: key on the share, both lanes, heartbeats/."""
        (self.root / "keys").mkdir(parents=True, exist_ok=True)
        key = self.root / "keys" / "hmac.key"
        if not key.exists():
            key.write_text(secrets.token_hex(32) + "\n")
            key.chmod(0o600)
        for lane in (f"{SENDER}-to-{RECEIVER}", f"{RECEIVER}-to-{SENDER}"):
            for stage in STAGES:
                (self.root / lane / stage).mkdir(parents=True, exist_ok=True)
        (self.root / "heartbeats").mkdir(exist_ok=True)
        for mnt in (self.site.sender_mnt, self.site.receiver_mnt):
            (mnt / "orig-agent-runs.jsonl").touch()

    def env(self, side: str) -> dict[str, str]:
        return {
            "DISPATCH_ROOT": self.root_in,
            "DISPATCH_NODE_A": SENDER,
            "DISPATCH_NODE_B": RECEIVER,
            "DISPATCH_SIDE": side,
            "DISPATCH_FROM": SENDER,
        }

    def start_watcher(
        self, host: SystemdHost, side: str, *, cap: int, agent: str, poll_sec: int
    ) -> None:
        """`DISPATCH_SIDE=<side> bin/dispatch-watch-a|b` as a transient service."""
        env = {
            **self.env(side),
            "DISPATCH_POLL_SEC": str(poll_sec),
            "DISPATCH_MAX_PARALLEL": str(cap),
            "DISPATCH_AGENT_BIN": agent_in(agent),
            "DISPATCH_FAKE_AGENT_LOG": f"{MNT_IN}/orig-agent-runs.jsonl",
            "DISPATCH_STATE_FILE": f"{MNT_IN}/orig-watcher-state.json",
        }
        wrapper = "dispatch-watch-a" if side == SENDER else "dispatch-watch-b"
        host.run(
            [
                "systemd-run",
                "--quiet",
                "--collect",
                f"--unit={WATCH_UNIT}",
                "--slice=bench-original.slice",
                *[f"--setenv={k}={v}" for k, v in env.items()],
                str(ORIGINAL_BIN / wrapper),
            ]
        )
        wait_for(
            lambda: host.unit_property(WATCH_UNIT, "ActiveState") == "active",
            20,
            0.1,
            f"{WATCH_UNIT} on {host.name}",
        )

    def start(self, *, cap: int, agent: str, poll_sec: int) -> None:
        self.stop()
        self.start_watcher(self.site.receiver, RECEIVER, cap=cap, agent=agent, poll_sec=poll_sec)

    def stop(self) -> None:
        for host in self.site.hosts():
            # Stops the watcher and (KillMode=control-group) any executor it left running.
            host.run(["systemctl", "stop", WATCH_UNIT], check=False)

    def send(self, request: str) -> Sent:
        out = self.site.sender.run(
            [str(ORIGINAL_BIN / "dispatch-send"), "--to", RECEIVER, "--request", request],
            env=self.env(SENDER),
        ).stdout
        task_id = out.split("\t")[0].strip()
        at, source = _created_of(self.lane, task_id, self.root / "session-log.jsonl", "task_send")
        return Sent(task_id, request, at, source)

    def send_batch(self, n: int, prefix: str) -> list[Sent]:
        out = self.site.sender.run(
            [
                SYSTEM_PYTHON,
                "-c",
                ORIGINAL_BATCH,
                str(ORIGINAL_BIN),
                str(n),
                prefix,
                RECEIVER,
                SENDER,
            ],
            env=self.env(SENDER),
            timeout=60 + n * 0.5,
        ).stdout
        return _parse_batch(out, prefix)

    def hold(self) -> None:
        # The README: `echo "stopping for reason X" > "$DISPATCH_ROOT/KILLSWITCH"`.
        (self.root / "KILLSWITCH").write_text("bench: queueing\n")

    def release(self) -> None:
        (self.root / "KILLSWITCH").unlink(missing_ok=True)

    def reset(self) -> None:
        reset_lane(self.lane)
        self.agent_log.write_text("")

    def journal_since(self, unix: float) -> list[str]:
        return receiver_journal(self.site, unix, (WATCH_UNIT,))


def wait_results(
    lane: Path,
    ids: set[str],
    timeout: float,
    interval: float = 0.02,
    seen: dict[str, float] | None = None,
) -> dict[str, float]:
    """Poll lane/done/ until every id has a result; {id: first time seen}. Stops at the
    deadline with what it has (the caller decides whether that is an error)."""
    found: dict[str, float] = {} if seen is None else seen
    deadline = time.monotonic() + timeout
    done = lane / "done"
    while len(found) < len(ids) and time.monotonic() < deadline:
        try:
            names = os.listdir(done)
        except FileNotFoundError:
            names = []
        now = time.time()
        for name in names:
            if name.endswith(".result.json"):
                task_id = name[: -len(".result.json")]
                if task_id in ids and task_id not in found:
                    found[task_id] = now
        if len(found) < len(ids):
            time.sleep(interval)
    return found


def log_phase(system: System, what: str) -> None:
    log(f"{system.name} @ {system.site.label}: {what}")
