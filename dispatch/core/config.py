"""Configuration: `/etc/dispatch/dispatch.conf` (systemd `EnvironmentFile=` syntax), then the
environment. Every value is checked at once, so an operator sees every problem in one go."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from dispatch.core.errors import ConfigError

DEFAULT_CONFIG = Path("/etc/dispatch/dispatch.conf")
NODE_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")


class LauncherKind(StrEnum):
    SYSTEMD = "systemd"
    PROCESS = "process"
    # The executor runs here (under systemd or as a process) and the agent as a Slurm job.
    SLURM = "slurm"


class WatchMode(StrEnum):
    """How a node notices other hosts' writes, which inotify cannot see (README: "What a
    node runs while idle"). auto: the sensor when the root is on a network filesystem."""

    AUTO = "auto"
    SENSOR = "sensor"
    TIMER = "timer"


class AgentProfile(StrEnum):
    CLAUDE = "claude"
    GENERIC = "generic"


class DangerousPolicy(StrEnum):
    ALLOW = "allow"
    ACK = "ack"
    DENY = "deny"


def valid_node(name: str) -> bool:
    return NODE_RE.fullmatch(name) is not None


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


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "yes", "true", "on"):
        return True
    if low in ("0", "no", "false", "off", ""):
        return False
    raise ValueError(f"expected a boolean (1/0, yes/no), got {text!r}")


def _whole(text: str, shape: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"must be a whole number {shape} (no unit), got {text!r}") from None


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _whole(text, f"of at least {minimum}")
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _whole(text, f"from {low} to {high}")
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(
            f"must be a number of seconds such as 3 or 0.5 (no unit), got {text!r}"
        ) from None
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"must be a positive number, got {text!r}")
    return value


def _abs_path(text: str) -> Path:
    path = Path(text.strip())
    if not path.is_absolute():
        raise ValueError(f"must be an absolute path, got {text!r}")
    return path


def _node(text: str) -> str:
    if not valid_node(text.strip()):
        raise ValueError(f"not a valid node name ([a-z0-9][a-z0-9_.-]{{0,62}}): {text!r}")
    return text.strip()


def _enum(kind: type[StrEnum]) -> Callable[[str], StrEnum]:
    def parse(text: str) -> StrEnum:
        try:
            return kind(text.strip())
        except ValueError:
            choices = ", ".join(m.value for m in kind)
            raise ValueError(f"must be one of {choices}, got {text!r}") from None

    return parse


def _memory(text: str) -> str:
    if not re.fullmatch(r"(\d+[KMGT]?|\d+%|infinity)", text.strip()):
        raise ValueError(f"expected bytes with K/M/G/T suffix, a percentage or infinity: {text!r}")
    return text.strip()


def _percent(text: str) -> str:
    if not re.fullmatch(r"\d+%", text.strip()):
        raise ValueError(f"expected a percentage such as 200%: {text!r}")
    return text.strip()


def _url(text: str) -> str:
    text = text.strip()
    if text and not re.fullmatch(r"https?://[^\s]+", text):
        raise ValueError(f"expected an http(s) URL, got {text[:80]!r}")
    return text


def _str(text: str) -> str:
    return text.strip()


def _node_list(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for name in names:
        _node(name)
    return names


def _slurm_name(text: str) -> str:
    # Partition and account names reach sbatch as one argument each; keep them to names.
    if text.strip() and not re.fullmatch(r"[A-Za-z0-9_.,-]{1,128}", text.strip()):
        raise ValueError(f"not a Slurm partition/account name: {text[:80]!r}")
    return text.strip()


# Options dispatch sets itself from the task and the other knobs: a site cannot override them
# through DISPATCH_SLURM_ARGS (--requeue would break at-most-once, --output the log).
SLURM_OWNED_OPTIONS = frozenset(
    {
        "--job-name",
        "-J",
        "--comment",
        "--output",
        "-o",
        "--error",
        "-e",
        "--input",
        "-i",
        "--time",
        "-t",
        "--mem",
        "--mem-per-cpu",
        "--mem-per-gpu",
        "--cpus-per-task",
        "-c",
        "--requeue",
        "--no-requeue",
        "--export",
        "--export-file",
        "--wrap",
        "--parsable",
        "--uid",
        "--gid",
        "--chdir",
        "-D",
        "--open-mode",
        "--partition",
        "-p",
        "--account",
        "-A",
        "--array",
        "-a",
        "--wait",
        "-W",
        "--hold",
        "-H",
    }
)


def _slurm_args(text: str) -> tuple[str, ...]:
    import shlex

    try:
        args = tuple(shlex.split(text))
    except ValueError as exc:
        raise ValueError(f"cannot split into arguments: {exc}") from None
    for arg in args:
        if not arg.startswith("-"):
            raise ValueError(f"{arg!r} is not an option (write --opt=value as one word)")
        if arg.split("=", 1)[0] in SLURM_OWNED_OPTIONS:
            raise ValueError(f"{arg.split('=', 1)[0]} is set by dispatch and cannot be given")
    return args


# knob -> (field, parser). Knob names keep the original project's spelling.
KNOBS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "DISPATCH_ROOT": ("root", _abs_path),
    "DISPATCH_NODE_A": ("node_a", _node),
    "DISPATCH_NODE_B": ("node_b", _node),
    "DISPATCH_KEY_DIR": ("key_dir", _abs_path),
    "DISPATCH_PEERS_DIR": ("peer_keys_dir", _abs_path),
    "DISPATCH_STATE_DIR": ("state_dir", _abs_path),
    "DISPATCH_POLL_SEC": ("poll_sec", _positive_float),
    "DISPATCH_WATCH_MODE": ("watch_mode", _enum(WatchMode)),
    # Below 50 ms the sensor's stats would load the file server for nothing; above 10 s it
    # would be slower than the timer it replaces.
    "DISPATCH_SENSOR_MS": ("sensor_ms", _int_between(50, 10000)),
    "DISPATCH_MAX_PARALLEL": ("max_parallel", _int_at_least(1)),
    "DISPATCH_LAUNCHER": ("launcher", _enum(LauncherKind)),
    "DISPATCH_AGENT_BIN": ("agent_bin", _str),
    "DISPATCH_AGENT_PROFILE": ("agent_profile", _enum(AgentProfile)),
    "DISPATCH_ACCEPT_V2": ("accept_v2", _bool),
    "DISPATCH_ACCEPT_V3": ("accept_v3", _bool),
    "DISPATCH_V2_REQUIRE_ACK": ("v2_require_ack", _bool),
    "DISPATCH_DANGEROUS": ("dangerous", _enum(DangerousPolicy)),
    "DISPATCH_DEFAULT_TIMEOUT_S": ("default_timeout_s", _int_at_least(1)),
    "DISPATCH_TIMEOUT_MAX_S": ("timeout_max_s", _int_at_least(1)),
    "DISPATCH_DEFAULT_MAX_OUTPUT_BYTES": ("default_max_output_bytes", _int_at_least(1024)),
    "DISPATCH_MAX_OUTPUT_BYTES_MAX": ("max_output_bytes_max", _int_at_least(1024)),
    "DISPATCH_MAX_AGE_S": ("max_age_s", _int_at_least(1)),
    "DISPATCH_CLOCK_SKEW_S": ("clock_skew_s", _int_at_least(0)),
    "DISPATCH_RUN_AS": ("run_as", _str),
    "DISPATCH_MEMORY_MAX": ("memory_max", _memory),
    "DISPATCH_TASKS_MAX": ("tasks_max", _int_at_least(8)),
    "DISPATCH_CPU_QUOTA": ("cpu_quota", _percent),
    "DISPATCH_MAX_HOPS": ("max_hops", _int_at_least(0)),
    "DISPATCH_DISCORD_WEBHOOK": ("discord_webhook", _url),
    "DISPATCH_WEBHOOK_URL": ("webhook_url", _url),
    "DISPATCH_ACK_TTL": ("ack_ttl_s", _int_at_least(1)),
    "DISPATCH_RETAIN_DAYS": ("retain_days", _int_at_least(0)),
    "DISPATCH_STALL_S": ("stall_s", _int_at_least(0)),
    "DISPATCH_METRICS_FILE": ("metrics_file", _abs_path),
    "DISPATCH_SLURM_PARTITION": ("slurm_partition", _slurm_name),
    "DISPATCH_SLURM_ACCOUNT": ("slurm_account", _slurm_name),
    "DISPATCH_SLURM_ARGS": ("slurm_args", _slurm_args),
    "DISPATCH_SLURM_DIR": ("slurm_dir", _abs_path),
    "DISPATCH_SIGNER_SOCKET": ("signer_socket", _abs_path),
    "DISPATCH_CHAIN_PEERS": ("chain_peers", _node_list),
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
                node = _node(text)
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
