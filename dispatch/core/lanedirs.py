"""Lanes held open: nothing under the root is followed. The receiver and the executor work
on a lane only through directories opened from the root down, each `O_DIRECTORY |
O_NOFOLLOW` and checked for its owner; every path they use starts at one of those open
directories (`fsio.held`), so a stage directory replaced by a symbolic link, or renamed
away, after it was opened changes nothing: no name outside the lane is ever reached. A lane
whose directories are not what the layout says is refused, for that lane only, with its
reason recorded (events, and node-local faults that `status` and `doctor` show)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dispatch.core import events
from dispatch.core.config import Config
from dispatch.core.fsio import DirRefused, held, open_dir
from dispatch.core.node import Node
from dispatch.core.spool import LANE_DIRS, SENDER_DIRS, Lane, Spool

FAULT_PREFIX = "lane:"


@dataclass(frozen=True)
class HeldLane(Lane):
    """A lane whose directories are open: its stage paths name the open directories."""

    fds: tuple[tuple[str, int], ...] = field(default=(), compare=False)

    def _held(self, sub: str) -> Path:
        return held(dict(self.fds)[sub])

    @property
    def tmp(self) -> Path:
        return self._held("tmp")

    @property
    def inbox(self) -> Path:
        return self._held("inbox")

    @property
    def pending_ack(self) -> Path:
        return self._held("pending-ack")

    @property
    def processing(self) -> Path:
        return self._held("processing")

    @property
    def done(self) -> Path:
        return self._held("done")

    @property
    def cancel(self) -> Path:
        return self._held("cancel")

    @property
    def rejected(self) -> Path:
        return self._held("rejected")

    def dir_name(self, directory: Path) -> str:
        for sub, fd in self.fds:
            if directory == held(fd):
                return sub
        return directory.name

    def ensure(self) -> None:
        """Its directories exist: they are open."""

    def close(self) -> None:
        for _, fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def expected_owners(root_fd: int) -> frozenset[int]:
    """Who may own a lane's directories: root, this process's user, and the root's owner
    (the account the share is exported or mounted as). Anyone else's directory in a lane
    was put there by someone who can write the share, not by `dispatch init`."""
    return frozenset({0, os.geteuid(), os.fstat(root_fd).st_uid})


def hold(lane: Lane) -> HeldLane:
    """Open a lane's directories from the root down, or raise `DirRefused`. A stage
    directory that is missing is made (mkdirat, inside the lane held open); a missing lane
    is refused, never made: an unmounted share would look like an empty one."""
    try:
        root_fd = open_dir(lane.root, follow=True)
    except DirRefused as exc:
        if exc.reason != "dir_missing":
            raise
        raise DirRefused("root_missing", f"{exc}: is the share mounted?") from None
    fds: list[tuple[str, int]] = []
    try:
        owners = expected_owners(root_fd)
        try:
            lane_fd = open_dir(lane.name, dir_fd=root_fd, owners=owners)
        except DirRefused as exc:
            if exc.reason != "dir_missing":
                raise
            hint = f"{exc}: is the share mounted? (`dispatch init` creates lanes)"
            raise DirRefused("lane_missing", hint) from None
        try:
            for sub in LANE_DIRS:
                where = f"{lane.name}/{sub}"
                try:
                    fds.append((sub, open_dir(sub, dir_fd=lane_fd, owners=owners)))
                except DirRefused as exc:
                    if exc.reason != "dir_missing":
                        raise DirRefused(exc.reason, f"{where}: {exc}") from None
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(sub, dir_fd=lane_fd)
                    fds.append((sub, open_dir(sub, dir_fd=lane_fd, owners=owners)))
        finally:
            os.close(lane_fd)
    except BaseException:
        for _, fd in fds:
            os.close(fd)
        raise
    finally:
        os.close(root_fd)
    return HeldLane(lane.root, lane.from_, lane.to, tuple(fds))


def hold_recorded(node: Node, lane: Lane) -> HeldLane | None:
    """`hold`, with the outcome recorded: a refusal as an event and a fault (once a change,
    counted after), a lane that is fine again clears its fault."""
    faults = node.state.faults
    key = FAULT_PREFIX + lane.name
    try:
        held_lane = hold(lane)
    except DirRefused as exc:
        known = faults.get(key)
        faults.record(key, exc.reason, str(exc))
        if known is None or known.message != str(exc):
            node.emit(
                "lane_refused",
                f"{lane.name} is not used: {exc}",
                from_=lane.from_,
                to=lane.to,
                reason=exc.reason,
                level=events.ERR,
            )
        return None
    except OSError as exc:
        # The share does not answer: a fault of the lane, not of this pass.
        faults.record(key, "unreachable", f"{lane.path}: {exc.strerror or exc}")
        return None
    if faults.clear(key):
        node.emit("lane_restored", f"{lane.name} is usable again", from_=lane.from_, to=lane.to)
    return held_lane


@contextlib.contextmanager
def held_lanes(node: Node, lanes: list[Lane]) -> Iterator[list[Lane]]:
    """The lanes that could be held, open for the duration; refused ones are recorded."""
    opened = [held_lane for lane in lanes if (held_lane := hold_recorded(node, lane))]
    try:
        yield list(opened)
    finally:
        for held_lane in opened:
            held_lane.close()


def make_layout(spool: Spool, cfg: Config, group: int | None = None) -> None:
    """What `dispatch init` makes: the root's directories and every lane in and out, each
    made inside its parent held open, so a lane or stage planted on the share as a link is
    refused (DirRefused), never followed: init runs as root. With `group`, outgoing lanes
    are opened to it (see `_open_to_group`)."""
    spool.ensure(cfg)
    gid = group
    for lane in spool.lanes_in(cfg) + spool.lanes_out(cfg):
        root_fd = open_dir(lane.root, follow=True)
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(lane.name, dir_fd=root_fd)
        finally:
            os.close(root_fd)
        held_lane = hold(lane)
        try:
            if gid is not None and lane.from_ == cfg.node:
                _open_to_group(held_lane, gid)
        finally:
            held_lane.close()


def _open_to_group(lane: HeldLane, gid: int) -> None:
    """An outgoing lane: members of group `dispatch` send through the local signer and
    must write tmp/, inbox/ and cancel/ themselves (setgid, so what they write stays the
    group's). Through the directories held open; best effort: a share that refuses (root
    squashed) keeps its modes, and `dispatch send` then says which directory it cannot
    write."""
    fds = dict(lane.fds)
    for sub in SENDER_DIRS:
        with contextlib.suppress(OSError):
            os.fchown(fds[sub], -1, gid)
            os.fchmod(fds[sub], 0o2775)
