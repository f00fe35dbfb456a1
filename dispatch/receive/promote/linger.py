"""A promoter that stays a while after it had work: the next task needs no new process.

Under systemd a pass is a oneshot: the path unit (or the sensor's kick) starts
dispatch-watch.service, which pays a sandboxed unit start and a Python start-up (about half
of a local task's way to its agent, bench/RESULTS.md) before it looks at anything. After a
round that did something, `dispatch promote` stays for DISPATCH_PROMOTE_LINGER_S and watches
what the path unit watches (systemd does not while its service runs): the lanes' watched
directories, the root (KILLSWITCH), and /run/dispatch (the sensor's and the executions'
kicks). Then it exits: an idle node keeps no dispatch process resident.

A wake-up is news only when something appeared that the last round did not see before it
began: the round's own moves wake the watch too, and an entry that cannot be handled (an
unmovable file) must not make the promoter spin. On a timer-mode node, whose share may take
writes from other hosts that inotify never reports, a round also runs every poll period
(the timer's starts are absorbed while this runs)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from dispatch.core.node import Node
from dispatch.core.spool import INBOX_LEVEL_ENV, level_inboxes
from dispatch.receive.promote.report import PassReport

# Well under dispatch-watch.service's TimeoutStartSec= (5 min): a node that is never quiet
# still gets a fresh process now and then, and the unit never times out.
RUN_MAX_S = 180.0
KICK_DIR = Path("/run/dispatch")
# The sensor's kick and the one an execution's ExecStopPost= leaves. Not the sensor's
# "again" file: every round that leaves a deferred result writes it, and it is the
# sensor's to repeat, backing off; taken as news here it would make rounds back to back.
KICK_NAME = "kick"
# The first and the longest wait between looks at an execution whose unit is stopping.
STOPPING_LOOKS_S = (0.05, 2.0)
# How long a failed pass waits before it exits while an inbox it would leave holds
# something (hold_off_failed_pass).
FAILED_PASS_HOLD_S = 30.0


@dataclass(frozen=True)
class Snapshot:
    """What could be seen at one moment: the entries waiting in each lane, the kick (its
    identity and time, so a kick that could not be removed is not news twice), and the
    KILLSWITCH."""

    entries: frozenset[str]
    kick: tuple[int, int] | None
    killswitch: bool

    def kicked(self) -> bool:
        """Someone asked for a pass: the sensor saw a change, an execution ended, an
        operator touched the kick. (Not an entry that merely waits: an unmovable one would
        keep a promoter resident on an idle node.)"""
        return self.kick is not None

    def news_since(self, before: Snapshot) -> bool:
        return (
            bool(self.entries - before.entries)
            or (self.kick is not None and self.kick != before.kick)
            or self.killswitch != before.killswitch
        )


def snapshot(node: Node, kick_dir: Path = KICK_DIR) -> Snapshot:
    entries: set[str] = set()
    for lane in node.spool.lanes_in(node.cfg):
        for directory in (lane.inbox, lane.cancel, lane.pending_ack):
            try:
                names = os.listdir(directory)
            except OSError:
                continue
            where = f"{lane.name}/{lane.dir_name(directory)}/"
            entries.update(where + n for n in names if not n.endswith(".tmp"))
    try:
        st = os.stat(kick_dir / KICK_NAME)
        kick: tuple[int, int] | None = (st.st_ino, st.st_mtime_ns)
    except OSError:
        kick = None
    return Snapshot(frozenset(entries), kick, node.spool.killswitch().on)


def inbox_holds_entries(inboxes: list[Path]) -> bool:
    """Whether one of the inboxes the path unit watches level-triggered still holds
    anything: an entry a sender is still writing, or one no round could move (each
    recorded where it is met). A promoter leaving now would be started again at once, and
    again after each round that cannot take it: it stays instead. Read as systemd's
    DirectoryNotEmpty= reads it: an inbox that cannot be read (an I/O error, a link that
    loops) counts as not empty, a missing one as empty. Counts hidden names too (systemd
    skips them), which can only make the promoter stay."""
    for inbox in inboxes:
        try:
            with os.scandir(inbox) as entries:
                if next(entries, None) is not None:
                    return True
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            return True
    return False


def hold_off_failed_pass(environ: Mapping[str, str] = os.environ) -> None:
    """A pass that failed (a config broken since the last daemon-reload, say) leaves the
    inboxes as they were. Where the path unit watches them level-triggered, exiting at once
    would start the next failing pass at once: wait first, so that such a node tries twice a
    minute, its failure in the unit's journal meanwhile."""
    inboxes = level_inboxes(environ.get(INBOX_LEVEL_ENV, ""))
    if inboxes and inbox_holds_entries(inboxes):
        time.sleep(FAILED_PASS_HOLD_S)


def watched_dirs(node: Node, kick_dir: Path = KICK_DIR) -> list[Path]:
    dirs = [d for lane in node.spool.lanes_in(node.cfg) for d in lane.watched_dirs()]
    return [*dirs, node.cfg.root, kick_dir]


def linger(
    node: Node,
    round_: Callable[[], PassReport],
    before: Snapshot,
    report: PassReport,
    *,
    linger_s: float,
    periodic_s: float | None,
    kick_dir: Path = KICK_DIR,
    stay_while: Callable[[], bool] | None = None,
) -> PassReport:
    """After a first round (which returned `report`; `before` was taken as it began), run
    `round_` again whenever there is news, until `linger_s` pass without any, or RUN_MAX_S
    in all. `periodic_s`: also a round that often (timer mode), not counted as activity.
    `stay_while`: a reason to stay past the quiet time, up to RUN_MAX_S."""
    from dispatch.core.inotify import DirWatcher

    began = last_round = time.monotonic()
    quiet_until = began + linger_s
    stop_wait = STOPPING_LOOKS_S[0]
    next_stop_look = began + stop_wait
    while True:
        with DirWatcher(watched_dirs(node, kick_dir)) as watcher:
            while True:
                if time.monotonic() - began >= RUN_MAX_S:
                    break  # news or not: a node never quiet must not reach the unit's timeout
                # Also right after a round and after the watch was set up: what arrived
                # after the round's last look is news the watch may not have seen.
                current = snapshot(node, kick_dir)
                if current.news_since(before):
                    before = current
                    report = round_()
                    last_round = time.monotonic()
                    quiet_until = last_round + linger_s
                    stop_wait = STOPPING_LOOKS_S[0]
                    next_stop_look = last_round + stop_wait
                    continue
                now = time.monotonic()
                if report.stopping and now >= next_stop_look:
                    # An execution ended and its unit is still stopping (its ExecStopPost=
                    # kicked before it was done): no event will say when it is, and then
                    # its answer (interrupted, for one killed outright) or its slot is due.
                    before = current
                    report = round_()
                    stop_wait = min(stop_wait * 2, STOPPING_LOOKS_S[1])
                    next_stop_look = time.monotonic() + stop_wait
                    continue
                if now >= quiet_until and not report.stopping:
                    if stay_while is None or not stay_while():
                        break
                    # Looked at again after a while: the entry may go without news (a
                    # .tmp removed, a file taken out by hand).
                    quiet_until = min(now + max(linger_s, 1.0), began + RUN_MAX_S)
                wake_at = began + RUN_MAX_S
                if quiet_until > now:  # passed only while a unit is stopping
                    wake_at = min(wake_at, quiet_until)
                if report.stopping:
                    wake_at = min(wake_at, next_stop_look)
                timeout = max(0.0, wake_at - now)
                if periodic_s is not None:
                    timeout = min(timeout, max(0.0, last_round + periodic_s - now))
                woke = watcher.wait(timeout)
                if (
                    not woke
                    and periodic_s is not None
                    and time.monotonic() - last_round >= periodic_s
                ):
                    before = snapshot(node, kick_dir)
                    report = round_()
                    last_round = time.monotonic()
        # systemd watches the lanes again only once this process is gone, and closing the
        # watch takes pyinotify 10 to 25 ms: a task that landed meanwhile would wait for
        # the timer's sweep (a minute on a local root). So one more look after the close.
        busy_too_long = time.monotonic() - began >= RUN_MAX_S
        if busy_too_long:
            # A busy node's promoter makes way for a fresh one: the kick (PathExists=) starts
            # it as soon as this one is gone, so nothing landing until then waits for a sweep.
            from dispatch.receive import sensor

            with contextlib.suppress(OSError):  # no /run/dispatch: the timer sweeps instead
                sensor.kick(str(kick_dir / KICK_NAME))
            return report
        current = snapshot(node, kick_dir)
        if not current.news_since(before):
            return report
        before = current
        report = round_()
        last_round = time.monotonic()
        quiet_until = last_round + linger_s
