"""dispatch-sensor: when it kicks (change detection, the settle kick for whole-second mtimes,
kicks a pass did not take), what it stats, and that its heartbeat is `dispatch heartbeat`'s."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dispatch.core.spool import set_killswitch
from dispatch.core.wire import rfc3339
from dispatch.ops import overview
from dispatch.receive import sensor
from dispatch.receive.sensor import (
    ABSENT,
    REKICK_FIRST_S,
    REKICK_MAX_S,
    SETTLE_KICK_S,
    ChangeDetector,
    Settings,
    Signature,
    signature,
)
from dispatch.send import task as sender
from tests.conftest import Pair
from tests.unit.helpers import drain

A: list[Signature] = [(1, 1, 1, 1, 1)]
B: list[Signature] = [(2, 2, 1, 1, 1)]


def test_the_first_sample_kicks_then_nothing_while_nothing_changes() -> None:
    d = ChangeDetector()
    assert d.step(A, 0.0, consumed=False)  # what arrived while no sensor ran
    assert d.step(A, 0.25, consumed=True) is False
    assert d.step(A, 0.5, consumed=True) is False
    # The settle kick is due, then quiet for good.
    assert d.step(A, SETTLE_KICK_S, consumed=True)
    assert not any(d.step(A, SETTLE_KICK_S + 0.25 * i, consumed=True) for i in range(1, 400))


def test_a_change_kicks_at_once_and_again_once_its_second_is_over() -> None:
    d = ChangeDetector()
    d.step(A, 0.0, consumed=True)
    d.step(A, 2.0, consumed=True)  # settle kick of the first sample
    assert d.step(B, 10.0, consumed=True)
    assert d.step(B, 10.25, consumed=True) is False
    # A second file in the same mtime second leaves the stat unchanged: the settle kick,
    # after that second is surely over, is what makes a pass see it.
    assert d.step(B, 10.0 + SETTLE_KICK_S, consumed=True)
    assert d.step(B, 13.0, consumed=True) is False


def test_a_kick_no_pass_took_is_repeated_less_and_less_often() -> None:
    d = ChangeDetector()
    d.step(A, 0.0, consumed=False)
    d.step(A, SETTLE_KICK_S, consumed=False)
    kicks_at = [t / 100 for t in range(200, 20000, 5) if d.step(A, t / 100, consumed=False)]
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(kicks_at)]
    assert gaps[0] >= REKICK_FIRST_S
    assert gaps == sorted(gaps), gaps  # backing off
    assert max(gaps) <= REKICK_MAX_S + 0.05
    assert gaps[-1] >= REKICK_MAX_S - 0.05
    # Once a pass removed the kick file, no more.
    assert not any(d.step(A, 200 + i / 4, consumed=True) for i in range(400))


def test_a_pass_that_left_work_gets_another_until_it_stops_asking() -> None:
    d = ChangeDetector()
    d.step(A, 0.0, consumed=True)
    d.step(A, SETTLE_KICK_S, consumed=True)
    assert not any(d.step(A, 2 + i / 4, consumed=True) for i in range(40))
    # A pass left the "again" file (a deferred result): kicks, backing off, while it stays.
    kicks = [t / 4 for t in range(48, 400) if d.step(A, t / 4, consumed=True, again=True)]
    assert kicks[0] == 12 + REKICK_FIRST_S
    gaps = [b - a for a, b in itertools.pairwise(kicks)]
    assert gaps == sorted(gaps) and max(gaps) <= REKICK_MAX_S + 0.25
    # The pass that published it left nothing: quiet again.
    assert not any(d.step(A, 100 + i / 4, consumed=True) for i in range(200))


def test_signature_sees_entries_come_and_go_and_a_missing_path(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    empty = signature(str(inbox))
    (inbox / "t.json").write_text("{}")
    one = signature(str(inbox))
    assert one != empty
    (inbox / "t.json").unlink()
    assert signature(str(inbox)) != one
    assert signature(str(tmp_path / "KILLSWITCH")) == ABSENT
    (tmp_path / "KILLSWITCH").write_text("")
    assert signature(str(tmp_path / "KILLSWITCH")) != ABSENT


def _settings(pair: Pair, kick: Path) -> Settings:
    node = pair.receiver.node()
    return Settings(
        root=str(node.cfg.root),
        node=node.name,
        peers=node.cfg.peers,
        state_dir=str(node.cfg.state_dir),
        interval_s=0.25,
        kick_file=str(kick),
    )


def test_it_watches_what_peers_write_on_every_incoming_lane(pair: Pair, tmp_path: Path) -> None:
    node = pair.receiver.node()
    watched = set(_settings(pair, tmp_path / "kick").watched())
    expected = {str(node.spool.killswitch_path)}
    for lane in node.spool.lanes_in(node.cfg):
        expected |= {str(lane.inbox), str(lane.pending_ack), str(lane.cancel)}
    assert watched == expected
    # processing/ changes by this node's own passes only: watching it would kick every pass.
    assert not any(p.endswith("/processing") for p in watched)


def test_the_loop_kicks_on_an_arrival_and_a_pass_takes_the_kick(pair: Pair, tmp_path: Path) -> None:
    kick = tmp_path / "kick"
    settings = _settings(pair, kick)
    rx = pair.receiver.node()
    overview.heartbeat(rx)  # records the identity; the sensor writes the next one
    rx.spool.heartbeat_path("gpubox").unlink()
    clock = iter(i * 0.25 for i in range(1000))
    events: list[str] = []

    def sleep(_s: float) -> None:
        if kick.exists():
            events.append("kick")
            sensor.consume_kick(str(kick))  # what `dispatch promote` does first
        else:
            events.append("-")
        if len(events) == 12:
            tx = pair.sender.node()
            sender.deliver(tx, sender.build(tx, to="gpubox", request="wake up"))

    sensor.run(settings, clock=lambda: next(clock), sleep=sleep, rounds=30)
    # Start-up kick and its settle kick; then the arrival's kick and its settle kick.
    assert events[0] == "kick"
    assert events[1:4] == ["-", "-", "-"]
    assert "kick" not in events[6:12]
    assert events[12] == "kick"
    assert events[13:16] == ["-", "-", "-"]
    assert events[12:].count("kick") == 2
    beat = json.loads(rx.spool.heartbeat_path("gpubox").read_text())
    assert beat["node"] == "gpubox"


def test_inboxes_every_round_the_rest_every_slow_round(pair: Pair, tmp_path: Path) -> None:
    kick = tmp_path / "kick"
    settings = _settings(pair, kick)
    lane = pair.receiver.node().spool.lane("devbox", "gpubox")
    rounds: list[int] = []
    clock = iter(i * 0.25 for i in range(1000))
    count = 0

    def sleep(_s: float) -> None:
        nonlocal count
        count += 1
        if kick.exists():
            rounds.append(count)
            sensor.consume_kick(str(kick))
        if count == 9:  # just after a slow round (rounds 1, 5, 9, … stat everything)
            (lane.cancel / "x.cancel.json").write_text("{}")
        if count == 21:
            (lane.inbox / "x.json").write_text("{}")

    sensor.run(settings, clock=lambda: next(clock), sleep=sleep, rounds=40)
    assert rounds[0] == 1  # the start-up kick
    # The cancel request waits for the next slow round (4 rounds later), the task does not.
    assert min(r for r in rounds if r > 9) == 9 + sensor.SLOW_EVERY
    assert min(r for r in rounds if r > 21) == 22


def test_its_heartbeat_is_the_python_heartbeat(pair: Pair, tmp_path: Path) -> None:
    tx, rx = pair.sender.node(), pair.receiver.node()
    sender.deliver(tx, sender.build(tx, to="gpubox", request="done one"))
    drain(rx)
    set_killswitch(rx.spool, hard=False, reason="hold")
    sender.deliver(tx, sender.build(tx, to="gpubox", request="queued one"))
    sender.deliver(tx, sender.build(tx, to="gpubox", request="needs an ack", require_ack=True))
    from dispatch.receive.launch.process import ProcessLauncher
    from dispatch.receive.promote import promote

    promote(rx, ProcessLauncher(rx))
    python_beat = overview.heartbeat(rx)  # also records the identity the sensor uses
    identity = sensor.read_identity(str(rx.cfg.state_dir))
    assert identity == {"version": python_beat["version"], "kid": python_beat["kid"]}
    settings = _settings(pair, tmp_path / "kick")
    data = sensor.heartbeat(settings, identity, 1796000000.25)
    beat = json.loads(data)
    assert list(beat) == list(python_beat)  # same keys, same order
    assert {k: v for k, v in beat.items() if k not in ("ts", "unix")} == {
        k: v for k, v in python_beat.items() if k not in ("ts", "unix")
    }
    assert beat["queued"] == 1 and beat["pending_ack"] == 1 and beat["killswitch"] is True
    moment = datetime.fromtimestamp(1796000000.25, UTC)
    assert beat["ts"] == rfc3339(moment) and beat["unix"] == 1796000000.25
    # Byte for byte what fsio.dump_json writes for the same values.
    from dispatch.core.fsio import dump_json

    assert data == dump_json(beat)
    sensor.write_heartbeat(settings, data)
    assert rx.spool.heartbeat_path("gpubox").read_bytes() == data
    assert overview.peers(pair.sender.node())[0]["heartbeat_age_s"] is not None


def test_without_an_identity_it_writes_no_heartbeat_and_says_so_once(
    pair: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _settings(pair, tmp_path / "kick")
    clock = iter(i * 20.0 for i in range(10))
    sensor.run(settings, clock=lambda: next(clock), sleep=lambda _s: None, rounds=4)
    assert not pair.receiver.node().spool.heartbeat_path("gpubox").exists()
    assert capsys.readouterr().err.count("heartbeat not written") == 1


def test_in_timer_mode_it_exits_at_once() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DISPATCH_")}
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "dispatch-sensor")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0
    assert "timer mode" in proc.stdout


def test_consume_kick_removes_the_file_and_ignores_its_absence(tmp_path: Path) -> None:
    kick = tmp_path / "kick"
    sensor.kick(str(kick))
    assert kick.exists()
    sensor.consume_kick(str(kick))
    assert not kick.exists()
    sensor.consume_kick(str(kick))  # nothing to take: no error
