"""A node whose config does not load still tells its peers so, in its heartbeat.

Without this a receiver whose config broke (a typo, then `daemon-reload`) takes no task and
its peers see only a heartbeat going stale. `dispatch promote` and `dispatch heartbeat`,
failing on the config, record the reason in the node-local state (`config.problem`, which
dispatch-sensor also reads for the heartbeats it writes), and the heartbeat command writes a
heartbeat that carries it (`config_problem`). Root, node and state directory come from a
lenient read of the environment and the config file: the strict load is what failed.

What a peer reads there is the node's claim about itself: shown by `status` and `doctor`,
never acted upon."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dispatch import __version__
from dispatch.core import config as config_mod
from dispatch.core.fsio import atomic_write, dump_json
from dispatch.core.knobs import valid_node
from dispatch.core.wire import now_utc, rfc3339

PROBLEM_FILE = "config.problem"  # in the state directory; receive/sensor.py reads it too
MAX_PROBLEM_CHARS = 400
DEFAULT_STATE_DIR = "/var/lib/dispatch"


def one_line(text: str, limit: int = MAX_PROBLEM_CHARS) -> str:
    """Printable, one line, bounded: for what we write and for what a peer claims."""
    flat = " ".join(re.sub(r"[^\x20-\x7e]", " ", text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def lenient_values(env: Mapping[str, str]) -> dict[str, str]:
    """The config file's KEY=VALUE lines that parse (the environment wins, as in load)."""
    values: dict[str, str] = {}
    path = Path(env.get("DISPATCH_CONFIG") or config_mod.DEFAULT_CONFIG)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.startswith("DISPATCH_"):
            values[key.strip()] = value.strip().strip("'\"")
    values.update({k: v for k, v in env.items() if k.startswith("DISPATCH_")})
    return values


def record(problem: str, env: Mapping[str, str] | None = None) -> Path | None:
    """Say, wherever it can, that this node's config is broken; the heartbeat it wrote
    (None when root or node cannot be made out, or the share is not there). Never raises:
    the config error itself is what the caller reports."""
    values = lenient_values(os.environ if env is None else env)
    reason = one_line(problem)
    state_dir = Path(values.get("DISPATCH_STATE_DIR") or DEFAULT_STATE_DIR)
    try:
        if state_dir.is_absolute() and state_dir.is_dir():
            atomic_write(state_dir / PROBLEM_FILE, (reason + "\n").encode(), mode=0o600)
    except OSError:
        pass  # a read-only sandbox (a user's own `dispatch heartbeat`): the share still can
    root, node = Path(values.get("DISPATCH_ROOT", "")), values.get("DISPATCH_NODE", "")
    if not (root.is_absolute() and valid_node(node) and (root / "heartbeats").is_dir()):
        return None
    beat: dict[str, Any] = {
        "node": node,
        "ts": rfc3339(now_utc()),
        "unix": time.time(),
        "version": __version__,
        "config_problem": reason,
    }
    kid = _recorded_kid(state_dir)
    if kid:
        beat["kid"] = kid
    path = root / "heartbeats" / f"{node}.json"
    try:
        atomic_write(path, dump_json(beat))
    except OSError:
        return None
    return path


def clear(state_dir: Path) -> None:
    """The config loads again: the heartbeats stop saying otherwise."""
    try:  # noqa: SIM105 - one unlink per pass; contextlib is not imported on the hop
        os.unlink(state_dir / PROBLEM_FILE)
    except OSError:
        pass


def _recorded_kid(state_dir: Path) -> str:
    try:
        text = (state_dir / "heartbeat.identity").read_text(encoding="utf-8")
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key == "kid":
            return value
    return ""


def claimed(beat: Mapping[str, Any]) -> str:
    """What a peer's heartbeat says is wrong with its config ("" for none, and for an old
    heartbeat that has no such field): display only."""
    value = beat.get("config_problem")
    return one_line(value) if isinstance(value, str) and value.strip() else ""
