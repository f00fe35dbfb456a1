"""Configuration: `/etc/dispatch/dispatch.conf` (systemd `EnvironmentFile=` syntax), then the
environment. Every value is checked at once, so an operator sees every problem in one go."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from dispatch.core.errors import ConfigError
from dispatch.core.knobs import (
    abs_path,
    boolean,
    enum_of,
    int_at_least,
    int_between,
    memory,
    node_list,
    node_name,
    percent,
    positive_float,
    slurm_args,
    slurm_name,
    text_value,
    url,
    valid_node,
)

DEFAULT_CONFIG = Path("/etc/dispatch/dispatch.conf")


class LauncherKind(StrEnum):
    SYSTEMD = "systemd"
    PROCESS = "process"
    # The executor runs here (under systemd or as a process) and the agent as a Slurm job.
    SLURM = "slurm"


class WatchMode(StrEnum):
    """How a node notices other hosts' writes, which inotify cannot see (README: "What a
    node runs while idle"). auto: the sensor when the root is on a network filesystem,
    inotify alone when it is on a local disk filesystem, else the timer."""

    AUTO = "auto"
    SENSOR = "sensor"
    TIMER = "timer"
    # Every write reaches the root through this host's kernel (a local disk, which a file
    # server may export): the path unit sees each one, and the timer only sweeps.
    INOTIFY = "inotify"


class AgentProfile(StrEnum):
    CLAUDE = "claude"
    GENERIC = "generic"


class DangerousPolicy(StrEnum):
    ALLOW = "allow"
    ACK = "ack"
    DENY = "deny"


# The unprivileged user the packages create (sysusers.d) for the agent, and `dispatch init`
# configures: an execution never runs the agent as root unless DISPATCH_RUN_AS=root.
DEFAULT_AGENT_USER = "dispatch-agent"


@dataclass(frozen=True)
class Config:
    root: Path
    node: str
    peers: tuple[str, ...]
    node_a: str = "a"
    node_b: str = "b"
    config_path: Path = DEFAULT_CONFIG
    key_dir: Path = Path("/etc/dispatch/keys")
    peer_keys_dir: Path | None = None  # DISPATCH_PEERS_DIR; default: `peers_dir`
    state_dir: Path = Path("/var/lib/dispatch")
    poll_sec: float = 3.0
    watch_mode: WatchMode = WatchMode.AUTO
    sensor_ms: int = 250
    sensor_idle_ms: int = 1000
    promote_linger_s: int = 20
    max_parallel: int = 2
    launcher: LauncherKind = LauncherKind.PROCESS
    agent_bin: str = "claude"
    agent_profile: AgentProfile = AgentProfile.CLAUDE
    accept_v2: bool = False
    accept_v3: bool = False
    v2_require_ack: bool = False
    dangerous: DangerousPolicy = DangerousPolicy.ACK
    default_timeout_s: int = 600
    timeout_max_s: int = 3600
    default_max_output_bytes: int = 2_000_000
    max_output_bytes_max: int = 64 * 1024 * 1024
    max_age_s: int = 86400
    clock_skew_s: int = 300
    run_as: str = ""
    memory_max: str = "4G"
    tasks_max: int = 512
    cpu_quota: str = "200%"
    max_hops: int = 3
    discord_webhook: str = ""
    webhook_url: str = ""
    ack_ttl_s: int = 86400
    retain_days: int = 14
    stall_s: int = 600
    metrics_file: Path = Path("/var/lib/prometheus/node-exporter/dispatch.prom")
    slurm_partition: str = ""
    slurm_account: str = ""
    slurm_args: tuple[str, ...] = ()
    # Job input/output files: a directory the gateway and the compute nodes both see.
    slurm_dir: Path | None = None
    # The local signer's socket: the one process that reads the private key listens there.
    signer_socket: Path = Path("/run/dispatch/signer.sock")
    # Peers an execution's agent may send child tasks to; empty: every peer.
    chain_peers: tuple[str, ...] = ()

    def slurm_spool(self) -> Path:
        return self.slurm_dir or self.state_dir / "slurm"

    @property
    def peers_dir(self) -> Path:
        """Pinned public keys: beside the private key's directory unless set."""
        return self.peer_keys_dir or self.key_dir.parent / "peers"

    def lanes_in(self) -> list[tuple[str, str]]:
        """(from, to) of every lane this node receives on."""
        return [(peer, self.node) for peer in self.peers]

    def lanes_out(self) -> list[tuple[str, str]]:
        return [(self.node, peer) for peer in self.peers]


def parse_env_file(path: Path) -> dict[str, str]:
    """Read `KEY=VALUE` lines the way systemd's `EnvironmentFile=` does, for the subset
    dispatch writes: comments (`#`, `;`), blank lines, optional `export `-free plain
    assignments, values optionally wrapped in single or double quotes."""
    values: dict[str, str] = {}
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise ConfigError(f"{path}:{lineno}: not a KEY=VALUE line: {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


KNOBS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "DISPATCH_ROOT": ("root", abs_path),
    "DISPATCH_NODE_A": ("node_a", node_name),
    "DISPATCH_NODE_B": ("node_b", node_name),
    "DISPATCH_KEY_DIR": ("key_dir", abs_path),
    "DISPATCH_PEERS_DIR": ("peer_keys_dir", abs_path),
    "DISPATCH_STATE_DIR": ("state_dir", abs_path),
    "DISPATCH_POLL_SEC": ("poll_sec", positive_float),
    "DISPATCH_WATCH_MODE": ("watch_mode", enum_of(WatchMode)),
    # Below 50 ms the sensor's stats would load the file server for nothing; above 10 s it
    # would be slower than the timer it replaces.
    "DISPATCH_SENSOR_MS": ("sensor_ms", int_between(50, 10000)),
    # Once nothing changed for a while (sensor.ACTIVE_S): each look is a network round trip,
    # 4 times a second for months on an idle node otherwise.
    "DISPATCH_SENSOR_IDLE_MS": ("sensor_idle_ms", int_between(50, 10000)),
    # After a pass that did something, `dispatch promote` stays this long for the next task
    # (receive/promote/linger.py); 0: one pass per process.
    "DISPATCH_PROMOTE_LINGER_S": ("promote_linger_s", int_between(0, 120)),
    "DISPATCH_MAX_PARALLEL": ("max_parallel", int_at_least(1)),
    "DISPATCH_LAUNCHER": ("launcher", enum_of(LauncherKind)),
    "DISPATCH_AGENT_BIN": ("agent_bin", text_value),
    "DISPATCH_AGENT_PROFILE": ("agent_profile", enum_of(AgentProfile)),
    "DISPATCH_ACCEPT_V2": ("accept_v2", boolean),
    "DISPATCH_ACCEPT_V3": ("accept_v3", boolean),
    "DISPATCH_V2_REQUIRE_ACK": ("v2_require_ack", boolean),
    "DISPATCH_DANGEROUS": ("dangerous", enum_of(DangerousPolicy)),
    "DISPATCH_DEFAULT_TIMEOUT_S": ("default_timeout_s", int_at_least(1)),
    "DISPATCH_TIMEOUT_MAX_S": ("timeout_max_s", int_at_least(1)),
    "DISPATCH_DEFAULT_MAX_OUTPUT_BYTES": ("default_max_output_bytes", int_at_least(1024)),
    "DISPATCH_MAX_OUTPUT_BYTES_MAX": ("max_output_bytes_max", int_at_least(1024)),
    "DISPATCH_MAX_AGE_S": ("max_age_s", int_at_least(1)),
    "DISPATCH_CLOCK_SKEW_S": ("clock_skew_s", int_at_least(0)),
    "DISPATCH_RUN_AS": ("run_as", text_value),
    "DISPATCH_MEMORY_MAX": ("memory_max", memory),
    "DISPATCH_TASKS_MAX": ("tasks_max", int_at_least(8)),
    "DISPATCH_CPU_QUOTA": ("cpu_quota", percent),
    "DISPATCH_MAX_HOPS": ("max_hops", int_at_least(0)),
    "DISPATCH_DISCORD_WEBHOOK": ("discord_webhook", url),
    "DISPATCH_WEBHOOK_URL": ("webhook_url", url),
    "DISPATCH_ACK_TTL": ("ack_ttl_s", int_at_least(1)),
    "DISPATCH_RETAIN_DAYS": ("retain_days", int_at_least(0)),
    "DISPATCH_STALL_S": ("stall_s", int_at_least(0)),
    "DISPATCH_METRICS_FILE": ("metrics_file", abs_path),
    "DISPATCH_SLURM_PARTITION": ("slurm_partition", slurm_name),
    "DISPATCH_SLURM_ACCOUNT": ("slurm_account", slurm_name),
    "DISPATCH_SLURM_ARGS": ("slurm_args", slurm_args),
    "DISPATCH_SLURM_DIR": ("slurm_dir", abs_path),
    "DISPATCH_SIGNER_SOCKET": ("signer_socket", abs_path),
    "DISPATCH_CHAIN_PEERS": ("chain_peers", node_list),
}
# Read by other parts (node identity, peers, sender defaults), listed so the file check
# does not call them unknown.
OTHER_KNOBS = {
    "DISPATCH_CONFIG",
    "DISPATCH_NODE",
    "DISPATCH_SIDE",
    "DISPATCH_FROM",
    "DISPATCH_PEERS",
    "DISPATCH_DEBUG",
    # Chose the signing HMAC key before schema 4; each node has one key pair now.
    "DISPATCH_KEY_ID",
}


def systemd_is_pid1() -> bool:
    return Path("/run/systemd/system").is_dir() and os.path.exists("/run/systemd/private")


def load(environ: Mapping[str, str] | None = None, *, need_root: bool = True) -> Config:
    """Build the Config from the config file and the environment, reporting every problem."""
    env = dict(os.environ if environ is None else environ)
    path = Path(env.get("DISPATCH_CONFIG") or DEFAULT_CONFIG)
    raw: dict[str, tuple[str, str]] = {}  # knob -> (value, where)
    problems: list[str] = []
    if path.exists():
        try:
            for key, value in parse_env_file(path).items():
                if key not in KNOBS and key not in OTHER_KNOBS:
                    import difflib  # only for a typo: not an import of every hop

                    close = difflib.get_close_matches(key, [*KNOBS, *OTHER_KNOBS], n=1, cutoff=0.8)
                    hint = f"; did you mean {close[0]}?" if close else ""
                    problems.append(f"{key}: unknown setting ({path}){hint}")
                raw[key] = (value, str(path))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
    elif "DISPATCH_CONFIG" in env:
        raise ConfigError(f"DISPATCH_CONFIG names {path}, which does not exist")
    for key, value in env.items():
        if key.startswith("DISPATCH_"):
            raw[key] = (value, "environment")

    values: dict[str, Any] = {"config_path": path}
    for knob, (field, parse) in KNOBS.items():
        if knob not in raw:
            continue
        text, where = raw[knob]
        try:
            values[field] = parse(text)
        except ValueError as exc:
            problems.append(f"{knob}: {exc} ({where})")

    node_a = values.get("node_a", "a")
    node_b = values.get("node_b", "b")
    node = ""
    for knob in ("DISPATCH_NODE", "DISPATCH_SIDE", "DISPATCH_FROM"):
        if raw.get(knob, ("", ""))[0].strip():
            text, where = raw[knob]
            try:
                node = node_name(text)
            except ValueError as exc:
                problems.append(f"{knob}: {exc} ({where})")
            break
    peers: tuple[str, ...] = ()
    if raw.get("DISPATCH_PEERS", ("", ""))[0].strip():
        text, where = raw["DISPATCH_PEERS"]
        names = [p.strip() for p in text.split(",") if p.strip()]
        for name in names:
            if not valid_node(name):
                problems.append(f"DISPATCH_PEERS: not a valid node name: {name!r} ({where})")
        if node and node in names:
            problems.append(f"DISPATCH_PEERS: lists this node {node!r} itself ({where})")
        if len(set(names)) != len(names):
            problems.append(f"DISPATCH_PEERS: a peer is listed twice ({where})")
        peers = tuple(names)
    elif node in (node_a, node_b):
        peers = (node_b if node == node_a else node_a,)
    if "launcher" not in values:
        values["launcher"] = LauncherKind.SYSTEMD if systemd_is_pid1() else LauncherKind.PROCESS

    if values["launcher"] is LauncherKind.SLURM:
        memory = values.get("memory_max", Config.memory_max)
        if not re.fullmatch(r"\d+[KMGT]?", memory):
            problems.append(
                f"DISPATCH_MEMORY_MAX: Slurm's --mem needs a size, not {memory!r} "
                "(DISPATCH_LAUNCHER=slurm)"
            )
    if need_root and "root" not in values and "DISPATCH_ROOT" not in raw:
        problems.append(
            f"DISPATCH_ROOT: required, the shared root (set it in {path} "
            "or the environment; `dispatch init` writes it)"
        )
    if problems:
        raise ConfigError("invalid configuration: " + "; ".join(problems))
    values.setdefault("root", Path("/nonexistent-dispatch-root"))
    return Config(node=node, peers=peers, **values)


def render(values: Mapping[str, str]) -> str:
    """A config file for `dispatch init`: KEY=VALUE lines systemd can read."""
    lines = ["# dispatch node configuration (KEY=VALUE, read by systemd's EnvironmentFile=)."]
    for key, value in values.items():
        if "\n" in value or '"' in value:
            raise ConfigError(f"{key}: value cannot hold newlines or double quotes")
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"
