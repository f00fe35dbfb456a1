"""Notifications: Discord's webhook format for tasks whose callback is `discord`, and a
generic JSON webhook for every task. Queued in node-local state and delivered by a separate
process (`dispatch notify`, the dispatch-notify.service unit) with retries and backoff, so a
slow or dead webhook never delays or fails a task."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

from dispatch.core import events
from dispatch.core.config import LauncherKind
from dispatch.core.fsio import atomic_write, dump_json
from dispatch.core.model import Callback
from dispatch.core.node import Node
from dispatch.core.wire import now_utc, rfc3339

MAX_ATTEMPTS = 6
BACKOFF_CAP_S = 60.0
POST_TIMEOUT_S = 5.0
DISCORD_LIMIT = 2000  # characters in a Discord message's content


def queue_dir(node: Node) -> Path:
    return node.state.path / "notify"


def _discord_body(payload: dict[str, Any]) -> dict[str, Any]:
    if payload["event"] == "task_pending_ack":
        text = (
            f"dispatch: task `{payload['task_id']}` from {payload['from']} waits for an "
            f"ack on {payload['node']}: `dispatch ack {payload['task_id'][:8]}`\n"
            f"> {payload['request'][:500]}"
        )
    else:
        text = (
            f"dispatch: task `{payload['task_id']}` ({payload['from']} → {payload['to']}) "
            f"ended **{payload['status']}**"
            + (f" ({payload['reason']})" if payload.get("reason") else "")
            + (f"\n{payload['final_text'][:1500]}" if payload.get("final_text") else "")
        )
    return {
        "username": "dispatch",
        "content": text[:DISCORD_LIMIT],
        "allowed_mentions": {"parse": []},
    }


def enqueue(node: Node, payload: dict[str, Any], callback: Callback | None) -> int:
    """Queue the deliveries this event calls for; returns how many. Never raises: the task
    that caused the event (its result already written) must not fail because of it."""
    try:
        return _enqueue(node, payload, callback)
    except Exception as exc:
        node.emit(
            "notify_error",
            f"cannot queue the {payload.get('event')} notification: {exc}",
            task_id=payload.get("task_id"),
            level=events.WARNING,
        )
        return 0


def _enqueue(node: Node, payload: dict[str, Any], callback: Callback | None) -> int:
    cfg = node.cfg
    targets: list[tuple[str, str, dict[str, Any]]] = []
    if callback is Callback.DISCORD and cfg.discord_webhook:
        targets.append(("discord", cfg.discord_webhook, _discord_body(payload)))
    if cfg.webhook_url:
        targets.append(("json", cfg.webhook_url, payload))
    if not targets:
        return 0
    directory = queue_dir(node)
    directory.mkdir(mode=0o700, exist_ok=True)
    for kind, url, body in targets:
        name = f"{time.time_ns()}-{payload['task_id'][:8]}-{payload['event']}-{kind}.json"
        atomic_write(
            directory / name,
            dump_json({"url": url, "kind": kind, "body": body, "attempts": 0, "next_at": 0.0}),
            mode=0o600,
        )
    kick(node)
    return len(targets)


def task_payload(
    node: Node,
    event: str,
    *,
    task_id: str,
    from_: str,
    to: str,
    request: str = "",
    status: str = "",
    reason: str = "",
    final_text: str = "",
) -> dict[str, Any]:
    return {
        "event": event,
        "task_id": task_id,
        "from": from_,
        "to": to,
        "node": node.name,
        "at": rfc3339(now_utc()),
        "request": request[:2000],
        "status": status,
        "reason": reason,
        "final_text": final_text[:4000],
    }


def kick(node: Node) -> None:
    """Start a deliverer without waiting for it."""
    from dispatch.core.runner import dispatch_argv, spawn_detached, systemctl

    try:
        if node.cfg.launcher is LauncherKind.SYSTEMD:
            systemctl("start", "--no-block", "dispatch-notify.service", check=False)
        else:
            env = dict(os.environ, DISPATCH_CONFIG=str(node.cfg.config_path))
            spawn_detached(dispatch_argv("notify"), env=env)
    except Exception as exc:  # a notification must never fail the task that caused it
        node.emit("notify_error", f"cannot start the notifier: {exc}", level=events.WARNING)


def post(url: str, body: dict[str, Any]) -> str | None:
    """POST JSON; None on a 2xx answer, else what went wrong."""
    # Imported here, not at the top: every promote pass and execution imports this module
    # (to queue notifications), and urllib.request (http.client, email, ssl) costs them
    # ~20 ms of start-up each; only `dispatch notify` posts.
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode("utf-8")
    request = urllib.request.Request(
        url,
        data=data,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "dispatch-notify"},
    )
    try:
        with urllib.request.urlopen(request, timeout=POST_TIMEOUT_S) as answer:
            answer.read(4096)
            return None
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))[:200]


def queued(node: Node) -> int:
    """Deliveries waiting in the queue."""
    try:
        return sum(
            1 for n in os.listdir(queue_dir(node)) if n.endswith(".json") and not n.startswith(".")
        )
    except OSError:
        return 0


def drain(node: Node, max_seconds: float = 600.0) -> int:
    """Deliver what is queued, retrying with exponential backoff; return deliveries made.
    One deliverer at a time; a second one returns at once (the first sees new items too).
    An item queued while the first was letting go of the lock (the second saw it held) is
    found by the first's look after letting go."""
    deadline = time.monotonic() + max_seconds
    delivered = 0
    while True:
        done = _drain_locked(node, deadline)
        if done is None:
            return delivered
        delivered += done
        if not queued(node) or time.monotonic() >= deadline:
            return delivered


def _drain_locked(node: Node, deadline: float) -> int | None:
    """None when another deliverer holds the lock."""
    directory = queue_dir(node)
    directory.mkdir(mode=0o700, exist_ok=True)
    lock = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        delivered = 0
        while time.monotonic() < deadline:
            names = sorted(
                n for n in os.listdir(directory) if n.endswith(".json") and not n.startswith(".")
            )
            if not names:
                break
            next_due = float("inf")
            for name in names:
                path = directory / name
                try:
                    item = json.loads(path.read_text())
                except (OSError, ValueError):
                    with contextlib.suppress(OSError):
                        path.unlink()
                    continue
                if item["next_at"] > time.time():
                    next_due = min(next_due, item["next_at"])
                    continue
                error = post(item["url"], item["body"])
                if error is None:
                    path.unlink()
                    delivered += 1
                    continue
                item["attempts"] += 1
                if item["attempts"] >= MAX_ATTEMPTS:
                    path.unlink()
                    node.emit(
                        "notify_failed",
                        f"{item['kind']} webhook gave up after "
                        f"{item['attempts']} attempts: {error}",
                        level=events.ERR,
                    )
                    continue
                item["next_at"] = time.time() + min(2.0 ** (item["attempts"] - 1), BACKOFF_CAP_S)
                next_due = min(next_due, item["next_at"])
                node.emit(
                    "notify_retry",
                    f"{item['kind']} webhook: {error}; attempt "
                    f"{item['attempts']} of {MAX_ATTEMPTS}",
                    level=events.WARNING,
                )
                atomic_write(path, dump_json(item), mode=0o600)
            if next_due != float("inf"):
                time.sleep(max(0.0, min(next_due - time.time(), deadline - time.monotonic())))
        return delivered
    finally:
        os.close(lock)
