"""Junk is cheap and bounded: what the receiver refused without a signed answer (it never
authenticated, or it is a replay or a misplaced copy) is kept in rejected/ with its reason
as evidence, but only the newest JUNK_KEEP entries of a lane, none older than
JUNK_MAX_AGE_S. Which entries are junk, and in what order they came, is recorded in
node-local state (a file per entry), so trimming costs no read of the share; the count of
entries dropped is kept for `dispatch_junk_dropped_total`."""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

from dispatch.core import events
from dispatch.core.fsio import atomic_write
from dispatch.core.node import Node
from dispatch.core.spool import REASON_SUFFIX, Lane

JUNK_KEEP = 5000
JUNK_MAX_AGE_S = 7 * 86400
COUNTER = "junk-dropped.json"


def _notes(node: Node, lane: Lane) -> Path:
    return node.state.path / "junk" / lane.name


def note(node: Node, lane: Lane, kept: Path) -> None:
    """Record one junk entry kept in rejected/ (its name there), in arrival order."""
    directory = _notes(node, lane)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    (directory / f"{time.time_ns():020d}").write_text(kept.name, "utf-8", "surrogateescape")


def trim(node: Node, lane: Lane) -> int:
    """Drop the oldest junk of the lane past the cap, and any past its age; the count."""
    directory = _notes(node, lane)
    try:
        notes = sorted(os.listdir(directory))
    except FileNotFoundError:
        return 0
    cutoff = time.time_ns() - int(JUNK_MAX_AGE_S * 1e9)
    excess = len(notes) - JUNK_KEEP
    dropped = 0
    for index, stamp in enumerate(notes):
        if index >= excess and (not stamp.isdigit() or int(stamp) >= cutoff):
            break
        try:
            name = (directory / stamp).read_text("utf-8", "surrogateescape")
        except OSError:
            name = ""
        if name and "/" not in name and name not in (".", ".."):
            for victim in (name, name + REASON_SUFFIX):
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    os.unlink(lane.rejected / victim)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(directory / stamp)
        dropped += 1
    if dropped:
        _count(node, lane, dropped)
        node.emit(
            "junk_trimmed",
            f"{lane.name}/rejected/: dropped the {dropped} oldest junk entries "
            f"(kept at most {JUNK_KEEP}, none older than {JUNK_MAX_AGE_S // 86400} days)",
            from_=lane.from_,
            to=lane.to,
            level=events.NOTICE,
        )
    return dropped


def _count(node: Node, lane: Lane, dropped: int) -> None:
    counts = dropped_counts(node.state.path)
    counts[lane.name] = counts.get(lane.name, 0) + dropped
    atomic_write(node.state.path / COUNTER, json.dumps(counts).encode(), mode=0o600)


def dropped_counts(state_dir: Path) -> dict[str, int]:
    """Junk entries dropped so far, per lane (a counter: it only grows)."""
    try:
        data = json.loads((state_dir / COUNTER).read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): v for k, v in data.items() if isinstance(v, int)}
