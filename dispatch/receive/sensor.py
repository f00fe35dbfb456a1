"""dispatch-sensor: on a root on a network filesystem, notice other hosts' writes without a
Python start per poll period.

inotify sees no write another host makes on NFS, SMB or sshfs, so such a node used to start a
sandboxed `dispatch promote` every DISPATCH_POLL_SEC whether or not anything had arrived.
This loop instead looks at a few directories every DISPATCH_SENSOR_MS (through descriptors
held open, receive/looks.py), and when one changed it touches the kick file that
`dispatch-watch.path` watches: the promote pass runs only when there is something to do. A
pass leaves its last look behind, so the pass's own moves kick no other pass. It also writes
this node's heartbeat (the same content as `dispatch heartbeat`), which used to cost
another Python start every 15 s.

It holds no key and reads no secret (its unit makes the key ring inaccessible), writes
nothing but the heartbeat and the kick file (which it may take back), and follows nothing on
the share: what it reads there only decides *whether* to kick, never what happens.

Standard library only, and only `posix`, `sys`, `time` (built into the interpreter): it stays
resident, and every import is resident memory (measured with python3 -I -S: `json` adds
1.6 MiB, `typing` 2.2 MiB, `dataclasses` 3 MiB, and even `os` 260 KiB, with
`_collections_abc`, `stat` and `posixpath`), hence plain classes instead of frozen
dataclasses, and `posix`'s functions, which are what `os` re-exports. Its settings come
from the environment the generator writes for its unit (DISPATCH_SENSOR_*), so it never
parses the config.
"""

from __future__ import annotations

import posix
import sys
import time

from dispatch.receive.looks import (
    LOOKED_FILE,
    ChangeDetector,
    Held,
    LookedFile,
    Signature,
    present,
    watched_paths,
)
from dispatch.receive.sensor_heartbeat import heartbeat, read_identity, write_heartbeat

# typing.TYPE_CHECKING without importing typing (2.2 MiB resident): mypy treats any name
# TYPE_CHECKING as true.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence


KICK_FILE = "/run/dispatch/kick"
# Left by a pass that could not finish its work (the share failed, a result is deferred):
# the sensor kicks again, backing off, until a pass ends without leaving it. Not watched by
# the path unit, so in timer mode it is inert (the timer retries there).
AGAIN_FILE = "/run/dispatch/again"
HEARTBEAT_EVERY_S = 15.0  # as dispatch-heartbeat.timer's OnUnitActiveSec= in timer mode
HEARTBEAT_RETRY_S = 2.0  # after a failure: the share came back, or the identity appeared
# New tasks are what latency is measured on: inbox/ every round. Acks, cancels and the
# KILLSWITCH can wait a second: every SLOW_EVERY rounds.
SLOW_EVERY = 4
# After this long with nothing changed, nothing kicked and no look left by a pass, look
# every DISPATCH_SENSOR_IDLE_MS instead of DISPATCH_SENSOR_MS: on sshfs each look is a round
# trip through the ssh client, about 160 us of its CPU when it comes alone (bench/RESULTS.md),
# which 4 times a second is most of an idle node's cost. The first change brings the fast
# rate back; the price is the first task after a quiet spell, which waits half the idle
# period on average instead of half the fast one.
ACTIVE_S = 30.0
# How often each held descriptor is checked against its path: a path's stat costs a lookup
# per component on the server, so not every round.
RECHECK_S = 10.0


class Settings:
    """What to watch and where to write, from the generator's DISPATCH_SENSOR_* values."""

    __slots__ = (
        "again_file",
        "idle_interval_s",
        "interval_s",
        "kick_file",
        "looked_file",
        "node",
        "peers",
        "root",
        "state_dir",
    )

    def __init__(
        self,
        *,
        root: str,
        node: str,
        peers: tuple[str, ...],
        state_dir: str,
        interval_s: float,
        idle_interval_s: float | None = None,
        kick_file: str = KICK_FILE,
        again_file: str = AGAIN_FILE,
        looked_file: str = LOOKED_FILE,
    ) -> None:
        self.root, self.node, self.peers = root, node, peers
        self.state_dir, self.interval_s, self.kick_file = state_dir, interval_s, kick_file
        self.again_file, self.looked_file = again_file, looked_file
        self.idle_interval_s = max(idle_interval_s or interval_s, interval_s)

    def lanes_in(self) -> list[str]:
        return [f"{self.root}/{peer}-to-{self.node}" for peer in self.peers]

    def watched(self) -> list[str]:
        """What another host writes that a pass must act on: tasks (inbox/), acks
        (pending-ack/), cancel requests (cancel/), and the root (the KILLSWITCH)."""
        return self.every_round() + self.every_slow_round()

    def every_round(self) -> list[str]:
        return watched_paths(self.root, self.node, self.peers)[0]

    def every_slow_round(self) -> list[str]:
        return watched_paths(self.root, self.node, self.peers)[1]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings | None:
        """None when the generator wrote no sensor settings (the node runs in timer mode)."""
        root = env.get("DISPATCH_SENSOR_ROOT", "")
        if not root:
            return None
        peers = tuple(p for p in env.get("DISPATCH_SENSOR_PEERS", "").split(",") if p)
        interval_ms = int(env.get("DISPATCH_SENSOR_MS", "250"))
        idle_ms = int(env.get("DISPATCH_SENSOR_IDLE_MS", str(interval_ms)))
        return cls(
            root=root,
            node=env["DISPATCH_SENSOR_NODE"],
            peers=peers,
            state_dir=env["DISPATCH_SENSOR_STATE_DIR"],
            interval_s=interval_ms / 1000,
            idle_interval_s=idle_ms / 1000,
        )


def kick(path: str) -> None:
    """Open for writing and close: the IN_CLOSE_WRITE that PathChanged= reacts to."""
    fd = posix.open(
        path,
        posix.O_WRONLY | posix.O_CREAT | posix.O_TRUNC | posix.O_NOFOLLOW | posix.O_CLOEXEC,
        0o644,
    )
    posix.close(fd)


def consume_kick(path: str = KICK_FILE, again: str = AGAIN_FILE) -> None:
    """What a promote pass does first: everything that changed before this is in the pass;
    a kick the sensor makes after it is a new one, and one it sees still there was not
    taken, so it kicks again."""
    for name in (path, again):
        # Not contextlib.suppress: the sensor imports this module, and contextlib is 0.5 MiB.
        try:  # noqa: SIM105
            posix.unlink(name)
        except OSError:
            pass  # no sensor on this node, or nothing to take


def want_again(path: str = AGAIN_FILE) -> None:
    """What a pass that left work undone does last (see AGAIN_FILE)."""
    try:  # noqa: SIM105
        kick(path)
    except OSError:
        pass  # no /run/dispatch: no sensor on this node


# ----------------------------------------------------------------------------- the loop


def run(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    rounds: int | None = None,
) -> ChangeDetector:
    paths = settings.watched()
    fast = [Held(p) for p in settings.every_round()]
    slow = [Held(p) for p in settings.every_slow_round()]
    looked = LookedFile(settings.looked_file)
    slow_sigs: list[Signature] = []
    detector = ChangeDetector()
    next_beat = active_until = clock()
    recheck_at = next_beat + RECHECK_S
    problem = ""
    done = 0
    while rounds is None or done < rounds:
        now = clock()
        # Local files in /run: a stat each costs next to nothing.
        consumed = detector.rekick_at is not None and not present(settings.kick_file)
        again = present(settings.again_file)
        if now >= recheck_at:
            recheck_at = now + RECHECK_S
            for held in fast + slow:
                held.recheck()
        seen = looked.fresh()
        if done % SLOW_EVERY == 0 or seen is not None:
            slow_sigs = [h.signature() for h in slow]
        sigs = [h.signature() for h in fast] + slow_sigs
        if seen is not None and detector.adopt([seen.get(p) for p in paths], sigs):
            # The pass that left this look saw everything a waiting kick was made for.
            _take_back(settings.kick_file)
        if seen is not None:
            active_until = now + ACTIVE_S
        if detector.step(sigs, now, consumed, again):
            active_until = now + ACTIVE_S
            try:
                kick(settings.kick_file)
            except OSError as exc:
                problem = _report(problem, f"cannot touch {settings.kick_file}: {exc.strerror}")
        if now >= next_beat:
            next_beat = now + HEARTBEAT_EVERY_S
            identity = read_identity(settings.state_dir)
            try:
                if identity is None:
                    raise OSError(0, "no heartbeat.identity yet (`dispatch heartbeat` writes it)")
                write_heartbeat(settings, heartbeat(settings, identity, time.time()))
            except OSError as exc:
                problem = _report(problem, f"heartbeat not written: {exc.strerror}")
                next_beat = now + HEARTBEAT_RETRY_S
            else:
                problem = ""
        done += 1
        sleep(settings.interval_s if now < active_until else settings.idle_interval_s)
    return detector


def _take_back(path: str) -> None:
    try:  # noqa: SIM105
        posix.unlink(path)
    except OSError:
        pass  # a pass took it meanwhile


def _report(previous: str, message: str) -> str:
    # Once per distinct problem, not 4 times a second (journald takes stderr).
    if message != previous:
        print(f"dispatch-sensor: {message}", file=sys.stderr, flush=True)
    return message


LEAN_FLAG = "DISPATCH_SENSOR_LEAN"


def _lean_exec() -> None:
    """Replace this process with an interpreter that loads this module and nothing else:
    the console script (`import re`) and site-packages' start-up stay resident otherwise,
    2 MiB for nothing. -I -S: no site, no user paths; the package's own directory instead."""
    import os  # this process is about to be replaced: what it loads does not stay

    top = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = f"import sys; sys.path.insert(0, {top!r}); from dispatch.receive import sensor; "
    code += "raise SystemExit(sensor.main())"
    os.environ[LEAN_FLAG] = "1"
    os.execv(sys.executable, [sys.executable, "-I", "-S", "-c", code])


def main(argv: Sequence[str] | None = None) -> int:
    if (
        posix.environ.get(LEAN_FLAG.encode()) != b"1"
        and sys.argv[0].rpartition("/")[2] == "dispatch-sensor"
    ):
        _lean_exec()
    # posix.environ, not os.environ: `os` alone is 260 KiB resident (see the docstring).
    env = {
        k.decode("utf-8", "surrogateescape"): v.decode("utf-8", "surrogateescape")
        for k, v in posix.environ.items()
    }
    settings = Settings.from_env(env)
    if settings is None:
        print(
            "dispatch-sensor: this node runs in timer mode (DISPATCH_WATCH_MODE, or a local "
            "root): nothing to watch",
            flush=True,
        )
        return 0
    print(
        f"dispatch-sensor: under {settings.root}, {len(settings.every_round())} inboxes every "
        f"{settings.interval_s * 1000:.0f} ms, {len(settings.every_slow_round())} other paths "
        f"every {settings.interval_s * SLOW_EVERY * 1000:.0f} ms; "
        f"{settings.idle_interval_s * 1000:.0f} and "
        f"{settings.idle_interval_s * SLOW_EVERY * 1000:.0f} ms once idle for {ACTIVE_S:.0f} s",
        flush=True,
    )
    run(settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
