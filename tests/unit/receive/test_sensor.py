"""dispatch-sensor: its loop (what it looks at and how often, the kick a pass takes, a pass's
look taken as seen), and that its heartbeat is `dispatch heartbeat`'s. When a change kicks
is tests/unit/receive/test_looks.py."""

from __future__ import annotations

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
from dispatch.receive import looks, sensor, sensor_heartbeat
from dispatch.receive.looks import write_looked
from dispatch.receive.sensor import Settings
from dispatch.send import task as sender
from tests.conftest import Pair
from tests.unit.helpers import drain


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
    # The KILLSWITCH comes and goes as an entry of the root: the root's own look shows it.
    assert node.spool.killswitch_path.parent == node.cfg.root
    expected = {str(node.cfg.root)}
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
    # The start-up kick, then the arrival's: a local disk keeps nanoseconds, so no settle
    # kick follows either (that is for whole-second mtimes, test_looks.py).
    assert events[0] == "kick"
    assert "kick" not in events[1:12]
    assert events[12] == "kick"
    assert events[12:].count("kick") == 1
    beat = json.loads(rx.spool.heartbeat_path("gpubox").read_text())
    assert beat["node"] == "gpubox"


def test_a_pass_that_leaves_its_look_kicks_no_second_pass(pair: Pair, tmp_path: Path) -> None:
    """What a pass does to inbox/ (moving the task out) is a change too; the look the pass
    leaves at its end says it saw it, and the kick made for it meanwhile is taken back."""
    kick, looked = tmp_path / "kick", tmp_path / "looked"
    settings = _settings(pair, kick)
    settings.looked_file = str(looked)
    rx, tx = pair.receiver.node(), pair.sender.node()
    lane = rx.spool.lane("devbox", "gpubox")
    clock = iter(i * 0.25 for i in range(1000))
    events: list[str] = []
    moved: list[int] = []

    def sleep(_s: float) -> None:
        n = len(events)
        events.append("kick" if kick.exists() else "-")
        if n == 4:
            sensor.consume_kick(str(kick))  # the start-up pass
            write_looked({p: looks.signature(p) for p in settings.watched()}, str(looked))
        if n == 8:
            sender.deliver(tx, sender.build(tx, to="gpubox", request="move me"))
        if n == 10 and kick.exists():
            # The pass starts (takes the kick), moves the task on, and ends with its look.
            sensor.consume_kick(str(kick))
            name = next(iter(os.listdir(lane.inbox)))
            os.rename(lane.inbox / name, lane.processing / name)
            moved.append(n)
        if n == 12:
            write_looked({p: looks.signature(p) for p in settings.watched()}, str(looked))

    sensor.run(settings, clock=lambda: next(clock), sleep=sleep, rounds=40)
    assert moved == [10]
    # The arrival's kick (seen at round 9); the move at round 10 kicked once more, while
    # the pass ran; the look left at round 12 took that kick back, and nothing followed.
    assert events[9] == "kick"
    assert events[11] == "kick"
    assert "kick" not in events[13:], events


def test_a_look_that_does_not_cover_the_latest_change_is_not_taken(
    pair: Pair, tmp_path: Path
) -> None:
    kick, looked = tmp_path / "kick", tmp_path / "looked"
    settings = _settings(pair, kick)
    settings.looked_file = str(looked)
    tx = pair.sender.node()
    clock = iter(i * 0.25 for i in range(1000))
    events: list[str] = []

    def sleep(_s: float) -> None:
        n = len(events)
        events.append("kick" if kick.exists() else "-")
        if n == 2:
            sensor.consume_kick(str(kick))
            # A look taken before the next task landed: stale when the sensor reads it.
            stale = {p: looks.signature(p) for p in settings.watched()}
            sender.deliver(tx, sender.build(tx, to="gpubox", request="after the look"))
            write_looked(stale, str(looked))

    sensor.run(settings, clock=lambda: next(clock), sleep=sleep, rounds=12)
    assert events[3] == "kick"  # the arrival is news, whatever the look said


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
    # (A new entry in the lane changes the root's mtime only for the KILLSWITCH.)
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
    identity = sensor_heartbeat.read_identity(str(rx.cfg.state_dir))
    assert identity == {"version": python_beat["version"], "kid": python_beat["kid"]}
    settings = _settings(pair, tmp_path / "kick")
    data = sensor_heartbeat.heartbeat(settings, identity, 1796000000.25)
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
    sensor_heartbeat.write_heartbeat(settings, data)
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


def test_it_slows_down_once_idle_and_speeds_up_at_the_first_change(
    pair: Pair, tmp_path: Path
) -> None:
    kick = tmp_path / "kick"
    settings = _settings(pair, kick)
    settings.idle_interval_s = 1.0
    tx = pair.sender.node()
    now = [0.0]
    slept: list[tuple[float, float]] = []

    def sleep(s: float) -> None:
        slept.append((now[0], s))
        sensor.consume_kick(str(kick))
        now[0] += s
        if len(slept) == 200:
            sender.deliver(tx, sender.build(tx, to="gpubox", request="wake up"))

    sensor.run(settings, clock=lambda: now[0], sleep=sleep, rounds=260)
    # Fast while the start-up kick is recent, idle once ACTIVE_S passed with nothing new.
    assert all(s == 0.25 for t, s in slept if t < sensor.ACTIVE_S)
    quiet = [s for t, s in slept[:200] if t >= sensor.ACTIVE_S + 0.25]
    assert quiet and set(quiet) == {1.0}
    # The arrival is seen within one idle period, and the fast rate is back at once.
    assert slept[200][1] == 0.25
    assert [s for _t, s in slept[200:230]] == [0.25] * 30


def test_the_lean_sensor_loads_nothing_but_its_own_modules() -> None:
    # Every module it imports stays resident for months on every network-root node; `os`
    # alone is 260 KiB there (sensor.py's docstring). Run as its unit runs it: -I -S.
    top = str(Path(sensor.__file__).resolve().parents[2])
    code = (
        "import sys; before = set(sys.modules); sys.path.insert(0, sys.argv[1]); "
        "from dispatch.receive import sensor; print(' '.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, top], capture_output=True, text=True, check=True
    ).stdout.split()
    assert set(out) == {
        "__future__",
        "dispatch",
        "dispatch.receive",
        "dispatch.receive.looks",
        "dispatch.receive.sensor",
        "dispatch.receive.sensor_heartbeat",
    }
