"""`dispatch doctor`: each check one line, pass or fail, with a hint for what to do."""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from dispatch.core import broken_config
from dispatch.core import config as config_mod
from dispatch.core.config import LauncherKind
from dispatch.core.errors import DispatchError, Rejection
from dispatch.core.fsio import read_regular
from dispatch.core.mounts import Mount, mount_of
from dispatch.core.node import Node
from dispatch.ops import trust
from dispatch.ops.overview import heartbeat_stale_after


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    hint: str = ""


def run_checks(environ: dict[str, str] | None = None) -> list[Check]:
    try:
        cfg = config_mod.load(environ)
        node = Node(cfg)
        _ = node.name
    except DispatchError as exc:
        return [Check("config", False, str(exc), "fix the listed keys in the config file")]
    checks = [
        Check(
            "config",
            True,
            f"{cfg.config_path}: node {cfg.node}, peers {', '.join(cfg.peers) or 'none'}",
        )
    ]
    from dispatch.ops import key_checks

    checks.append(key_checks.own_key(node))
    checks.append(_root(node))
    checks += [Check(*found) for found in trust.lanes_held(node)]
    checks.append(Check(*trust.agent_user(node)))
    checks += _filesystem(node)
    checks += _peers(node)
    checks += [key_checks.peer_key(node, peer) for peer in cfg.peers]
    if cfg.launcher is LauncherKind.SYSTEMD:  # not when `dispatch watch` runs this node
        checks.append(_unit("dispatch-watch.path", "the path unit"))
        # Every signature goes through it: without it no result or verdict is published.
        checks.append(_unit("dispatch-signer.socket", "the local signer's socket"))
        checks.append(_watch_mode(node))
    if cfg.launcher is LauncherKind.SLURM:
        from dispatch.receive.launch.slurm import doctor_checks

        for ok, detail in doctor_checks(cfg):
            hint = "" if ok else "check SLURM_CONF, munge and DISPATCH_SLURM_PARTITION"
            checks.append(Check("slurm", ok, detail, hint))
    ks = node.spool.killswitch()
    checks.append(
        Check(
            "killswitch",
            not ks.on,
            f"on{' (hard)' if ks.hard else ''}: {ks.reason}" if ks.on else "off",
            "dispatch killswitch off, once the reason is dealt with" if ks.on else "",
        )
    )
    return checks


def _root(node: Node) -> Check:
    root = node.cfg.root
    probe = root / "heartbeats" / f".doctor-{node.name}-{os.getpid()}"
    try:
        # Never created here: a share that is not mounted must not look like an empty one.
        probe.write_text("probe\n")
        probe.unlink()
    except OSError as exc:
        return Check(
            "root",
            False,
            f"{root}: {exc.strerror}",
            "is the share mounted, and writable by this user?",
        )
    missing = [
        lane.name
        for lane in node.spool.lanes_in(node.cfg) + node.spool.lanes_out(node.cfg)
        if not lane.inbox.is_dir()
    ]
    if missing:
        return Check(
            "root",
            False,
            f"{root}: lanes missing: {', '.join(missing)}",
            "dispatch init on this node (and on the peers)",
        )
    return Check("root", True, f"{root} reachable and writable")


def _filesystem(node: Node) -> list[Check]:
    mount = mount_of(node.cfg.root)
    if mount is None:
        return [Check("filesystem", False, "cannot tell the root's filesystem", "")]
    out = []
    detail = f"{mount.fstype} at {mount.mount_point} ({mount.source})"
    if not mount.remote:
        out.append(Check("filesystem", True, detail + ": local, inotify sees every write"))
        return out
    timer_ok = True
    if node.cfg.launcher is LauncherKind.SYSTEMD:  # `dispatch watch` rescans by itself
        timer_ok = _unit_active("dispatch-watch.timer")
    out.append(
        Check(
            "filesystem",
            timer_ok,
            detail + ": remote, inotify misses other hosts' "
            "writes; " + ("the timer rescans" if timer_ok else "the timer is NOT active"),
            "" if timer_ok else "systemctl enable --now dispatch-watch.timer",
        )
    )
    if mount.fstype.startswith("nfs"):
        cache_s, source = nfs_dir_cache_s(mount)
        lookup = mount.option("lookupcache")
        # Worse than the rescan period, or than actimeo=1 (the hint) where polling is faster.
        slow = cache_s > max(node.cfg.poll_sec, 1.0)
        # The kernel shows `lookupcache=pos` for what mount(8) calls `positive`.
        if slow or lookup not in ("none", "pos", "positive"):
            out.append(
                Check(
                    "nfs-cache",
                    False,
                    f"directory attributes cached up to "
                    f"{cache_s}s ({source}), lookupcache={lookup or 'all'}: new "
                    "tasks and results can stay unseen that long",
                    "mount with actimeo=1,lookupcache=positive",
                )
            )
        else:
            out.append(
                Check(
                    "nfs-cache",
                    True,
                    f"directory attributes cached up to "
                    f"{cache_s}s ({source}), lookupcache={lookup}",
                )
            )
    return out


NFS_DEFAULT_ACDIRMAX_S = 60


def nfs_dir_cache_s(mount: Mount) -> tuple[int, str]:
    """How long an NFS client may trust a directory's cached attributes (so not see a file
    another host added). The kernel lists `actimeo=N` as acregmin..acdirmax=N and leaves out
    defaults; an fstab-style option list may still say actimeo."""
    if mount.option("noac") is not None:
        return 0, "noac"
    for name in ("actimeo", "acdirmax"):
        value = mount.option(name)
        if value is not None and value.isdigit():
            return int(value), f"{name}={value}"
    return NFS_DEFAULT_ACDIRMAX_S, "the default acdirmax"


def _peers(node: Node) -> list[Check]:
    out = []
    skew_limit = node.cfg.clock_skew_s
    own_offset = _clock_offset(node.cfg.root)
    pins = node.keys.pins
    for peer in node.cfg.peers:
        path = node.spool.heartbeat_path(peer)
        try:
            # read_regular: a FIFO planted on the share must not block doctor.
            beat = json.loads(read_regular(path))
            sent = float(beat["unix"])
            mtime = path.stat().st_mtime
        except (OSError, ValueError, KeyError, TypeError, Rejection):
            out.append(
                Check(
                    f"peer {peer}",
                    False,
                    "no heartbeat",
                    f"is dispatch-heartbeat.timer running on {peer}, and the share mounted there?",
                )
            )
            continue
        age = time.time() - sent
        # Both clocks against the share's (file mtimes): skew without trusting either host.
        skew = (sent - mtime) - own_offset if own_offset is not None else 0.0
        problems = []
        if abs(skew) > skew_limit / 2:
            problems.append(f"clock skew {skew:+.1f}s")
        # The file's age by the share's clock: a peer whose timer stopped (or host died).
        written_ago = time.time() - (own_offset or 0.0) - mtime
        if written_ago > heartbeat_stale_after(node):
            problems.append(f"stale: last written {written_ago:.0f}s ago")
        kids = set()
        with contextlib.suppress(DispatchError):
            kids = {k.kid for k in pins.keys_of(peer)}
        if kids and beat.get("kid") and beat["kid"] not in kids:
            problems.append(f"signs with key {beat['kid']}, which is not pinned here")
        claim = broken_config.claimed(beat) if isinstance(beat, dict) else ""
        if claim:
            # Its own word about itself: reported here, changes nothing.
            problems.append(f"config broken: {claim}")
        out.append(
            Check(
                f"peer {peer}",
                not problems,
                f"heartbeat {age:.0f}s ago, skew {skew:+.1f}s"
                + ("; " + "; ".join(problems) if problems else ""),
                _peer_hint(peer, problems) if problems else "",
            )
        )
    return out


def _peer_hint(peer: str, problems: list[str]) -> str:
    hints = []
    if any(p.startswith("clock skew") for p in problems):
        hints.append("sync clocks (chrony/timesyncd)")
    if any(p.startswith("signs with key") for p in problems):
        hints.append(f"pin {peer}'s new key: dispatch peers add {peer} KEYFILE")
    if any(p.startswith("stale") for p in problems):
        hints.append(f"is dispatch-heartbeat.timer running on {peer}?")
    if any(p.startswith("config broken") for p in problems):
        hints.append(
            f"on {peer}: fix its config (dispatch doctor there), then systemctl daemon-reload"
        )
    return "; ".join(hints)


def _clock_offset(root: Path) -> float | None:
    """This host's clock minus the share's, from a probe file's mtime."""
    probe = root / "heartbeats" / f".clock-{os.getpid()}"
    try:
        before = time.time()
        probe.write_text("")
        offset = before - probe.stat().st_mtime
        probe.unlink()
    except OSError:
        return None
    return offset


def _watch_mode(node: Node) -> Check:
    """Which of the two ways this node notices other hosts' writes, and whether what runs
    matches it (the generator decides at daemon-reload, from the mount or /etc/fstab)."""
    from dispatch.core.config import WatchMode
    from dispatch.core.runner import systemctl
    from dispatch.receive.generator import INOTIFY_SWEEP_S, SENSOR_SWEEP_S, watch_mode

    cfg = node.cfg
    mode = watch_mode(cfg)
    why = f"DISPATCH_WATCH_MODE={cfg.watch_mode}"
    unit = "dispatch-sensor.service"
    try:
        shown = systemctl("show", "--property=ActiveState,Environment", unit, check=False).stdout
    except DispatchError as exc:
        return Check("watch-mode", False, f"{mode} ({why}): {exc}", "is systemd running here?")
    active = "ActiveState=active" in shown.splitlines()
    rendered = "DISPATCH_SENSOR_ROOT=" in shown
    if mode in (WatchMode.TIMER, WatchMode.INOTIFY):
        ok = not rendered
        what = (
            f"dispatch-watch.timer starts a pass every {cfg.poll_sec:g}s"
            if mode is WatchMode.TIMER
            else "dispatch-watch.path sees every write to this local root; "
            f"dispatch-watch.timer sweeps every {INOTIFY_SWEEP_S}s"
        )
        return Check(
            "watch-mode",
            ok,
            f"{mode} ({why}): {what}" + ("" if ok else f"; but {unit} still has sensor settings"),
            "" if ok else "systemctl daemon-reload && systemctl restart dispatch-sensor.service",
        )
    if not rendered:
        return Check(
            "watch-mode",
            False,
            f"sensor ({why}), but {unit} has no settings from the generator",
            "systemctl daemon-reload && systemctl restart dispatch-sensor.service",
        )
    return Check(
        "watch-mode",
        active,
        f"sensor ({why}): {unit} {'active' if active else 'NOT active'}, looks at the lanes "
        f"every {cfg.sensor_ms} ms ({max(cfg.sensor_idle_ms, cfg.sensor_ms)} ms once idle); "
        f"dispatch-watch.timer sweeps every {SENSOR_SWEEP_S}s",
        "" if active else f"systemctl enable --now {unit}; journalctl -u {unit}",
    )


def _unit_active(unit: str) -> bool:
    from dispatch.core.runner import systemctl

    try:
        return systemctl("is-active", unit, check=False).stdout.strip() == "active"
    except DispatchError:
        return False


def _unit(unit: str, what: str) -> Check:
    from dispatch.core.runner import systemctl

    try:
        shown = systemctl("show", "--property=ActiveState,SubState", unit, check=False).stdout
    except DispatchError as exc:
        return Check(unit, False, f"{what}: {exc}", "is systemd running here?")
    props = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    state, sub = props.get("ActiveState", "unknown"), props.get("SubState", "unknown")
    ok = state == "active"
    return Check(
        unit,
        ok,
        f"{what}: {state} ({sub})",
        "" if ok else f"systemctl start {unit}; journalctl -u {unit}",
    )
