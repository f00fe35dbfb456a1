"""What a stat can tell of the lanes changing, shared by dispatch-sensor and the promote pass.

The sensor decides *whether* to kick a pass from these looks, never what a pass does: a look
only says that something changed, and the pass reads what did. So nothing here follows or
trusts anything on the share; a look at a planted symlink or FIFO is just another value.

Two things make a look cheap or complete on a network filesystem:

- **Held descriptors.** A path's stat on a FUSE or NFS client looks up every component on
  the server (sshfs with entry_timeout=0: three SFTP round trips, 225 µs of sshfs and ssh CPU
  and 1.9 ms of wall time per stat, measured in bench/RESULTS.md), while fstat on a
  descriptor held open costs one (35 µs, 0.45 ms). The sensor looks 4 times a second for
  months, so it looks through descriptors, and checks now and then that each path still
  names the directory it holds.
- **Coarse timestamps.** sshfs (SFTP v3) gives whole-second mtimes: a second entry landing
  in the same second as the first changes nothing a stat shows. A look is *settled* only
  once every whole-second timestamp in it has stayed the same for more than a second of
  local time (whatever the server's clock says, its second is over by then): a listing made
  after a settled look misses nothing that came before it.

A promote pass on a sensor node ends with a settled look followed by its last listing, and
leaves that look in /run/dispatch/looked. The sensor takes what it shows as seen: the pass's
own moves out of inbox/ then kick no second pass, and no settle kick follows.

Standard library only, and only `posix` and `time`, not even `os` (the sensor's resident
memory, see sensor.py).
"""

from __future__ import annotations

import posix
import time

TYPE_CHECKING = False  # typing's TYPE_CHECKING without importing typing (see sensor.py)
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

# (mtime, ctime, size, nlink, inode), or a marker for "absent" / "unreadable (errno)".
Signature = tuple[int, ...]
ABSENT: Signature = (-1,)
LOOKED_FILE = "/run/dispatch/looked"
# When to kick again after a change to a coarse timestamp (see ChangeDetector.step), and
# how a kick no pass took is repeated, less and less often, until a pass removes the file.
SETTLE_KICK_S = 1.2
REKICK_FIRST_S = 1.0
REKICK_MAX_S = 8.0
# More than a second: by then a whole-second timestamp's second is over wherever it was
# stamped (clock skew shifts which second it is, not how long one lasts).
SETTLED_AFTER_S = 1.05
_DIR_FLAGS = (
    posix.O_RDONLY | posix.O_DIRECTORY | posix.O_NOFOLLOW | posix.O_CLOEXEC | posix.O_NONBLOCK
)


def _of(st: posix.stat_result) -> Signature:
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_nlink, st.st_ino)


def signature(path: str) -> Signature:
    """What a stat can tell of a directory or file changing. Missing: ABSENT; any other
    failure its errno, so an unmount or a hung share that recovers reads as a change."""
    try:
        return _of(posix.stat(path))
    except FileNotFoundError:
        return ABSENT
    except OSError as exc:
        return (-2, exc.errno or 0)


def present(path: str) -> bool:
    """os.path.lexists without `os`."""
    try:
        posix.lstat(path)
    except OSError:
        return False
    return True


def coarse(sig: Signature) -> bool:
    """A timestamp in whole milliseconds or coarser: on a filesystem that keeps
    nanoseconds that happens once in a million looks, so it is taken to mean a coarse one."""
    return len(sig) == 5 and sig[0] % 1_000_000 == 0


class Held:
    """A directory looked at through a descriptor held open (one round trip per look, see
    the module's docstring). The descriptor is reopened when a look fails (an sshfs
    reconnect, an unmount) and when `recheck` finds that the path names another directory
    now (moved or replaced on the server: NFS keeps the old one for a held descriptor)."""

    __slots__ = ("fd", "path")

    def __init__(self, path: str) -> None:
        self.path, self.fd = path, -1

    def signature(self) -> Signature:
        if self.fd < 0:
            try:
                self.fd = posix.open(self.path, _DIR_FLAGS)
            except FileNotFoundError:
                return ABSENT
            except OSError as exc:
                # A symlink (ELOOP), a file, a FIFO where the directory should be: a value
                # like any other, looked at again by path next time.
                return (-2, exc.errno or 0)
        try:
            return _of(posix.fstat(self.fd))
        except OSError as exc:
            self.close()
            return (-2, exc.errno or 0)

    def recheck(self) -> None:
        if self.fd < 0:
            return
        try:
            now, held = posix.stat(self.path, follow_symlinks=False), posix.fstat(self.fd)
        except OSError:
            self.close()
            return
        if (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
            self.close()

    def close(self) -> None:
        if self.fd >= 0:
            try:  # noqa: SIM105 (contextlib is 0.5 MiB resident)
                posix.close(self.fd)
            except OSError:
                pass
            self.fd = -1


def watched_paths(root: str, node: str, peers: Iterable[str]) -> tuple[list[str], list[str]]:
    """What another host writes that a pass must act on, as (looked at every round, looked
    at every slow round): each incoming lane's inbox/ (tasks: latency is measured on them),
    then its pending-ack/ and cancel/ (core/spool.py's names; tests keep them in step) and
    the root itself, whose entries change when the KILLSWITCH comes or goes. processing/ is
    written by this node alone, which needs no sensor to know."""
    lanes = [f"{root}/{peer}-to-{node}" for peer in peers]
    slow = [f"{lane}/{sub}" for lane in lanes for sub in ("pending-ack", "cancel")]
    return [f"{lane}/inbox" for lane in lanes], [*slow, root]


def _names(directory: str) -> tuple[str, ...]:
    try:
        return tuple(sorted(posix.listdir(directory)))
    except OSError:
        return ()


def settled_look(
    paths: list[str],
    *,
    on_change: Callable[[], None],
    listed: list[str] | None = None,
    settled: dict[str, Signature] | None = None,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
    every_s: float = 0.1,
    give_up_s: float = 10.0,
) -> dict[str, Signature] | None:
    """Look until the look is settled: no coarse timestamp changed for SETTLED_AFTER_S, or
    it is what an earlier settled look (`settled`, the last one left) showed. `on_change`
    runs (a promote pass) whenever something changed meanwhile, so an arrival is handled at
    once by the pass that is already running. While it waits it also lists the `listed`
    directories (the inboxes): a task landing in the same whole second as the last change
    shows in a listing, not in a stat. Returns the settled look, or None when the lanes
    kept changing for `give_up_s` (a peer sending without pause): then the pass ends with
    no look, and the sensor's own kicks carry on."""
    known = settled or {}
    clock, sleep = clock or time.monotonic, sleep or time.sleep
    held = [Held(p) for p in paths]
    listed = listed or []
    try:
        look = [h.signature() for h in held]
        names = [_names(d) for d in listed]
        since = began = clock()
        while clock() - since < SETTLED_AFTER_S and any(
            coarse(sig) and known.get(path) != sig for path, sig in zip(paths, look, strict=True)
        ):
            sleep(every_s)
            again, names_again = [h.signature() for h in held], [_names(d) for d in listed]
            if again != look or names_again != names:
                on_change()
                # What the pass did (moving the task out) is part of the look to settle.
                look, names, since = (
                    [h.signature() for h in held],
                    [_names(d) for d in listed],
                    clock(),
                )
                if since - began >= give_up_s:
                    return None
        return dict(zip(paths, look, strict=True))
    finally:
        for h in held:
            h.close()


def write_looked(look: dict[str, Signature], path: str = LOOKED_FILE) -> None:
    """Leave the pass's settled look for the sensor: `path sig...` lines, written then
    renamed so the sensor reads a whole file. Nothing is written without /run/dispatch."""
    text = "".join(f"{p}\t{' '.join(map(str, sig))}\n" for p, sig in look.items())
    tmp = f"{path}.{posix.getpid()}.tmp"
    try:
        fd = posix.open(
            tmp, posix.O_WRONLY | posix.O_CREAT | posix.O_TRUNC | posix.O_NOFOLLOW | posix.O_CLOEXEC
        )
        try:
            posix.write(fd, text.encode("utf-8", "surrogateescape"))
        finally:
            posix.close(fd)
        posix.rename(tmp, path)
    except OSError:
        pass  # no sensor on this node: nobody reads it


class LookedFile:
    """The sensor's side: a pass's look, read once each time the file is replaced."""

    __slots__ = ("last", "path")

    def __init__(self, path: str = LOOKED_FILE) -> None:
        self.path, self.last = path, (0, 0)

    def fresh(self) -> dict[str, Signature] | None:
        """The look a pass left since the last call, or None."""
        try:
            st = posix.stat(self.path)
            if (st.st_ino, st.st_mtime_ns) == self.last:  # a stat in /run: next to nothing
                return None
            with open(self.path, encoding="utf-8", errors="surrogateescape") as handle:
                text = handle.read(1 << 16)
        except OSError:
            return None
        self.last = (st.st_ino, st.st_mtime_ns)
        look: dict[str, Signature] = {}
        for line in text.splitlines():
            name, sep, values = line.partition("\t")
            try:
                sig = tuple(int(v) for v in values.split())
            except ValueError:
                continue
            if sep and sig:
                look[name] = sig
        return look


class ChangeDetector:
    """Decides, sample by sample, when to kick. Pure: `step` takes the looks and the time,
    and `consumed` whether the last kick file is gone (a pass removed it); `adopt` takes a
    pass's settled look."""

    def __init__(self) -> None:
        self.last: list[Signature] | None = None
        self.settle_at: float | None = None
        self.rekick_at: float | None = None
        self.rekick_gap = REKICK_FIRST_S
        self.kicks = 0

    def adopt(self, looked: list[Signature | None], now_looks: list[Signature]) -> bool:
        """A pass looked (settled) and then listed: where its look is what a stat shows now,
        nothing since is news. True when that covers every path, so the kick still waiting
        for a pass (made for a change that pass saw) is not needed."""
        if self.last is None:
            return False
        covered = True
        for i, (seen, now) in enumerate(zip(looked, now_looks, strict=True)):
            if seen is not None and seen == now:
                self.last[i] = now
            else:
                covered = False
        if covered:
            self.settle_at = self.rekick_at = None
            self.rekick_gap = REKICK_FIRST_S
        return covered

    def step(self, looks: list[Signature], now: float, consumed: bool, again: bool = False) -> bool:
        if consumed and not again:
            self.rekick_at, self.rekick_gap = None, REKICK_FIRST_S
        if again and self.rekick_at is None:
            self.rekick_at = now + self.rekick_gap
        if looks != self.last:
            # The first sample is a change too: whatever arrived while no sensor ran.
            previous, self.last = self.last, list(looks)
            if previous is None or len(previous) != len(looks):
                changed = looks
            else:
                changed = [s for s, p in zip(looks, previous, strict=True) if s != p]
            # A second entry in the same whole second would change nothing: one more kick
            # once that second is surely over covers it (only where timestamps are coarse).
            if any(coarse(s) for s in changed):
                self.settle_at = now + SETTLE_KICK_S
            return self._kick(now)
        if self.settle_at is not None and now >= self.settle_at:
            self.settle_at = None
            return self._kick(now)
        if self.rekick_at is not None and now >= self.rekick_at:
            self.rekick_gap = min(self.rekick_gap * 2, REKICK_MAX_S)
            return self._kick(now)
        return False

    def _kick(self, now: float) -> bool:
        self.kicks += 1
        self.rekick_at = now + self.rekick_gap
        return True
