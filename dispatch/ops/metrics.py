"""A Prometheus textfile-collector file (node_exporter's convention: `*.prom` in its
textfile directory, replaced atomically), written by the heartbeat."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from dispatch.core import events
from dispatch.core.errors import Rejection
from dispatch.core.fsio import atomic_write, read_regular
from dispatch.core.model import Status
from dispatch.core.node import Node
from dispatch.core.spool import REASON_SUFFIX, RESULT_SUFFIX
from dispatch.receive.promote import junk

CACHE = "metrics-cache.json"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _tally(
    node: Node, directory: Path, suffix: str, field: str, cache: dict[str, str]
) -> Counter[str]:
    """Count files by one JSON field; results and reasons never change once written, so
    each is read once and remembered in node-local state."""
    counts: Counter[str] = Counter()
    try:
        names = [n for n in os.listdir(directory) if n.endswith(suffix)]
    except OSError:
        return counts
    for name in names:
        key = f"{directory.parent.name}/{name}"
        value = cache.get(key)
        if value is None:
            try:
                # read_regular: a name in done/ or rejected/ may be a planted FIFO or link.
                value = str(json.loads(read_regular(directory / name)).get(field, "unknown"))
            except (OSError, ValueError, AttributeError, Rejection):
                value = "unreadable"
            cache[key] = value
        counts[value] += 1
    return counts


def render(node: Node, beat: dict[str, Any], lanes: list[dict[str, Any]]) -> str:
    cache_path = node.state.path / CACHE
    try:
        cache: dict[str, str] = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    statuses: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for lane in node.spool.lanes_in(node.cfg):
        statuses += _tally(node, lane.done, RESULT_SUFFIX, "status", cache)
        reasons += _tally(node, lane.rejected, REASON_SUFFIX, "reason", cache)
    atomic_write(cache_path, json.dumps(cache).encode(), mode=0o600)
    for status in Status:  # every status from the start, so rate() sees the first one
        statuses.setdefault(status.value, 0)
    node_label = f'node="{_label(node.name)}"'
    out = [
        "# HELP dispatch_tasks_total Tasks received by this node, by final status.",
        "# TYPE dispatch_tasks_total counter",
    ]
    out += [
        f'dispatch_tasks_total{{{node_label},status="{_label(s)}"}} {n}'
        for s, n in sorted(statuses.items())
    ]
    out += [
        "# HELP dispatch_rejections_total Inbox entries refused, by reason.",
        "# TYPE dispatch_rejections_total counter",
    ]
    out += [
        f'dispatch_rejections_total{{{node_label},reason="{_label(r)}"}} {n}'
        for r, n in sorted(reasons.items())
    ]
    out += [
        "# HELP dispatch_queue_depth Tasks waiting to run, by lane and stage.",
        "# TYPE dispatch_queue_depth gauge",
    ]
    for counts in lanes:
        for stage in ("inbox", "pending_ack", "queued"):
            out.append(
                f'dispatch_queue_depth{{{node_label},lane="{_label(counts["lane"])}",'
                f'stage="{stage}"}} {counts[stage]}'
            )
    out += [
        "# HELP dispatch_junk_dropped_total Refused entries (junk) dropped from rejected/ "
        "past its bound, by lane.",
        "# TYPE dispatch_junk_dropped_total counter",
    ]
    dropped = junk.dropped_counts(node.state.path)
    for lane in node.spool.lanes_in(node.cfg):
        out.append(
            f'dispatch_junk_dropped_total{{{node_label},lane="{_label(lane.name)}"}} '
            f"{dropped.get(lane.name, 0)}"
        )
    out += [
        "# HELP dispatch_running Executions running on this node.",
        "# TYPE dispatch_running gauge",
        f"dispatch_running{{{node_label}}} {beat['running']}",
        "# HELP dispatch_killswitch 1 when the share's KILLSWITCH is present.",
        "# TYPE dispatch_killswitch gauge",
        f"dispatch_killswitch{{{node_label}}} {int(bool(beat['killswitch']))}",
        "# HELP dispatch_last_heartbeat_timestamp_seconds When this node last wrote its heartbeat.",
        "# TYPE dispatch_last_heartbeat_timestamp_seconds gauge",
        f"dispatch_last_heartbeat_timestamp_seconds{{{node_label}}} {beat['unix']:.3f}",
    ]
    return "\n".join(out) + "\n"


def write(node: Node, beat: dict[str, Any], lanes: list[dict[str, Any]]) -> Path | None:
    """Write the file if its directory exists (node_exporter's package makes it). A file
    that cannot be written is a warning: the heartbeat itself is already out."""
    path = node.cfg.metrics_file
    if not path.parent.is_dir():
        return None
    try:
        # 0644: node_exporter usually runs as its own user.
        atomic_write(path, render(node, beat, lanes).encode("utf-8"))
    except OSError as exc:
        node.emit(
            "metrics_error", f"cannot write {path}: {exc.strerror or exc}", level=events.WARNING
        )
        return None
    return path
