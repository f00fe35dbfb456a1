"""The promoter's stay after a busy pass: a round for each piece of news (a new entry, a
kick), none for its own moves or for an entry it could not handle, rounds every period on
a timer node, and an end once nothing happened for the linger time."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dispatch.core.spool import INBOX_LEVEL_ENV, level_inboxes, level_inboxes_value
from dispatch.receive.promote.linger import (
    hold_off_failed_pass,
    inbox_holds_entries,
    linger,
    snapshot,
)
from dispatch.receive.promote.report import PassReport
from tests.conftest import Pair
from tests.unit.helpers import lane_in


class Rounds:
    """A stand-in for a promote round: counts, and does what a round's own file operations
    do to the watched directories (writes and removes a file in processing/)."""

    def __init__(self, pair: Pair, also: Callable[[], None] | None = None) -> None:
        self.lane = lane_in(pair)
        self.count = 0
        self.also = also

    def __call__(self) -> PassReport:
        self.count += 1
        scratch = self.lane.processing / f"own-{self.count}.json"
        scratch.write_bytes(b"{}")
        scratch.unlink()
        if self.also is not None:
            self.also()
        return PassReport(admitted=self.count)


def later(seconds: float, action: Callable[[], object]) -> threading.Timer:
    timer = threading.Timer(seconds, action)
    timer.start()
    return timer


def test_news_runs_a_round_and_its_own_moves_do_not(pair: Pair, tmp_path: Path) -> None:
    node = pair.receiver.node()
    lane = lane_in(pair)
    (lane.inbox / "stuck.json").write_bytes(b"cannot be moved")
    before = snapshot(node, tmp_path)  # as the first round began: the stuck entry was there
    rounds = Rounds(pair)
    arrival = later(0.3, lambda: (lane.inbox / "new.json").write_bytes(b"{}"))
    report = linger(
        node, rounds, before, PassReport(), linger_s=1.5, periodic_s=None, kick_dir=tmp_path
    )
    arrival.join()
    # One round for the arrival; the stand-in leaves it in place (as a round leaves an
    # entry it cannot move), and neither that nor the round's own writes made another.
    assert rounds.count == 1
    assert report.admitted == 1


def test_a_kick_runs_a_round_each_time_and_the_stay_ends(pair: Pair, tmp_path: Path) -> None:
    node = pair.receiver.node()
    kick = tmp_path / "kick"
    rounds = Rounds(pair, also=lambda: kick.unlink(missing_ok=True))  # a round takes it
    before = snapshot(node, tmp_path)
    kicks = [later(0.2, kick.touch), later(0.9, kick.touch)]
    linger(node, rounds, before, PassReport(), linger_s=1.2, periodic_s=None, kick_dir=tmp_path)
    for timer in kicks:
        timer.join()
    assert rounds.count == 2
    assert not kick.exists()


def test_a_kick_no_round_could_remove_is_news_once(pair: Pair, tmp_path: Path) -> None:
    node = pair.receiver.node()
    rounds = Rounds(pair)  # takes nothing
    before = snapshot(node, tmp_path)
    kick = later(0.2, (tmp_path / "kick").touch)
    linger(node, rounds, before, PassReport(), linger_s=1.0, periodic_s=None, kick_dir=tmp_path)
    kick.join()
    assert rounds.count == 1


def test_a_timer_node_runs_rounds_every_period_without_staying_longer(
    pair: Pair, tmp_path: Path
) -> None:
    node = pair.receiver.node()
    rounds = Rounds(pair)
    before = snapshot(node, tmp_path)
    linger(node, rounds, before, PassReport(), linger_s=1.0, periodic_s=0.3, kick_dir=tmp_path)
    # About three periods fit in the stay; periodic rounds are not activity, so it ended.
    assert 2 <= rounds.count <= 4, rounds.count


def test_the_killswitch_is_news(pair: Pair, tmp_path: Path) -> None:
    node = pair.receiver.node()
    rounds = Rounds(pair)
    before = snapshot(node, tmp_path)
    switch = node.spool.killswitch_path
    flip = later(0.2, lambda: switch.write_text("hold\n"))
    linger(node, rounds, before, PassReport(), linger_s=1.0, periodic_s=None, kick_dir=tmp_path)
    flip.join()
    os.unlink(switch)
    assert rounds.count == 1


def test_a_kick_is_a_reason_to_stay_and_a_waiting_entry_is_not(pair: Pair, tmp_path: Path) -> None:
    node = pair.receiver.node()
    (lane_in(pair).inbox / "unmovable.json").write_bytes(b"{}")
    assert not snapshot(node, tmp_path).kicked()
    (tmp_path / "kick").touch()
    assert snapshot(node, tmp_path).kicked()


def test_what_lands_while_the_watch_closes_gets_its_round(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd watches again only once the promoter is gone: an arrival while pyinotify
    closes the watch (10-25 ms) would wait for the timer's sweep otherwise."""
    from dispatch.core import inotify

    node = pair.receiver.node()
    lane = lane_in(pair)
    closing = inotify.DirWatcher.close
    landed: list[str] = []

    def close_and_land(self: inotify.DirWatcher) -> None:
        closing(self)
        if not landed:  # the first close only: the stay's end
            landed.append("late.json")
            (lane.inbox / "late.json").write_bytes(b"{}")

    monkeypatch.setattr(inotify.DirWatcher, "close", close_and_land)
    rounds = Rounds(pair)
    before = snapshot(node, tmp_path)
    linger(node, rounds, before, PassReport(), linger_s=0.3, periodic_s=None, kick_dir=tmp_path)
    assert landed and rounds.count == 1


def test_a_promoter_busy_too_long_leaves_the_kick_for_its_successor(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dispatch.receive.promote import linger as linger_mod

    monkeypatch.setattr(linger_mod, "RUN_MAX_S", 0.5)
    node = pair.receiver.node()
    lane = lane_in(pair)
    count = [0]

    def arrivals() -> None:
        count[0] += 1
        (lane.inbox / f"busy-{count[0]}.json").write_bytes(b"{}")

    rounds = Rounds(pair, also=arrivals)  # every round finds news: never quiet
    before = snapshot(node, tmp_path)
    arrivals()
    began = time.monotonic()
    linger(node, rounds, before, PassReport(), linger_s=5, periodic_s=None, kick_dir=tmp_path)
    assert time.monotonic() - began < 3 and rounds.count > 1
    # The path unit's PathExists= starts the next promoter as soon as this one is gone.
    assert (tmp_path / "kick").exists()


def test_an_entry_left_in_a_level_watched_inbox_keeps_the_promoter_while_it_stays(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where systemd would start a new promoter at once for an entry left in an inbox
    (DirectoryNotEmpty=), the promoter stays, without a round for it, to its run's end, and
    leaves the kick for its successor; with the inbox empty it leaves after its stay, and
    once the entry goes it leaves soon after."""
    from dispatch.receive.promote import linger as linger_mod

    monkeypatch.setattr(linger_mod, "RUN_MAX_S", 2.5)
    node = pair.receiver.node()
    inbox = lane_in(pair).inbox
    rounds = Rounds(pair)

    def stay() -> float:
        began = time.monotonic()
        linger(
            node,
            rounds,
            snapshot(node, tmp_path),
            PassReport(),
            linger_s=0.2,
            periodic_s=None,
            kick_dir=tmp_path,
            stay_while=lambda: inbox_holds_entries([inbox]),
        )
        return time.monotonic() - began

    assert not inbox_holds_entries([inbox])
    assert stay() < 1.0 and not (tmp_path / "kick").exists()
    # A sender mid-write (or one that died so): no pass can take it before the stale sweep.
    stuck = inbox / "stuck.json.tmp"
    stuck.write_bytes(b"{")
    assert inbox_holds_entries([inbox])
    assert stay() >= 2.5
    assert rounds.count == 0  # the entry that waits is no news
    assert (tmp_path / "kick").exists()  # left for the successor
    (tmp_path / "kick").unlink()
    # Taken away without news: looked at again within a second or so, and the stay ends.
    gone = later(0.3, stuck.unlink)
    assert stay() < 2.2
    gone.join()
    assert rounds.count == 0


def test_an_inbox_is_read_as_directory_not_empty_reads_it(tmp_path: Path) -> None:
    missing, empty, full, looping = (tmp_path / n for n in ("missing", "empty", "full", "loop"))
    empty.mkdir()
    full.mkdir()
    (full / "x.json.tmp").write_bytes(b"")
    looping.symlink_to(looping)
    assert not inbox_holds_entries([missing, empty])
    assert inbox_holds_entries([empty, full])
    # An inbox that cannot be read is not empty to systemd: the promoter stays for it too.
    assert inbox_holds_entries([looping])


def test_a_failed_pass_waits_before_it_exits_only_where_it_would_start_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dispatch.receive.promote import linger as linger_mod

    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    inbox = tmp_path / "devbox-to-gpubox" / "inbox"
    inbox.mkdir(parents=True)
    level = {INBOX_LEVEL_ENV: level_inboxes_value(str(tmp_path), "gpubox", ("devbox",))}
    hold_off_failed_pass(level)
    hold_off_failed_pass({})
    (inbox / "task.json").write_bytes(b"{}")
    hold_off_failed_pass({})  # not level-triggered: nothing would start it again
    assert slept == []
    hold_off_failed_pass(level)
    assert slept == [linger_mod.FAILED_PASS_HOLD_S]


def test_the_level_inboxes_value_names_the_path_units_inboxes() -> None:
    value = level_inboxes_value("/srv/a:b", "gpubox", ("devbox", "ci"))
    assert level_inboxes(value) == [
        Path("/srv/a:b/devbox-to-gpubox/inbox"),
        Path("/srv/a:b/ci-to-gpubox/inbox"),
    ]
    for junk in ("", "yes", "gpubox:devbox:relative", ":devbox:/srv"):
        assert level_inboxes(junk) == []


def test_an_execution_whose_unit_is_stopping_is_looked_at_again(pair: Pair, tmp_path: Path) -> None:
    """Its ExecStopPost= kick came before systemd was done with it, and no event will say
    when it is: the promoter looks again shortly, backing off, past its quiet time, until no
    unit is stopping (then it answers one killed outright, or refills its slot)."""
    node = pair.receiver.node()
    stopping = PassReport(stopping={"a-task"})
    reports = [stopping, stopping, PassReport()]
    calls: list[float] = []

    def round_() -> PassReport:
        calls.append(time.monotonic())
        return reports[min(len(calls) - 1, 2)]

    began = time.monotonic()
    linger(
        node,
        round_,
        snapshot(node, tmp_path),
        stopping,
        linger_s=0,
        periodic_s=None,
        kick_dir=tmp_path,
    )
    assert len(calls) == 3
    waits = [b - a for a, b in zip([began, *calls], calls, strict=False)]
    assert waits[2] > waits[0], waits  # backing off (0.05, 0.1, 0.2 s)
    assert time.monotonic() - began < 2.0
