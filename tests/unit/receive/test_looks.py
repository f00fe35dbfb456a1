"""What a look tells (held descriptors, coarse timestamps), when a change kicks, and the
settled look a pass leaves for the sensor."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from dispatch.receive.looks import (
    ABSENT,
    REKICK_FIRST_S,
    REKICK_MAX_S,
    SETTLE_KICK_S,
    SETTLED_AFTER_S,
    ChangeDetector,
    Held,
    LookedFile,
    Signature,
    coarse,
    settled_look,
    signature,
    watched_paths,
    write_looked,
)

# Whole-second mtimes, as sshfs gives them (coarse); FINE keeps nanoseconds.
A: list[Signature] = [(1_000_000_000, 1, 1, 1, 1)]
B: list[Signature] = [(2_000_000_000, 2, 1, 1, 1)]
FINE: list[Signature] = [(1_000_000_001, 1, 1, 1, 1)]
FINE2: list[Signature] = [(2_000_000_002, 2, 1, 1, 1)]


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


def test_with_fine_timestamps_a_change_kicks_once() -> None:
    d = ChangeDetector()
    assert d.step(FINE, 0.0, consumed=True)
    assert d.step(FINE2, 5.0, consumed=True)
    assert not any(d.step(FINE2, 5.0 + 0.25 * i, consumed=True) for i in range(1, 40))


def test_coarse_means_whole_milliseconds_or_coarser() -> None:
    assert coarse((3_000_000_000, 0, 0, 0, 0)) and coarse((3_001_000_000, 0, 0, 0, 0))
    assert not coarse((3_000_000_001, 0, 0, 0, 0))
    assert not coarse(ABSENT) and not coarse((-2, 5))


def test_a_look_a_pass_settled_is_taken_as_seen_where_it_matches() -> None:
    d = ChangeDetector()
    d.step(A, 0.0, consumed=True)
    d.step(A, SETTLE_KICK_S, consumed=True)
    assert d.step(B, 10.0, consumed=False)  # the pass's own move, while it runs
    assert d.adopt([B[0]], B)  # its look shows the same: covered
    assert d.rekick_at is None and d.settle_at is None
    assert not any(d.step(B, 10.25 + 0.25 * i, consumed=False) for i in range(40))
    # A look of something older covers nothing, and changes nothing.
    d2 = ChangeDetector()
    d2.step(A, 0.0, consumed=True)
    d2.step(B, 5.0, consumed=False)
    assert not d2.adopt([A[0]], B)
    assert d2.settle_at is not None and d2.rekick_at is not None
    assert not ChangeDetector().adopt([A[0]], A)  # nothing sampled yet


def test_a_held_directory_sees_entries_come_and_go(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    held = Held(str(inbox))
    empty = held.signature()
    assert held.fd >= 0 and empty == signature(str(inbox))
    (inbox / "t.json").write_text("{}")
    assert held.signature() != empty
    held.close()
    assert held.fd == -1


def test_a_replaced_directory_is_reopened_at_the_next_recheck(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    held = Held(str(inbox))
    held.signature()
    inbox.rename(tmp_path / "old")
    inbox.mkdir()
    (inbox / "new.json").write_text("{}")
    held.recheck()  # the path names another directory now
    assert held.fd == -1
    assert held.signature() == signature(str(inbox))
    held.close()


def test_what_is_not_a_directory_is_a_value_never_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "inbox").symlink_to(target)
    held = Held(str(tmp_path / "inbox"))
    assert held.signature()[0] == -2 and held.fd == -1  # ELOOP: not opened through the link
    assert Held(str(tmp_path / "absent")).signature() == ABSENT
    os.mkfifo(tmp_path / "fifo")
    assert Held(str(tmp_path / "fifo")).signature()[0] == -2  # not a directory: no open


def test_watched_paths_are_each_incoming_lanes_inbox_then_the_rest() -> None:
    fast, slow = watched_paths("/srv/d", "gpubox", ("devbox", "laptop"))
    assert fast == ["/srv/d/devbox-to-gpubox/inbox", "/srv/d/laptop-to-gpubox/inbox"]
    assert slow == [
        "/srv/d/devbox-to-gpubox/pending-ack",
        "/srv/d/devbox-to-gpubox/cancel",
        "/srv/d/laptop-to-gpubox/pending-ack",
        "/srv/d/laptop-to-gpubox/cancel",
        "/srv/d",
    ]


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def test_a_look_at_fine_timestamps_is_settled_at_once(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    os.utime(tmp_path / "inbox", ns=(5_000_000_123, 5_000_000_123))
    t = FakeTime()
    look = settled_look(
        [str(tmp_path / "inbox")], on_change=lambda: None, clock=t.clock, sleep=t.sleep
    )
    assert look is not None and look[str(tmp_path / "inbox")][0] == 5_000_000_123
    assert t.now == 0.0


def test_a_coarse_look_waits_out_its_second_and_handles_what_lands_meanwhile(
    tmp_path: Path,
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    os.utime(inbox, ns=(5_000_000_000, 5_000_000_000))  # as sshfs shows it
    t = FakeTime()
    passes: list[float] = []

    def sleep(s: float) -> None:
        t.sleep(s)
        if 0.45 < t.now < 0.55:  # a task lands in the same second, then another
            (inbox / f"{t.now}.json").write_text("{}")
            os.utime(inbox, ns=(6_000_000_000, 6_000_000_000))

    look = settled_look(
        [str(inbox)], on_change=lambda: passes.append(t.now), clock=t.clock, sleep=sleep
    )
    assert len(passes) == 1  # handled at once, by the pass already running
    assert look is not None and look[str(inbox)][0] == 6_000_000_000
    assert t.now >= passes[0] + SETTLED_AFTER_S  # then settled after the change
    # What an earlier settled look showed needs no new wait.
    t2 = FakeTime()
    again = settled_look(
        [str(inbox)], on_change=lambda: None, settled=look, clock=t2.clock, sleep=t2.sleep
    )
    assert again == look and t2.now == 0.0


def test_the_looked_file_is_read_once_per_look_left(tmp_path: Path) -> None:
    path = str(tmp_path / "looked")
    reader = LookedFile(path)
    assert reader.fresh() is None  # none left yet
    look = {"/srv/d/a-to-b/inbox": (1, 2, 3, 4, 5), "/srv/d": ABSENT}
    write_looked(look, path)
    assert reader.fresh() == look
    assert reader.fresh() is None
    write_looked({"/srv/d": (9, 9, 9, 9, 9)}, path)
    assert reader.fresh() == {"/srv/d": (9, 9, 9, 9, 9)}
    Path(path).write_text("garbage\n/srv/d\tx y\n/ok\t1 2\n")
    assert LookedFile(path).fresh() == {"/ok": (1, 2)}
    write_looked(look, str(tmp_path / "no-such-dir" / "looked"))  # no sensor: no error


def test_a_task_landing_in_the_same_second_shows_in_the_listing(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    os.utime(inbox, ns=(5_000_000_000, 5_000_000_000))
    t = FakeTime()
    passes: list[float] = []

    def sleep(s: float) -> None:
        t.sleep(s)
        if 0.25 < t.now < 0.35:  # lands; the mtime keeps its whole second, as on sshfs
            (inbox / "same-second.json").write_text("{}")
            os.utime(inbox, ns=(5_000_000_000, 5_000_000_000))

    def handle() -> None:
        passes.append(t.now)
        for name in os.listdir(inbox):  # the pass moves it on
            (inbox / name).unlink()
        os.utime(inbox, ns=(5_000_000_000, 5_000_000_000))

    settled_look([str(inbox)], on_change=handle, listed=[str(inbox)], clock=t.clock, sleep=sleep)
    assert len(passes) == 1 and passes[0] < 0.45  # at the next poll, not a second later
    # What was there when the look began is not news: the pass before it listed it.
    inbox2 = tmp_path / "inbox2"
    inbox2.mkdir()
    (inbox2 / "x.json").write_text("{}")
    os.utime(inbox2, ns=(5_000_000_000, 5_000_000_000))
    t2 = FakeTime()
    unseen: list[float] = []
    settled_look([str(inbox2)], on_change=lambda: unseen.append(1), clock=t2.clock, sleep=t2.sleep)
    assert unseen == []


def test_a_look_at_lanes_that_never_stop_changing_gives_up(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    t = FakeTime()
    second = [10]

    def sleep(s: float) -> None:
        t.sleep(s)
        second[0] += 1  # a peer sending without pause: every look differs
        os.utime(inbox, ns=(second[0] * 1_000_000_000,) * 2)

    os.utime(inbox, ns=(10_000_000_000,) * 2)
    passes: list[float] = []
    look = settled_look(
        [str(inbox)], on_change=lambda: passes.append(t.now), clock=t.clock, sleep=sleep
    )
    assert look is None  # no look left: the sensor's own kicks carry on
    assert 9.5 < t.now < 11 and len(passes) > 50
