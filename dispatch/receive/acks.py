"""Giving an ack: a MAC under this host's ack secret, so only this host can give one."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dispatch.core.errors import NotFound, UsageError
from dispatch.core.node import Node
from dispatch.receive.promote.pass_ import write_ack


@dataclass(frozen=True)
class Acked:
    task_id: str
    lane: str
    path: Path


def ack(node: Node, prefix: str) -> Acked:
    prefix = prefix.strip().lower()
    if not prefix or not all(c in "0123456789abcdef-" for c in prefix):
        raise UsageError(f"not a task id or id prefix: {prefix[:60]!r}")
    matches = []
    for lane in node.spool.lanes_in(node.cfg):
        try:
            names = os.listdir(lane.pending_ack)
        except OSError:
            continue
        matches += [(lane, n[:-5]) for n in names if n.endswith(".json") and n.startswith(prefix)]
    if not matches:
        raise NotFound(f"no pending task matching {prefix!r} on {node.name}")
    if len(matches) > 1:
        raise UsageError(f"prefix {prefix!r} matches {len(matches)} tasks; be more specific")
    lane, task_id = matches[0]
    path = write_ack(node, lane, task_id)
    node.emit("ack_given", "local ack written", task_id=task_id, from_=lane.from_, to=lane.to)
    return Acked(task_id, lane.name, path)
