"""What `dispatch status` and the heartbeat report: lanes, executions, killswitch, peers."""

from __future__ import annotations

import os
import time
from typing import Any

from dispatch import __version__
from dispatch.errors import ConfigError, Rejection
from dispatch.intake import read_regular
from dispatch.model import loads_strict, now_utc, rfc3339
from dispatch.node import Node
from dispatch.spool import Lane, atomic_write, dump_json

STALE_FACTOR = 3  # a heartbeat older than this many timer periods (min 60 s) is stale


def _names(directory: os.PathLike[str]) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError:
        return []


def lane_counts(node: Node, lane: Lane, incoming: bool) -> dict[str, Any]:
    processing = [n[:-5] for n in _names(lane.processing) if n.endswith(".json")]
    running = [t for t in processing if node.state.started(t) is not None] if incoming else []
    return {
        "lane": lane.name,
        "direction": "in" if incoming else "out",
        "inbox": sum(1 for n in _names(lane.inbox) if not n.endswith(".tmp")),
        "pending_ack": sum(1 for n in _names(lane.pending_ack) if n.endswith(".json")),
        "queued": len(processing) - len(running),
        "running": len(running),
        "done": sum(1 for n in _names(lane.done) if n.endswith(".result.json")),
        "rejected": sum(1 for n in _names(lane.rejected) if n.endswith(".reason.json")),
    }


def heartbeat_stale_after(node: Node) -> float:
    return max(60.0, STALE_FACTOR * node.cfg.poll_sec)


def peers(node: Node) -> list[dict[str, Any]]:
    out = []
    now = time.time()
    for peer in node.cfg.peers:
        entry: dict[str, Any] = {"node": peer, "heartbeat_age_s": None, "stale": True}
        try:
            # read_regular: a FIFO planted on the share must not block `status`.
            beat = loads_strict(read_regular(node.spool.heartbeat_path(peer)))
            age = round(now - float(beat["unix"]), 1)
            entry.update(heartbeat_age_s=age, stale=age > heartbeat_stale_after(node),
                         version=beat.get("version"), killswitch=beat.get("killswitch"))
        except (OSError, ValueError, KeyError, TypeError, Rejection):
            pass
        out.append(entry)
    return out


def overview(node: Node) -> dict[str, Any]:
    spool = node.spool
    killswitch = spool.killswitch()
    lanes = [lane_counts(node, lane, True) for lane in spool.lanes_in(node.cfg)]
    lanes += [lane_counts(node, lane, False) for lane in spool.lanes_out(node.cfg)]
    return {
        "node": node.name,
        "root": str(node.cfg.root),
        "version": __version__,
        "killswitch": {"on": killswitch.on, "hard": killswitch.hard, "reason": killswitch.reason},
        "lanes": lanes,
        "peers": peers(node),
    }


def heartbeat(node: Node) -> dict[str, Any]:
    lanes = [lane_counts(node, lane, True) for lane in node.spool.lanes_in(node.cfg)]
    beat = {
        "node": node.name,
        "ts": rfc3339(now_utc()),
        "unix": time.time(),
        "version": __version__,
        "running": sum(lane["running"] for lane in lanes),
        "queued": sum(lane["queued"] for lane in lanes),
        "pending_ack": sum(lane["pending_ack"] for lane in lanes),
        "killswitch": node.spool.killswitch().on,
        # Peers' `dispatch doctor` compares key ids: a mismatch means every task is refused.
        "kid": node.keys.signing_key().kid,
    }
    path = node.spool.heartbeat_path(node.name)
    if not path.parent.is_dir():
        raise ConfigError(f"{path.parent} does not exist: is the share mounted? "
                          "(`dispatch init` creates it)")
    atomic_write(path, dump_json(beat))
    # Entries older than the freshness window guard nothing (such envelopes are stale).
    node.state.prune(node.cfg.max_age_s + node.cfg.clock_skew_s + 86400)
    from dispatch import metrics

    metrics.write(node, beat, lanes)
    return beat
