"""Running the agent under supervision: its whole process group ended at the deadline even
when it prints nothing, output streamed to the share log and capped there as well as in
memory, and how it ended classified into a status."""

from __future__ import annotations

import contextlib
import os
import pwd
import selectors
import signal
import time
from pathlib import Path
from typing import IO

from dispatch.core.errors import UsageError
from dispatch.core.model import Envelope, Status
from dispatch.core.node import Node
from dispatch.core.runner import spawn_agent
from dispatch.core.wire import now_utc, rfc3339
from dispatch.receive.output import Outcome, Output, ShareLog, log_header
from dispatch.signer.caller import forget_agent, record_agent

GRACE_S = 5.0
TIMEOUT_EXIT = 124


AGENT_KEEPS = ("DISPATCH_CONFIG", "DISPATCH_FAKE_AGENT_LOG")


def agent_user(node: Node) -> str | None:
    """Who the agent runs as: DISPATCH_RUN_AS, and never root unless it says `root`. None:
    as this (unprivileged) process. Raises when an executor running as root has no user
    to drop to, rather than run the agent as root by default."""
    if os.geteuid() != 0:
        return None
    if not node.cfg.run_as:
        raise UsageError(
            "DISPATCH_RUN_AS is unset and the executor runs as root: the agent never runs "
            "as root unless DISPATCH_RUN_AS=root; `dispatch init` sets dispatch-agent"
        )
    try:
        pwd.getpwnam(node.cfg.run_as)
    except KeyError:
        raise UsageError(
            f"DISPATCH_RUN_AS={node.cfg.run_as}: no such user (the packages create "
            "dispatch-agent; or `dispatch init --run-as USER`)"
        ) from None
    return node.cfg.run_as


def agent_env(node: Node, envelope: Envelope) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM")
        and (not k.startswith("DISPATCH_") or k in AGENT_KEEPS)
    }
    env["DISPATCH_TASK_ID"] = envelope.id
    env["DISPATCH_HOPS"] = str(envelope.hops)
    env["DISPATCH_NODE"] = node.name
    # Where to ask for a child task's signature (the agent holds no key): not a secret.
    env["DISPATCH_SIGNER_SOCKET"] = str(node.cfg.signer_socket)
    if node.cfg.run_as and os.geteuid() == 0:
        user = pwd.getpwnam(node.cfg.run_as)
        env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
    return env


class _Stop:
    """SIGTERM/SIGINT/SIGHUP (systemctl stop, hard killswitch, cancel) become a request to
    end the agent and still publish a `killed` result."""

    def __init__(self) -> None:
        self.signum = 0
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.old_fd = signal.set_wakeup_fd(self.write_fd)
        self.old_handlers = {
            signum: signal.signal(signum, self._handle)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }

    def _handle(self, signum: int, _frame: object) -> None:
        self.signum = signum

    def close(self) -> None:
        signal.set_wakeup_fd(self.old_fd)
        for signum, handler in self.old_handlers.items():
            signal.signal(signum, handler)
        os.close(self.read_fd)
        os.close(self.write_fd)


def _killpg(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def run_agent(
    node: Node, envelope: Envelope, argv: list[str], stdin: bytes | None, log_path: Path
) -> Outcome:
    stop = _Stop()
    agent_pgid = 0
    began = time.monotonic()
    timed_out = stalled = False
    stall_s = node.cfg.stall_s
    log = ShareLog(node, envelope.id, log_path)
    output = Output(node, envelope, log)
    try:
        log.write(log_header(envelope))
        try:
            user = agent_user(node)
        except UsageError as exc:
            log.write(f"# not started: {exc}\n".encode())
            return Outcome(
                Status.ERROR, 126, f"agent not started: {exc}", 0, False, "", "", log.close()
            )
        try:
            proc = spawn_agent(
                argv,
                env=agent_env(node, envelope),
                cwd=None,
                user=user,
                with_stdin=stdin is not None,
            )
        except OSError as exc:
            log.write(f"# cannot start agent {argv[0]}: {exc.strerror}\n".encode())
            return Outcome(
                Status.ERROR,
                127,
                f"cannot start agent {argv[0]}: {exc.strerror}",
                0,
                False,
                "",
                "",
                log.close(),
            )
        # The agent leads a new session: the local signer knows its processes by it.
        record_agent(node.state, proc.pid, envelope.id)
        agent_pgid = proc.pid
        if stdin is not None and proc.stdin is not None:
            _feed_stdin(proc.stdin, stdin)
        assert proc.stdout is not None
        out_fd = proc.stdout.fileno()
        os.set_blocking(out_fd, False)
        sel = selectors.DefaultSelector()
        sel.register(out_fd, selectors.EVENT_READ)
        sel.register(stop.read_fd, selectors.EVENT_READ)
        deadline = time.monotonic() + envelope.timeout_s
        last_output = time.monotonic()
        kill_at: float | None = None
        exited_at: float | None = None
        eof = False
        while True:
            now = time.monotonic()
            if not (timed_out or stalled or stop.signum) and now >= deadline:
                timed_out = True
            if stall_s and not (timed_out or stalled or stop.signum) and exited_at is None:
                stalled = now - last_output >= stall_s
            if (timed_out or stalled or stop.signum) and kill_at is None:
                _killpg(proc.pid, signal.SIGTERM)
                kill_at = now + GRACE_S
            if kill_at is not None and now >= kill_at:
                _killpg(proc.pid, signal.SIGKILL)
                kill_at = float("inf")
            if exited_at is None and proc.poll() is not None:
                exited_at = now
                # Children the agent left behind would hold the pipe open forever.
                _killpg(proc.pid, signal.SIGKILL)
            if exited_at is not None and (eof or now - exited_at > 2.0):
                break
            waits = [1.0, deadline - now]
            if stall_s:
                waits.append(last_output + stall_s - now)
            if kill_at is not None and kill_at != float("inf"):
                waits.append(kill_at - now)
            if eof:
                waits.append(0.05)
            for key, _ in sel.select(max(0.0, min(waits))):
                if key.fd == stop.read_fd:
                    with contextlib.suppress(BlockingIOError):
                        os.read(stop.read_fd, 512)
                    continue
                try:
                    chunk = os.read(out_fd, 65536)
                except BlockingIOError:
                    continue
                if not chunk:
                    eof = True
                    sel.unregister(out_fd)
                    continue
                last_output = time.monotonic()
                output.feed(chunk)
            log.flush()
        sel.close()
        proc.stdout.close()
        returncode = proc.wait()
        if stalled:
            status, exit_code, reason = stalled_outcome(stall_s, output.reader.output_tail())
        else:
            status, exit_code, reason = _classify(
                node,
                envelope.id,
                returncode,
                timed_out,
                stop.signum,
                envelope.timeout_s,
                time.monotonic() - began,
            )
        log.write(
            f"\n# ended {rfc3339(now_utc())} status={status} exit={exit_code}"
            f"{' reason=' + reason if reason else ''}\n".encode()
        )
    finally:
        if agent_pgid:
            forget_agent(node.state, agent_pgid)
        stop.close()
        log_rest = log.close()
    return output.outcome(status, exit_code, reason, log_rest)


def stalled_outcome(stall_s: int, tail: str) -> tuple[Status, int, str]:
    """A task ended by the stall guard, with the agent's last line of output."""
    last = tail.rstrip("\n").rpartition("\n")[2]
    return (
        Status.STALLED,
        TIMEOUT_EXIT,
        f"no output for {stall_s}s (DISPATCH_STALL_S); last output: "
        + (repr(last[-200:]) if last else "none"),
    )


def _feed_stdin(pipe: IO[bytes], data: bytes) -> None:
    import threading

    def feed() -> None:
        with contextlib.suppress(OSError):
            pipe.write(data)
        with contextlib.suppress(OSError):
            pipe.close()

    threading.Thread(target=feed, daemon=True).start()


def _stopped(
    node: Node, task_id: str, returncode: int, signum: int, elapsed: float
) -> tuple[Status, int, str]:
    """Why were we asked to stop? The answer decides the result's status."""
    cancelled = node.state.cancel_reason(task_id)
    if cancelled is not None:
        return Status.CANCELLED, returncode, cancelled
    ceiling = os.environ.get("DISPATCH_RUNTIME_MAX_S", "")
    if ceiling.isdigit() and elapsed >= int(ceiling) - 1:
        return (
            Status.TIMEOUT,
            TIMEOUT_EXIT,
            f"unit RuntimeMaxSec={ceiling} reached (the hard ceiling above timeout_s)",
        )
    killswitch = node.spool.killswitch()
    if killswitch.hard:
        return Status.KILLED, returncode, f"hard KILLSWITCH: {killswitch.reason}"
    if _host_stopping():
        return (
            Status.INTERRUPTED,
            returncode,
            "host shutting down: execution stopped; not run again",
        )
    return Status.KILLED, returncode, f"execution stopped by {signal.Signals(signum).name}"


def _host_stopping() -> bool:
    """systemd says `stopping` while it shuts the system down."""
    if not os.environ.get("INVOCATION_ID"):
        return False  # not started by systemd
    from dispatch.core.runner import run

    try:
        return run(["systemctl", "is-system-running"], timeout=5).stdout.strip() == "stopping"
    except Exception:
        return False


def _classify(
    node: Node,
    task_id: str,
    returncode: int,
    timed_out: bool,
    signum: int,
    timeout_s: int,
    elapsed: float,
) -> tuple[Status, int, str]:
    if timed_out:
        return Status.TIMEOUT, TIMEOUT_EXIT, f"exceeded timeout_s={timeout_s}"
    if signum:
        return _stopped(node, task_id, returncode, signum, elapsed)
    if returncode < 0:
        name = signal.Signals(-returncode).name
        why = f"agent killed by {name}"
        if -returncode == signal.SIGKILL and oom_kills() > 0:
            why += f" (out of memory: over MemoryMax={node.cfg.memory_max})"
        return Status.KILLED, returncode, why
    if returncode == 0:
        return Status.OK, 0, ""
    return Status.ERROR, returncode, f"agent exited with status {returncode}"


def oom_kills() -> int:
    """OOM kills in this process's memory cgroup: v2 `memory.events`, v1 `memory.oom_control`
    (these machines run the hybrid layout, memory on v1)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        _, controllers, path = line.split(":", 2)
        candidates = []
        if controllers == "":
            candidates.append(Path("/sys/fs/cgroup") / path.lstrip("/") / "memory.events")
        elif "memory" in controllers.split(","):
            candidates.append(
                Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.oom_control"
            )
        for candidate in candidates:
            try:
                for stat_line in candidate.read_text().splitlines():
                    key, _, value = stat_line.partition(" ")
                    if key == "oom_kill" and int(value) > 0:
                        return int(value)
            except (OSError, ValueError):
                continue
    return 0
