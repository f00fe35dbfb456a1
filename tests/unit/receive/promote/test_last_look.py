"""A sensor node's pass ends with a settled look it leaves for the sensor, taken only once
one more pass moved nothing that look shows."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from dispatch.receive import looks
from dispatch.receive.launch.process import ProcessLauncher
from dispatch.receive.promote.last_look import end_with_settled_look
from dispatch.receive.promote.report import PassReport
from dispatch.send import task as sender
from tests.conftest import Pair


def _paths(pair: Pair) -> list[str]:
    rx = pair.receiver.node()
    fast, slow = looks.watched_paths(str(rx.cfg.root), rx.name, rx.cfg.peers)
    return fast + slow


def test_the_look_left_is_what_a_stat_shows_after_the_last_pass(pair: Pair, tmp_path: Path) -> None:
    tx, rx = pair.sender.node(), pair.receiver.node()
    sent = sender.deliver(tx, sender.build(tx, to="gpubox", request="arrives before the end"))
    looked = tmp_path / "looked"
    # The pass that ran before this task landed saw nothing: the ending's pass admits it.
    report = end_with_settled_look(rx, ProcessLauncher(rx), PassReport(), str(looked))
    assert sent.envelope.id in report.running | set(report.started)
    assert not os.listdir(rx.spool.lane("devbox", "gpubox").inbox)
    left = looks.LookedFile(str(looked)).fresh()
    assert left == {p: looks.signature(p) for p in _paths(pair)}


def test_what_lands_while_a_coarse_look_settles_is_admitted_by_the_same_process(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tx, rx = pair.sender.node(), pair.receiver.node()
    inbox = rx.spool.lane("devbox", "gpubox").inbox
    os.utime(inbox, ns=(7_000_000_000, 7_000_000_000))  # whole seconds, as over sshfs
    ids: list[str] = []
    real_sleep = time.sleep

    def sleep(s: float) -> None:
        real_sleep(s)
        if not ids:  # a task lands while the look settles
            ids.append(sender.deliver(tx, sender.build(tx, to="gpubox", request="mid")).envelope.id)
            os.utime(inbox, ns=(8_000_000_000, 8_000_000_000))

    monkeypatch.setattr(time, "sleep", sleep)
    report = end_with_settled_look(rx, ProcessLauncher(rx), PassReport(), str(tmp_path / "looked"))
    assert ids and ids[0] in report.running | set(report.started)
    assert not os.listdir(inbox)
    assert (tmp_path / "looked").exists()
