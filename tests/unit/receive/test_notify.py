"""Webhook notifications against a real HTTP server on 127.0.0.1: Discord's webhook JSON for
tasks whose callback is `discord` (waiting for an ack, ended), a generic JSON webhook for
every task, retries with backoff, giving up, and never delaying or failing the task."""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from dispatch.core.model import Callback
from dispatch.receive import notify
from dispatch.send import task as sender
from tests.conftest import Pair
from tests.unit.helpers import (
    cli,
    configure,
    drain,
    lane_in,
    promote_once,
    result_json,
    wait_for,
)


@dataclass
class Hook:
    """A webhook receiver: records every attempt; fails the first `fail_first` with 500;
    holds each answer while `hold` is set."""

    fail_first: int = 0
    attempts: list[tuple[str, float]] = field(default_factory=list)
    bodies: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    hold: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length", "0"))
        raw = request.rfile.read(length)
        with self.lock:
            self.attempts.append((request.path, time.monotonic()))
            failing = len(self.attempts) <= self.fail_first
        if self.hold.is_set():
            self.release.wait(30)
        if failing:
            request.send_response(500)
            request.end_headers()
            return
        with self.lock:
            self.bodies.append((request.path, json.loads(raw)))
            self.headers.append(dict(request.headers))
        request.send_response(204)  # what Discord answers
        request.end_headers()

    def on(self, path: str) -> list[dict[str, Any]]:
        with self.lock:
            return [body for where, body in self.bodies if where == path]


@pytest.fixture
def hook() -> Iterator[Hook]:
    state = Hook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            state.handle(self)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.release.set()
        server.shutdown()
        server.server_close()


def send(pair: Pair, request: str, **kwargs: Any) -> str:
    tx = pair.sender.node()
    return sender.deliver(tx, sender.build(tx, to="gpubox", request=request, **kwargs)).envelope.id


def test_discord_and_json_webhooks_for_pending_ack_and_end(pair: Pair, hook: Hook) -> None:
    configure(
        pair.receiver,
        DISPATCH_DISCORD_WEBHOOK=f"{hook.url}/discord",
        DISPATCH_WEBHOOK_URL=f"{hook.url}/json",
    )
    task_id = send(pair, "deploy the docs", require_ack=True, callback=Callback.DISCORD)
    promote_once(pair.receiver.node())  # pending-ack: queues both, starts a deliverer
    wait_for(lambda: len(hook.bodies) == 2, timeout=20, what="the pending-ack posts")
    [discord] = hook.on("/discord")
    assert set(discord) == {"username", "content", "allowed_mentions"}
    assert discord["username"] == "dispatch"
    assert discord["allowed_mentions"] == {"parse": []}  # no @everyone from a request text
    assert discord["content"] == (
        f"dispatch: task `{task_id}` from devbox waits for an ack on gpubox: "
        f"`dispatch ack {task_id[:8]}`\n> deploy the docs"
    )
    [pending] = hook.on("/json")
    assert set(pending) == {
        "event",
        "task_id",
        "from",
        "to",
        "node",
        "at",
        "request",
        "status",
        "reason",
        "final_text",
    }
    assert (
        pending["event"],
        pending["task_id"],
        pending["from"],
        pending["to"],
        pending["node"],
        pending["request"],
        pending["status"],
    ) == ("task_pending_ack", task_id, "devbox", "gpubox", "gpubox", "deploy the docs", "")
    assert all(h["Content-Type"] == "application/json" for h in hook.headers)

    assert cli(pair.receiver, "ack", task_id).returncode == 0
    drain(pair.receiver.node())
    wait_for(lambda: len(hook.bodies) == 4, timeout=20, what="the end posts")
    ended = hook.on("/discord")[1]["content"]
    assert ended.startswith(f"dispatch: task `{task_id}` (devbox → gpubox) ended **ok**\n")
    assert "fake agent (acceptEdits) did: deploy the docs" in ended
    end = hook.on("/json")[1]
    assert (end["event"], end["status"], end["reason"]) == ("task_ended", "ok", "")
    assert end["final_text"] == result_json(lane_in(pair), task_id)["final_text"]

    # callback=file: no Discord post, the JSON webhook still hears of every task.
    other = send(pair, "a quiet one")
    drain(pair.receiver.node())
    wait_for(lambda: len(hook.bodies) == 5, timeout=20, what="the JSON post")
    assert hook.on("/json")[2]["task_id"] == other
    assert len(hook.on("/discord")) == 2


def test_discord_content_is_cut_to_discords_limit(pair: Pair) -> None:
    node = pair.receiver.node()
    payload = notify.task_payload(
        node,
        "task_ended",
        task_id="0" * 36,
        from_="devbox",
        to="gpubox",
        status="error",
        reason="x" * 3000,
        final_text="y" * 4000,
    )
    body = notify._discord_body(payload)
    assert len(body["content"]) == notify.DISCORD_LIMIT


def _enqueue_only(pair: Pair, monkeypatch: pytest.MonkeyPatch, url: str) -> Any:
    """A node whose JSON webhook is `url`, with the deliverer not started on its own: the test
    runs `drain` itself and times it."""
    configure(pair.receiver, DISPATCH_WEBHOOK_URL=url)
    monkeypatch.setattr(notify, "kick", lambda node: None)
    node = pair.receiver.node()
    payload = notify.task_payload(
        node,
        "task_ended",
        task_id="6b856e1c-73be-459f-bb14-8ab0d77a4486",
        from_="devbox",
        to="gpubox",
        status="ok",
    )
    assert notify.enqueue(node, payload, Callback.FILE) == 1
    return node


def test_retries_with_backoff_until_delivered(
    pair: Pair, hook: Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook.fail_first = 2
    node = _enqueue_only(pair, monkeypatch, f"{hook.url}/json")
    assert notify.drain(node, max_seconds=30) == 1
    times = [at for _, at in hook.attempts]
    assert len(times) == 3 and len(hook.bodies) == 1
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Exponential: 1 s after the first failure, 2 s after the second.
    assert 0.9 <= gaps[0] < 1.8 and 1.9 <= gaps[1] < 3.0, gaps
    assert notify.queued(node) == 0
    log = (pair.root / "logs" / "gpubox.jsonl").read_text()
    assert log.count('"event": "notify_retry"') == 2


def test_gives_up_after_max_attempts(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    # A dead webhook: nothing listens on this port.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(notify, "BACKOFF_CAP_S", 0.05)
    node = _enqueue_only(pair, monkeypatch, f"http://127.0.0.1:{port}/hook")
    began = time.monotonic()
    assert notify.drain(node, max_seconds=30) == 0
    assert time.monotonic() - began < 10
    assert notify.queued(node) == 0  # dropped, with a trace:
    events = [
        json.loads(line) for line in (pair.root / "logs" / "gpubox.jsonl").read_text().splitlines()
    ]
    retries = [e for e in events if e["event"] == "notify_retry"]
    failed = [e for e in events if e["event"] == "notify_failed"]
    assert len(retries) == notify.MAX_ATTEMPTS - 1
    assert (
        len(failed) == 1
        and f"gave up after {notify.MAX_ATTEMPTS} attempts" in (failed[0]["summary"])
    )


def test_give_up_counts_real_attempts(
    pair: Pair, hook: Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook.fail_first = 100
    monkeypatch.setattr(notify, "BACKOFF_CAP_S", 0.05)
    node = _enqueue_only(pair, monkeypatch, f"{hook.url}/json")
    assert notify.drain(node, max_seconds=30) == 0
    assert len(hook.attempts) == notify.MAX_ATTEMPTS and hook.bodies == []


def test_a_hanging_webhook_never_delays_or_fails_the_task(pair: Pair, hook: Hook) -> None:
    hook.hold.set()  # every POST hangs until released (the client gives up after 5 s)
    configure(
        pair.receiver,
        DISPATCH_WEBHOOK_URL=f"{hook.url}/json",
        DISPATCH_DISCORD_WEBHOOK=f"{hook.url}/discord",
    )
    task_id = send(pair, "important work", callback=Callback.DISCORD)
    began = time.monotonic()
    drain(pair.receiver.node())
    took = time.monotonic() - began
    result = result_json(lane_in(pair), task_id)
    assert result["status"] == "ok"
    assert took < 4, took  # the POST hangs for 5 s or more: nobody waited for it
    wait_for(lambda: len(hook.attempts) >= 1, timeout=10, what="a delivery attempt")
    assert cli(pair.sender, "wait", task_id, "--timeout", "5").returncode == 0
    # Let the deliverer finish (and exit) before the test's directories go away.
    hook.hold.clear()
    hook.release.set()
    wait_for(lambda: len(hook.bodies) == 2, timeout=30, what="the deliveries")


def test_a_broken_notification_queue_does_not_fail_the_task(pair: Pair, hook: Hook) -> None:
    configure(pair.receiver, DISPATCH_WEBHOOK_URL=f"{hook.url}/json")
    queue = Path(pair.receiver.node().state.path) / "notify"
    queue.write_text("not a directory\n")  # the queue cannot be written at all
    task_id = send(pair, "still runs")
    drain(pair.receiver.node())
    lane = lane_in(pair)
    assert result_json(lane, task_id)["status"] == "ok"
    # Published on the share, not deferred as if the share had refused it.
    assert pair.receiver.node().state.deferred_results() == []
    assert not (lane.processing / f"{task_id}.json").exists()
    log = (pair.root / "logs" / "gpubox.jsonl").read_text()
    assert '"event": "notify_error"' in log
    assert '"event": "result_deferred"' not in log  # not mistaken for a share outage
