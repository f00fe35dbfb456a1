"""What `dispatch status` and the heartbeat report: lanes, executions, killswitch, peers."""

from __future__ import annotations

import contextlib
import os
import stat
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from dispatch import __version__
from dispatch.core import broken_config, events
from dispatch.core.config import LauncherKind
from dispatch.core.errors import ConfigError, DispatchError, Rejection
from dispatch.core.fsio import atomic_write, dump_json, read_regular
from dispatch.core.node import Node
from dispatch.core.spool import REASON_SUFFIX, RESULT_SUFFIX, Lane
from dispatch.core.wire import loads_strict, now_utc, parse_time, rfc3339
from dispatch.receive.launch.systemd import active_since_us, exec_units, memory_bytes

STALE_FACTOR = 3  # a heartbeat older than this many timer periods (min 60 s) is stale


def _names(directory: os.PathLike[str]) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError:
        return []


def lane_counts(node: Node, lane: Lane, incoming: bool) -> dict[str, Any]:
    processing = lane.task_ids(lane.processing)
    if incoming:
        running = [t for t in processing if node.state.started(t) is not None]
    else:
        # A sender sees what the share shows: an execution opens done/<id>.log as it
        # starts (Lane.stage_of), so both ends count the same task as running.
        running = [t for t in processing if os.path.lexists(lane.log_path(t))]
    return {
        "lane": lane.name,
        "direction": "in" if incoming else "out",
        "inbox": sum(1 for n in _names(lane.inbox) if not lane.in_progress(n)),
        "pending_ack": len(lane.task_ids(lane.pending_ack)),
        "queued": len(processing) - len(running),
        "running": len(running),
        "done": sum(1 for n in _names(lane.done) if n.endswith(RESULT_SUFFIX)),
        "rejected": sum(1 for n in _names(lane.rejected) if n.endswith(REASON_SUFFIX)),
    }


def heartbeat_stale_after(node: Node) -> float:
    return max(60.0, STALE_FACTOR * node.cfg.poll_sec)


def key_problem(node: Node, peer: str) -> str:
    """Why tasks from `peer` are refused for its key ("" when none): no pin, or a
    published key that differs from the pin (reported, never adopted)."""
    from dispatch.core.keys import published_mismatch

    try:
        if not node.keys.pins.keys_of(peer):
            return f"no key pinned: dispatch peers add {peer} KEYFILE"
        return published_mismatch(node.keys.pins, node.cfg.root, peer)
    except DispatchError as exc:
        return str(exc)


def peers(node: Node) -> list[dict[str, Any]]:
    out = []
    now = time.time()
    for peer in node.cfg.peers:
        entry: dict[str, Any] = {
            "node": peer,
            "heartbeat_age_s": None,
            "stale": True,
            "key_problem": key_problem(node, peer),
            "config_problem": "",
        }
        try:
            # read_regular: a FIFO planted on the share must not block `status`.
            beat = loads_strict(read_regular(node.spool.heartbeat_path(peer)))
            age = round(now - float(beat["unix"]), 1)
            entry.update(
                heartbeat_age_s=age,
                stale=age > heartbeat_stale_after(node),
                version=beat.get("version"),
                killswitch=beat.get("killswitch"),
                # The peer's own claim, shown and never acted on.
                config_problem=broken_config.claimed(beat),
            )
        except (OSError, ValueError, KeyError, TypeError, Rejection):
            pass
        out.append(entry)
    return out


def executions(node: Node) -> list[dict[str, Any]]:
    """This node's running executions: {id, lane, unit, state, started_at, elapsed_s,
    memory_bytes}. Under systemd each busy `dispatch-exec@` unit, read with one `systemctl
    show` (memory from the unit's cgroup); otherwise every started task still in
    processing/, its elapsed time from the started marker and no memory figure."""
    started: dict[str, tuple[str, dict[str, Any]]] = {}
    for lane in node.spool.lanes_in(node.cfg):
        for task_id in lane.task_ids(lane.processing):
            marker = node.state.started(task_id)
            if marker is not None:
                started[task_id] = (lane.name, marker)
    units: dict[str, dict[str, str]] = {}
    if node.cfg.launcher is LauncherKind.SYSTEMD:
        try:
            units = exec_units()
        except DispatchError:
            units = {}  # no systemctl answer: the markers still say what runs
    jobs = _slurm_jobs(node, started)
    now, mono_us = time.time(), time.monotonic() * 1e6
    out = []
    for task_id in sorted(set(started) | set(units)):
        lane_name, marker = started.get(task_id, ("", {}))
        props = units.get(task_id)
        lane_name = lane_name or _lane_of(node, task_id)
        if not lane_name:
            continue  # a unit of another node's config on this host (tests run two)
        elapsed: float | None = None
        memory: int | None = None
        if props is not None:
            since = active_since_us(props)
            elapsed = None if since is None else max(0.0, (mono_us - since) / 1e6)
            memory = memory_bytes(props)
        started_at = marker.get("started_at")
        started_at = started_at if isinstance(started_at, str) else None
        if elapsed is None and started_at is not None:
            with contextlib.suppress(ValueError):
                elapsed = max(0.0, now - parse_time(started_at).timestamp())
        if started_at is None and elapsed is not None:
            started_at = rfc3339(now_utc() - timedelta(seconds=elapsed))
        unit = props.get("Id", "") if props else str(marker.get("unit") or "")
        out.append(
            {
                "id": task_id,
                "lane": lane_name,
                "unit": unit or None,
                "state": f"{props.get('ActiveState')} ({props.get('SubState')})"
                if props
                else "running",
                "started_at": started_at,
                "elapsed_s": None if elapsed is None else round(elapsed, 1),
                "memory_bytes": memory,
                **jobs.get(task_id, {}),
            }
        )
    return out


def _slurm_jobs(node: Node, started: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """A Slurm gateway's executions: each one's job id, state and node, from one squeue
    (a job that already left squeue is asked for by id)."""
    if node.cfg.launcher is not LauncherKind.SLURM:
        return {}
    from dispatch.receive.launch import slurm

    try:
        listed = {job.job_id: job for job in slurm.node_jobs(node.cfg)}
    except DispatchError:
        listed = {}
    out: dict[str, Any] = {}
    for task_id, (_lane, marker) in started.items():
        job_id = str(marker.get("slurm_job") or "")
        job = listed.get(job_id)
        if job is None and job_id:
            with contextlib.suppress(DispatchError):
                job = slurm.show_job(job_id)
        out[task_id] = {
            "slurm_job": job_id or None,
            "slurm_state": job.state if job else ("submitting" if not job_id else "unknown"),
            "slurm_node": (job.node or None) if job else None,
        }
    return out


def _lane_of(node: Node, task_id: str) -> str:
    for lane in node.spool.lanes_in(node.cfg):
        if os.path.lexists(lane.processing / lane.task_name(task_id)) or os.path.lexists(
            lane.result_path(task_id)
        ):
            return lane.name
    return ""


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
        "executions": executions(node),
        "peers": peers(node),
        "faults": faults(node),
        "root_problem": root_problem(node),
    }


def root_problem(node: Node) -> str | None:
    """Why the shared root cannot be used from here, or None: a share that is not mounted
    (an empty mount point, or no such directory) or does not answer would otherwise show as
    a node with nothing to do."""
    root = node.cfg.root
    try:
        if not stat.S_ISDIR(os.stat(root).st_mode):
            return f"{root} is not a directory"
    except OSError as exc:
        return f"{root}: {exc.strerror or exc} (is the share mounted?)"
    for lane in node.spool.lanes_in(node.cfg) + node.spool.lanes_out(node.cfg):
        try:
            if not stat.S_ISDIR(os.lstat(lane.path).st_mode):
                return f"lane {lane.path} is not a directory"
        except OSError as exc:
            return (
                f"lane {lane.path}: {exc.strerror or exc} (is the share mounted? "
                "`dispatch init` creates the lanes)"
            )
    return None


def faults(node: Node) -> list[dict[str, Any]]:
    """What the passes keep refusing or failing at (a lane, an entry), until it clears."""
    try:
        found = node.state.faults.all()
    except (DispatchError, OSError):
        return []  # a user who cannot read the service's state
    return [
        {
            "key": fault.key,
            "reason": fault.reason,
            "message": fault.message,
            "since": rfc3339(datetime.fromtimestamp(fault.since, UTC)),
            "count": fault.count,
        }
        for fault in found
    ]


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
        "kid": node.keys.own_kid(),
    }
    node.state.record_identity(beat["version"], beat["kid"])
    broken_config.clear(node.state.path)
    path = node.spool.heartbeat_path(node.name)
    if not path.parent.is_dir():
        raise ConfigError(
            f"{path.parent} does not exist: is the share mounted? (`dispatch init` creates it)"
        )
    atomic_write(path, dump_json(beat))
    # Entries older than the freshness window guard nothing (such envelopes are stale).
    node.state.prune(node.cfg.max_age_s + node.cfg.clock_skew_s + 86400)
    from dispatch.ops import clean, metrics

    try:
        clean.retain(node)
    except OSError as exc:  # the share's trouble, reported by the rest; the beat stands
        node.emit("clean_failed", f"retention: {exc}", level=events.WARNING)
    from dispatch.receive import notify

    metrics.write(node, beat, lanes)
    if notify.queued(node):
        # A safety net: deliveries a deliverer never got to (it could not start, or an
        # item came in as it ended) get another one every heartbeat.
        notify.kick(node)
    return beat
