"""`dispatch doctor`: each check one line, pass or fail, with a hint for what to do."""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from dispatch import config as config_mod
from dispatch.errors import DispatchError
from dispatch.mounts import mount_of
from dispatch.node import Node
from dispatch.signing import Keyring


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
    checks = [Check("config", True, f"{cfg.config_path}: node {cfg.node}, "
                    f"peers {', '.join(cfg.peers) or 'none'}")]
    checks.append(_keys(node))
    checks.append(_root(node))
    checks += _filesystem(node)
    checks += _peers(node)
    if config_mod.systemd_is_pid1():
        checks.append(_unit("dispatch-watch.path", "the path unit"))
    ks = node.spool.killswitch()
    checks.append(Check("killswitch", not ks.on,
                        f"on{' (hard)' if ks.hard else ''}: {ks.reason}" if ks.on else "off",
                        "dispatch killswitch off, once the reason is dealt with" if ks.on else ""))
    return checks


def _keys(node: Node) -> Check:
    try:
        ring = Keyring.load(node.cfg)
    except DispatchError as exc:
        return Check("key", False, str(exc), "dispatch keys new, or copy a peer's key and "
                     "`dispatch keys import` it")
    key = ring.signing_key()
    if ring.fallback:
        return Check("key", False, f"only the share's {key.path} (readable by anyone who "
                     "reads the share)", "dispatch keys import "
                     f"{key.path}; then remove it from the share")
    mode = os.stat(key.path).st_mode & 0o777
    return Check("key", mode == 0o600, f"{key.kid} at {key.path}, mode {mode:04o}",
                 f"chmod 600 {key.path}" if mode != 0o600 else "")


def _root(node: Node) -> Check:
    root = node.cfg.root
    probe = root / "heartbeats" / f".doctor-{node.name}-{os.getpid()}"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text("probe\n")
        probe.unlink()
    except OSError as exc:
        return Check("root", False, f"{root}: {exc.strerror}", "is the share mounted, and "
                     "writable by this user?")
    missing = [lane.name for lane in node.spool.lanes_in(node.cfg) + node.spool.lanes_out(
        node.cfg) if not lane.inbox.is_dir()]
    if missing:
        return Check("root", False, f"{root}: lanes missing: {', '.join(missing)}",
                     "dispatch init on this node (and on the peers)")
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
    if config_mod.systemd_is_pid1():
        timer_ok = _unit_active("dispatch-watch.timer")
    out.append(Check("filesystem", timer_ok, detail + ": remote, inotify misses other hosts' "
                     "writes; " + ("the timer rescans" if timer_ok else "the timer is NOT "
                                   "active"), "" if timer_ok else
                     "systemctl enable --now dispatch-watch.timer"))
    if mount.fstype.startswith("nfs"):
        actimeo = mount.option("actimeo") or mount.option("acdirmax")
        lookup = mount.option("lookupcache")
        slow = actimeo is None or int(actimeo) > node.cfg.poll_sec
        if slow or lookup not in ("none", "positive"):
            out.append(Check("nfs-cache", False, f"actimeo={actimeo or 'default (30-60 s)'}, "
                             f"lookupcache={lookup or 'all'}: new tasks can stay unseen that "
                             "long", "mount with actimeo=1,lookupcache=positive"))
        else:
            out.append(Check("nfs-cache", True, f"actimeo={actimeo}, lookupcache={lookup}"))
    return out


def _peers(node: Node) -> list[Check]:
    out = []
    skew_limit = node.cfg.clock_skew_s
    own_offset = _clock_offset(node.cfg.root)
    ring = None
    with contextlib.suppress(DispatchError):
        ring = Keyring.load(node.cfg)
    for peer in node.cfg.peers:
        path = node.spool.heartbeat_path(peer)
        try:
            beat = json.loads(path.read_text())
            sent = float(beat["unix"])
            mtime = path.stat().st_mtime
        except (OSError, ValueError, KeyError, TypeError):
            out.append(Check(f"peer {peer}", False, "no heartbeat", f"is dispatch-heartbeat."
                             f"timer running on {peer}, and the share mounted there?"))
            continue
        age = time.time() - sent
        # Both clocks against the share's (file mtimes): skew without trusting either host.
        skew = (sent - mtime) - own_offset if own_offset is not None else 0.0
        problems = []
        if abs(skew) > skew_limit / 2:
            problems.append(f"clock skew {skew:+.1f}s")
        if ring is not None and beat.get("kid") and beat["kid"] not in {k.kid for k in ring}:
            problems.append(f"signs with key {beat['kid']}, which this host does not have")
        out.append(Check(f"peer {peer}", not problems,
                         f"heartbeat {age:.0f}s ago, skew {skew:+.1f}s"
                         + ("; " + "; ".join(problems) if problems else ""),
                         "sync clocks (chrony/timesyncd); copy keys with dispatch keys import"
                         if problems else ""))
    return out


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


def _unit_active(unit: str) -> bool:
    from dispatch.runner import systemctl

    try:
        return systemctl("is-active", unit, check=False).stdout.strip() == "active"
    except DispatchError:
        return False


def _unit(unit: str, what: str) -> Check:
    from dispatch.runner import systemctl

    state = systemctl("show", "-P", "ActiveState", unit, check=False).stdout.strip()
    sub = systemctl("show", "-P", "SubState", unit, check=False).stdout.strip()
    ok = state == "active"
    return Check(unit, ok, f"{what}: {state} ({sub})",
                 "" if ok else f"systemctl start {unit}; journalctl -u {unit}")
