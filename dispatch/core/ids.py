"""Task ids as people type them: a whole id, or a unique prefix of one. The one resolver
every command that takes an id uses (`result`, `wait`, `cancel`, `logs`, `ack`), and the
ids shell completion offers.

The candidates are this node's own record (core.history), its ledger, and the names in its
lanes on the share. A name on the share is only matched against, never trusted: the worst a
planted name can do is make a prefix ambiguous, and a whole id always resolves to itself."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable

from dispatch.core import history
from dispatch.core.errors import NotFound, UsageError
from dispatch.core.node import Node
from dispatch.core.spool import RESULT_SUFFIX, TASK_SUFFIX, Lane
from dispatch.core.wire import valid_id

HEX = set("0123456789abcdef-")
SHOWN = 5  # ambiguous matches named in the error


def _lane_ids(lane: Lane) -> set[str]:
    found: set[str] = set()
    for directory in (lane.inbox, lane.pending_ack, lane.processing, lane.done, lane.rejected):
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            for suffix in (RESULT_SUFFIX, TASK_SUFFIX):
                if name.endswith(suffix) and valid_id(name[: -len(suffix)]):
                    found.add(name[: -len(suffix)])
                    break
    return found


def known_ids(node: Node) -> set[str]:
    """Every task id this node knows of, sent or received."""
    found = {task.id for task in history.tasks(node)}
    seen = node.cfg.state_dir / "seen"
    with contextlib.suppress(OSError):
        found.update(name for name in os.listdir(seen) if valid_id(name))
    for lane in node.spool.lanes_out(node.cfg) + node.spool.lanes_in(node.cfg):
        found |= _lane_ids(lane)
    return found


def resolve(text: str, candidates: Iterable[str] | None = None, *, node: Node | None = None) -> str:
    """The one id `text` names: itself when it is a whole id, else the one candidate it
    starts (candidates: `known_ids(node)` unless given)."""
    wanted = text.strip().lower()
    if valid_id(wanted):
        return wanted
    if not wanted or not set(wanted) <= HEX or len(wanted) > 36:
        raise UsageError(f"not a task id or id prefix: {text[:60]!r}")
    if candidates is None:
        if node is None:
            raise TypeError("resolve() needs candidates or a node")
        candidates = known_ids(node)
    matches = sorted({c for c in candidates if c.startswith(wanted)})
    if not matches:
        raise NotFound(f"no task id starts with {wanted!r}")
    if len(matches) > 1:
        shown = ", ".join(m[:13] for m in matches[:SHOWN])
        more = f" and {len(matches) - SHOWN} more" if len(matches) > SHOWN else ""
        raise UsageError(
            f"prefix {wanted!r} matches {len(matches)} tasks ({shown}{more}); type more of the id"
        )
    return matches[0]
