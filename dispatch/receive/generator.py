"""dispatch-generator: turn /etc/dispatch/dispatch.conf into unit drop-ins at daemon-reload.

systemd runs generators early and often, so this imports nothing beyond the config module
and never touches the share: the lanes are derived from the config alone.
See systemd.generator(7): argv is normal-dir [early-dir late-dir]."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from dispatch import __version__
from dispatch.core import broken_config
from dispatch.core import config as config_mod
from dispatch.core.config import Config, WatchMode
from dispatch.core.errors import ConfigError
from dispatch.core.keys import PRIVATE_SUFFIX
from dispatch.core.mounts import fstab_mount_of, mount_of
from dispatch.core.spool import INBOX_LEVEL_ENV, WATCHED_DIRS, level_inboxes_value
from dispatch.receive.looks import LOOKED_FILE

# Above the largest allowed timeout_s: the executor's own watchdog and its grace period
# (SIGTERM, then SIGKILL after 5 s) always fire first; this ceiling is for an executor
# that is itself stuck.
RUNTIME_CEILING_GRACE_S = 60


def _escape(path: Path, knob: str = "DISPATCH_ROOT") -> str:
    # Unit file values: '%' starts a specifier, and whitespace would split the list.
    text = str(path).replace("%", "%%")
    if any(ch.isspace() for ch in text) or '"' in text or "\\" in text:
        raise ConfigError(
            f"{knob} {path} has whitespace, quotes or backslashes, which unit files cannot hold"
        )
    return text


# With the sensor, or inotify alone on a local disk, the timer is only a safety net:
# time-based work (ack TTLs, stale envelopes, deferred results, pruning, metrics), and a pass
# should an event ever be missed. Each such start costs ~130 ms of CPU, hence a long period.
SENSOR_SWEEP_S = 600


# inotify alone still leaves a moment unwatched: systemd watches the lanes again only once
# a pass has exited, and what lands between the pass's last look and then is seen by the
# next event or this sweep. The sensor has no such gap (it keeps looking), the timer mode
# polls anyway; here a sweep a minute bounds that wait at ~130 ms of CPU a minute.
INOTIFY_SWEEP_S = 60


def _seconds(value: float) -> str:
    return f"{value:g}s"


def watch_mode(cfg: Config, mountinfo: str | None = None, fstab: str | None = None) -> WatchMode:
    """SENSOR, INOTIFY or TIMER for this node. auto: the sensor when the root is on a
    network filesystem (inotify cannot see other hosts' writes there), as mounted now or, at
    boot before it is, as /etc/fstab will mount it; inotify alone when it is on a local disk
    filesystem; the timer otherwise. Nothing is stat'ed: the share may hang."""
    if cfg.watch_mode is not WatchMode.AUTO:
        return cfg.watch_mode
    mounted = mount_of(cfg.root, mountinfo, resolve=False)
    if mounted is not None and mounted.remote:
        return WatchMode.SENSOR
    planned = fstab_mount_of(cfg.root, fstab)
    if (
        planned is not None
        and planned.remote
        and (mounted is None or len(planned.mount_point) > len(mounted.mount_point))
    ):
        return WatchMode.SENSOR
    if mounted is not None and mounted.local_disk and (planned is None or not planned.remote):
        return WatchMode.INOTIFY
    return WatchMode.TIMER


def _sensor_dropin(cfg: Config, root: str) -> str:
    state = _escape(cfg.state_dir, "DISPATCH_STATE_DIR")
    keys = _escape(cfg.key_dir, "DISPATCH_KEY_DIR")
    return (
        f"[Unit]\nRequiresMountsFor={root}\n[Service]\n"
        f"Environment=DISPATCH_SENSOR_ROOT={root}\n"
        f"Environment=DISPATCH_SENSOR_NODE={cfg.node}\n"
        f"Environment=DISPATCH_SENSOR_PEERS={','.join(cfg.peers)}\n"
        f"Environment=DISPATCH_SENSOR_STATE_DIR={state}\n"
        f"Environment=DISPATCH_SENSOR_MS={cfg.sensor_ms}\n"
        f"Environment=DISPATCH_SENSOR_IDLE_MS={max(cfg.sensor_idle_ms, cfg.sensor_ms)}\n"
        # The one place on the share it writes: its own heartbeat (write, then rename).
        f"ReadWritePaths={root}/heartbeats\n"
        # It holds no key: the key ring is not there.
        f"InaccessiblePaths=-{keys}\n"
    )


def render(cfg: Config, mode: WatchMode | None = None) -> dict[str, str]:
    """Drop-in path (relative to the generator's output dir) -> contents; `mode` defaults to
    what watch_mode() finds on this host."""
    root = _escape(cfg.root)
    mounts = f"[Unit]\nRequiresMountsFor={root}\n"
    rw = f"[Service]\nReadWritePaths={root}\n"
    watched = []
    for peer in cfg.peers:
        for sub in WATCHED_DIRS:
            watched.append(f"PathChanged={root}/{peer}-to-{cfg.node}/{sub}")
    watched.append(f"PathChanged={root}/KILLSWITCH")
    mode = mode or watch_mode(cfg)
    if mode is WatchMode.INOTIFY:
        # PathChanged= looks only while it watches, and systemd watches again only once the
        # pass has exited: a task landing between the pass's last look and then would wait
        # for the sweep. DirectoryNotEmpty= looks again as it re-arms. Local roots only: a
        # network filesystem that hangs would hang PID 1 in that readdir.
        watched += [f"DirectoryNotEmpty={root}/{peer}-to-{cfg.node}/inbox" for peer in cfg.peers]
    # The heartbeat also writes the Prometheus textfile (ProtectSystem=strict makes the rest
    # of the file system read-only); '-': no error while node_exporter's directory is absent.
    metrics_dir = _escape(cfg.metrics_file.parent, "DISPATCH_METRICS_FILE")
    metrics_rw = f"ReadWritePaths=-{metrics_dir}\n"
    ceiling = cfg.timeout_max_s + RUNTIME_CEILING_GRACE_S
    # Only dispatch-signer.service reads the private key: every other process of the node
    # signs through it. Hidden from these units, so that none of them, nor an agent running
    # as root, can read it. The file only: the key directory's HMAC ring still verifies
    # schema 2/3 during a migration. '-': not an error before `dispatch init` made it.
    private_key = _escape(cfg.key_dir / f"{cfg.node}{PRIVATE_SUFFIX}", "DISPATCH_KEY_DIR")
    no_key = (
        "# The private key is dispatch-signer.service's alone: this unit signs through it.\n"
        f"InaccessiblePaths=-{private_key}\n"
    )
    header = (
        f"# Generated by dispatch-generator from {cfg.config_path} at daemon-reload; do not edit.\n"
        f"# Watch mode: {mode} (DISPATCH_WATCH_MODE={cfg.watch_mode}), dispatch {__version__}.\n"
    )
    period = {WatchMode.TIMER: cfg.poll_sec, WatchMode.INOTIFY: INOTIFY_SWEEP_S}.get(
        mode, SENSOR_SWEEP_S
    )
    dropins: dict[str, str] = {}
    if mode is WatchMode.SENSOR:
        dropins["dispatch-sensor.service.d/50-sensor.conf"] = header + _sensor_dropin(cfg, root)
        # The sensor writes the heartbeat every 15 s; the Python one is the safety net (and
        # records the key id the sensor puts in it). The empty assignment resets every
        # timer of the unit, OnBootSec= too: given again.
        dropins["dispatch-heartbeat.timer.d/50-sensor.conf"] = (
            header
            + "[Timer]\nOnUnitActiveSec=\nOnBootSec=2s\n"
            + f"OnUnitActiveSec={_seconds(SENSOR_SWEEP_S)}\n"
        )
        # A pass ends with a settled look it leaves for the sensor (promote/last_look.py).
        dropins["dispatch-watch.service.d/50-sensor.conf"] = (
            header + f"[Service]\nEnvironment=DISPATCH_SENSOR_LOOKED={LOOKED_FILE}\n"
        )
    if mode is WatchMode.INOTIFY:
        dropins["dispatch-watch.service.d/50-inotify.conf"] = (
            header
            + "[Service]\n"
            + f"Environment={INBOX_LEVEL_ENV}={level_inboxes_value(root, cfg.node, cfg.peers)}\n"
        )
    return dropins | {
        "dispatch-watch.path.d/50-lanes.conf": header + "[Path]\n" + "\n".join(watched) + "\n",
        "dispatch-watch.timer.d/50-poll.conf": header
        + f"[Timer]\nOnUnitActiveSec={_seconds(period)}\n",
        "dispatch-watch.service.d/50-root.conf": header + mounts + rw + no_key,
        "dispatch-heartbeat.service.d/50-root.conf": header + mounts + rw + metrics_rw + no_key,
        "dispatch-exec@.service.d/50-limits.conf": header
        + mounts
        + rw
        + no_key
        + (
            f"MemoryMax={cfg.memory_max}\n"
            f"TasksMax={cfg.tasks_max}\n"
            f"CPUQuota={cfg.cpu_quota}\n"
            f"RuntimeMaxSec={ceiling}\n"
            f"Environment=DISPATCH_RUNTIME_MAX_S={ceiling}\n"
        ),
        "dispatch.slice.d/50-limits.conf": header + "[Slice]\n"
        f"TasksMax={cfg.tasks_max * cfg.max_parallel + 64}\n",
    }


def write(out_dir: Path, cfg: Config, mode: WatchMode | None = None) -> list[Path]:
    written = []
    for rel, text in render(cfg, mode).items():
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: dispatch-generator NORMAL_DIR [EARLY_DIR LATE_DIR]", file=sys.stderr)
        return 2
    config_path = os.environ.get("DISPATCH_CONFIG", str(config_mod.DEFAULT_CONFIG))
    if not Path(config_path).exists():
        return 0  # not initialised: the units' conditions keep them inert
    try:
        values = config_mod.parse_env_file(Path(config_path))
        if not values.get("DISPATCH_ROOT"):
            return 0  # the packaged template: `dispatch init` has not configured this node
        cfg = config_mod.load({"DISPATCH_CONFIG": config_path})
        if not cfg.node or not cfg.peers:
            raise ConfigError("DISPATCH_NODE and DISPATCH_PEERS must be set")
        write(Path(args[0]), cfg)
    except (ConfigError, OSError) as exc:
        # Generators log to the kernel log, where nobody looks. A node whose config broke
        # must not just go quiet: the timer keeps starting dispatch-watch.service, which
        # fails (`dispatch promote` exits 2 with the one-line reason), so the unit shows
        # failed and `systemctl status` / the journal say why until the config is fixed.
        print(f"dispatch-generator: {exc}", file=sys.stderr)
        with contextlib.suppress(OSError, ConfigError):
            write_broken(Path(args[0]), config_path, str(exc))
            # Read leniently: the file may not even parse.
            lenient = broken_config.lenient_values({"DISPATCH_CONFIG": config_path})
            write_broken_heartbeat(Path(args[0]), lenient.get("DISPATCH_ROOT", ""))
        return 1
    return 0


BROKEN_RETRY_S = 30


def write_broken(out_dir: Path, config_path: str, problem: str) -> Path:
    path = out_dir / "dispatch-watch.timer.d" / "50-poll.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    reason = " ".join(problem.split())[:400]
    path.write_text(
        f"# Generated by dispatch-generator at daemon-reload; do not edit.\n"
        f"# {config_path} is broken: {reason}\n"
        f"# The watch service runs (and fails, saying why) every {BROKEN_RETRY_S}s until the\n"
        "# config is fixed and systemd reloaded.\n"
        f"[Timer]\nOnUnitActiveSec={BROKEN_RETRY_S}s\n"
    )
    return path


def write_broken_heartbeat(out_dir: Path, root: str) -> Path | None:
    """The heartbeat service may still write `<root>/heartbeats`: its beat says the config is
    broken (core/broken_config.py), so peers show why instead of a heartbeat going stale."""
    if not root.startswith("/"):
        return None
    escaped = _escape(Path(root))
    path = out_dir / "dispatch-heartbeat.service.d" / "50-root.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# Generated by dispatch-generator at daemon-reload (the config is broken); do not edit.\n"
        f"[Unit]\nRequiresMountsFor={escaped}\n[Service]\nReadWritePaths=-{escaped}/heartbeats\n"
    )
    return path


if __name__ == "__main__":
    raise SystemExit(main())
