"""The signer's client when the signer is not there to answer: a socket nobody serves
(systemctl stop leaves it), a signer that accepts and never answers. Each is one
`SigningFailed` line that says what to look at, and nothing is signed in-process instead."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dispatch.core.config import Config
from dispatch.core.errors import ExitCode, SigningFailed
from dispatch.core.signing import NodeKeys
from dispatch.signer import client
from dispatch.signer.client import SocketSigner
from tests.conftest import Pair
from tests.unit.helpers import cli, drop, envelope, lane_in, promote_once

RESULT = {"schema": 4, "kind": "result", "to": "devbox", "answered_by": "devbox"}


def dead_socket(path: Path) -> Path:
    """A socket file nobody listens on: what a stopped dispatch-signer.socket leaves."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
    return path


@pytest.fixture
def hung(tmp_path: Path) -> Iterator[tuple[Path, list[socket.socket]]]:
    """A signer that takes every connection and never answers."""
    path = tmp_path / "hung.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    taken: list[socket.socket] = []
    stop = threading.Event()

    def take() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                taken.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    yield path, taken
    stop.set()
    thread.join(5)
    for conn in taken:
        conn.close()
    listener.close()


def test_with_a_socket_every_caller_signs_through_it_and_a_dead_one_signs_nothing(
    tmp_path: Path,
) -> None:
    """Root included, and even where the key is readable: no in-process fallback."""
    from dispatch.core.keys import write_private

    write_private(tmp_path / "keys", "devbox")
    cfg = Config(
        root=tmp_path / "share",
        node="devbox",
        peers=("gpubox",),
        key_dir=tmp_path / "keys",
        signer_socket=dead_socket(tmp_path / "signer.sock"),
    )
    signer = NodeKeys(cfg).signer
    assert isinstance(signer, SocketSigner)
    with pytest.raises(SigningFailed) as failed:
        signer.sign({"schema": 4, "kind": "task", "from": "devbox"})
    line = str(failed.value)
    assert "\n" not in line and "did not sign" in line
    assert "systemctl status dispatch-signer.socket dispatch-signer.service" in line
    assert failed.value.exit_code is ExitCode.SIGNER
    # Without any socket: in-process, as `dispatch watch` and `dispatch demo` sign.
    (tmp_path / "signer.sock").unlink()
    assert not isinstance(NodeKeys(cfg).signer, SocketSigner)


def test_a_hung_signer_fails_within_the_timeout_and_is_not_asked_again_at_once(
    hung: tuple[Path, list[socket.socket]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, taken = hung
    monkeypatch.setattr(client, "TIMEOUT_S", 0.3)
    signer = SocketSigner(path, "devbox")
    with pytest.raises(SigningFailed, match=r"no answer within 0\.3 s"):
        signer.sign(RESULT)
    # A pass with many verdicts does not wait a timeout for each: the next ask fails at
    # once, without a connection.
    with pytest.raises(SigningFailed, match=r"no answer within 0\.3 s"):
        signer.sign(RESULT)
    assert len(taken) == 1
    signer.outage.until = 0.0  # the retry period (RETRY_AFTER_S) is over
    with pytest.raises(SigningFailed):
        signer.sign(RESULT)
    assert len(taken) == 2


def test_a_signer_of_another_node_is_not_used(tmp_path: Path) -> None:
    path = tmp_path / "other.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def answer() -> None:
        from dispatch.signer.protocol import recv_frame, send_frame

        conn = listener.accept()[0]
        with conn:
            recv_frame(conn)
            send_frame(conn, {"ok": True, "node": "gpubox", "kid": "k"})

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    with pytest.raises(SigningFailed, match="signs for node 'gpubox', not devbox"):
        _ = SocketSigner(path, "devbox").kid
    thread.join(5)
    listener.close()


def test_send_cancel_and_ack_with_a_stopped_signer_write_nothing_and_say_what_to_run(
    pair: Pair,
) -> None:
    lane = lane_in(pair)
    stopped = str(dead_socket(pair.root.parent / "stopped.sock"))
    sent = cli(pair.sender, "send", "--to", "gpubox", "--request", "x", "--json")
    task_id = json.loads(sent.stdout)["id"]
    before = {d: sorted(os.listdir(lane.path / d)) for d in ("tmp", "inbox", "cancel")}
    sent_log = pair.sender.node().sent.dirs[0]
    assert sorted(os.listdir(sent_log)) == [task_id]
    for args in (("send", "--to", "gpubox", "--request", "y"), ("cancel", task_id)):
        proc = cli(pair.sender, *args, DISPATCH_SIGNER_SOCKET=stopped)
        assert proc.returncode == ExitCode.SIGNER, proc
        assert proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr
        assert "systemctl status dispatch-signer.socket" in proc.stderr
    assert {d: sorted(os.listdir(lane.path / d)) for d in before} == before
    assert sorted(os.listdir(sent_log)) == [task_id]  # nothing recorded as sent
    # The receiver's `dispatch ack`: no ack file, the task still waits for one.
    held = envelope(pair, require_ack=True)
    drop(lane, held)
    promote_once(pair.receiver.node())
    proc = cli(pair.receiver, "ack", held["id"], DISPATCH_SIGNER_SOCKET=stopped)
    assert proc.returncode == ExitCode.SIGNER and proc.stderr.count("\n") == 1, proc
    assert sorted(os.listdir(lane.pending_ack)) == [f"{held['id']}.json"]
