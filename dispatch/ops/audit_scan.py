"""What `dispatch audit` reads: every lane of a root, the nodes' ledgers and deferred
results, and agent execution logs. Nothing here writes anything."""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dispatch.core.errors import Rejection
from dispatch.core.fsio import read_regular
from dispatch.core.model import Stage
from dispatch.core.signing import NodeKeys, verify_result
from dispatch.core.spool import REASON_SUFFIX, RESULT_SUFFIX, TASK_SUFFIX, Lane
from dispatch.core.state import NodeState
from dispatch.core.wire import loads_strict, valid_id

if TYPE_CHECKING:
    from dispatch.ops.audit import AuditReport

# The stages a task file sits in before its result.
LIVE_STAGES = ("inbox", "pending-ack", "processing")


@dataclass
class LaneScan:
    name: str
    path: Path
    live: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    results: dict[str, str] = field(default_factory=dict)  # id -> status ("" unverified)
    refusals: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    junk: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))


def names(directory: Path) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []


def task_id_of(name: str, suffix: str = TASK_SUFFIX) -> str | None:
    if not name.endswith(suffix):
        return None
    task_id = name[: -len(suffix)]
    return task_id if valid_id(task_id) else None


def find_lanes(root: Path) -> list[tuple[str, Path]]:
    """Every `<from>-to-<to>` directory of the root that has the lane layout."""
    found = []
    for name in names(root):
        path = root / name
        if "-to-" in name and (path / "inbox").is_dir() and not os.path.islink(path):
            found.append((name, path))
    return found


def scan_lane(name: str, path: Path, ring: NodeKeys | None, report: AuditReport) -> LaneScan:
    lane = LaneScan(name, path)
    for stage in LIVE_STAGES:
        for entry in names(path / stage):
            if entry.startswith(".") or entry.endswith(".tmp") or entry.endswith(".ack"):
                continue
            task_id = task_id_of(entry)
            if task_id is None:
                lane.junk[stage].append(entry)
            else:
                lane.live[task_id].append(stage)
    for entry in names(path / "done"):
        task_id = task_id_of(entry, RESULT_SUFFIX)
        if task_id is None:
            continue
        lane.results[task_id] = ""
        if ring is None:
            continue
        try:
            obj = loads_strict(read_regular(path / "done" / entry), allow_nul=True)
            result = verify_result(ring, obj, _lane_named(path.parent, name, obj))
        except FileNotFoundError:
            del lane.results[task_id]
            continue
        except Rejection as exc:
            report.add(
                "unverified_result",
                task_id,
                name,
                f"done/{entry} does not verify ({exc.reason}: {exc})",
            )
            continue
        if result.id != task_id:
            report.add(
                "unverified_result",
                task_id,
                name,
                f"done/{entry} is the result of another task ({result.id})",
            )
            continue
        lane.results[task_id] = result.status.value
    rejected = path / "rejected"
    entries = names(rejected)
    present = set(entries)
    for entry in entries:
        if entry.endswith(REASON_SUFFIX) or entry.startswith("."):
            continue
        if f"{entry}{REASON_SUFFIX}" not in present:
            report.add("missing_reason", "", name, f"rejected/{entry} has no {REASON_SUFFIX}")
    for entry in entries:
        if not entry.endswith(REASON_SUFFIX) or entry.startswith("."):
            continue
        report.rejected += 1
        try:
            record = json.loads(read_regular(rejected / entry))
        except (Rejection, OSError, ValueError):
            report.add(
                "missing_reason", "", name, f"rejected/{entry} is not a readable reason record"
            )
            continue
        original = str(record.get("name", "")) if isinstance(record, dict) else ""
        from_dir = str(record.get("from_dir", "")) if isinstance(record, dict) else ""
        task_id = task_id_of(original)
        if task_id is not None and from_dir in (*LIVE_STAGES, "tmp"):
            lane.refusals[task_id].append(str(record.get("reason", "")))
    return lane


def read_agent_logs(paths: list[Path], report: AuditReport) -> Counter[str]:
    runs: Counter[str] = Counter()
    for path in paths:
        try:
            text = path.read_text("utf-8", "replace")
        except OSError as exc:
            report.add("agent_log_unreadable", "", "", f"{path}: {exc.strerror or exc}")
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                task_id = record["task_id"]
            except (ValueError, KeyError, TypeError):
                report.add("agent_log_unreadable", "", "", f"{path}:{lineno}: not a run record")
                continue
            if isinstance(task_id, str) and task_id:
                runs[task_id] += 1
    return runs


@dataclass(frozen=True)
class LedgerSeen:
    stage: Stage | None  # None: the entry is torn
    lane: str


def read_state(state_dirs: list[Path]) -> tuple[dict[str, list[LedgerSeen]], dict[str, str]]:
    """Ledger entries (id -> one per node that saw it) and deferred results (id -> lane)."""
    ledger: dict[str, list[LedgerSeen]] = defaultdict(list)
    deferred: dict[str, str] = {}
    for directory in state_dirs:
        state = NodeState(directory)
        for name in names(directory / "seen"):
            if not valid_id(name):
                continue
            try:
                data = json.loads((directory / "seen" / name).read_bytes())
                ledger[name].append(
                    LedgerSeen(
                        Stage.of_record(data.get("stage", data.get("phase"))),
                        str(data.get("lane", "")),
                    )
                )
            except (OSError, ValueError, KeyError, TypeError):
                ledger[name].append(LedgerSeen(None, ""))
        for task_id, lane, _result, _log in state.deferred_results():
            deferred[task_id] = lane
    return ledger, deferred


def _lane_named(root: Path, name: str, obj: dict[str, Any]) -> Lane:
    """The lane a directory name denotes (node names may hold `-to-`: the result's own
    claim is taken when it spells exactly this name)."""
    claimed = (str(obj.get("from")), str(obj.get("to")))
    if f"{claimed[0]}-to-{claimed[1]}" == name:
        return Lane(root, *claimed)
    from_, _, to = name.partition("-to-")
    return Lane(root, from_, to)


def pins_from_dir(root: Path, peers_dir: Path) -> NodeKeys | None:
    """The public keys pinned in a directory, to verify results with; None when it pins
    none (each result verifies against the key of its lane's receiver)."""
    from dispatch.core.config import Config
    from dispatch.core.keys import Pins

    if not Pins(peers_dir).nodes():
        return None
    return NodeKeys(Config(root=root, node="", peers=(), peer_keys_dir=peers_dir))
