"""The agent's output as an execution keeps it: capped in memory (the result's tail and final
text) and in the share's `done/<id>.log`, which is written as it comes, and held back (for
the result to carry) while the share refuses it."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from dispatch.core import events
from dispatch.core.model import Envelope, Status
from dispatch.core.node import Node
from dispatch.core.wire import now_utc, rfc3339
from dispatch.receive.agent import OutputReader


@dataclass(frozen=True)
class Outcome:
    status: Status
    exit_code: int
    reason: str
    output_bytes: int
    truncated: bool
    final_text: str
    output_tail: str
    # Log bytes the share refused until the end: they go out with the result.
    log_rest: bytes = b""
    # What ran it, when the executor learns that only as it goes (a Slurm job id).
    unit: str = ""


# What of the executor's DISPATCH_ environment the agent keeps. The rest is the node's own
# configuration (the unit reads dispatch.conf into it): the webhook URL with its token, the
# key and state directories. The agent is not trusted with any of it.
HEADER_END = b"# ---\n"


def log_header(envelope: Envelope) -> bytes:
    return (
        f"# task {envelope.id} from {envelope.from_}\n# started "
        f"{rfc3339(now_utc())} timeout={envelope.timeout_s}s "
        f"max_output_bytes={envelope.max_output_bytes}\n".encode()
        + HEADER_END
    )


class Output:
    """The agent's output as it arrives: counted, followed by the profile's reader, written
    to the share log up to the task's cap, echoed to the journal under systemd. Shared by
    every way of running the agent (a child here, a Slurm job followed through its file)."""

    def __init__(self, node: Node, envelope: Envelope, log: ShareLog) -> None:
        self.cap = envelope.max_output_bytes
        self.reader = OutputReader(node.cfg.agent_profile)
        self.log = log
        # Under systemd our stdout is the journal: echo the (capped) output there too.
        self.echo: IO[bytes] | None = (
            sys.stdout.buffer if os.environ.get("JOURNAL_STREAM") else None
        )
        self.logged = self.total = 0

    def feed(self, chunk: bytes, *, already_logged: bool = False) -> None:
        """`already_logged`: bytes an earlier executor of this task wrote to the log (a
        Slurm job followed again after a restart) count and are read, not written again."""
        self.total += len(chunk)
        self.reader.feed(chunk)
        if self.logged >= self.cap:
            return
        part = chunk[: self.cap - self.logged]
        self.logged += len(part)
        if not already_logged:
            self.log.write(part)
            if self.echo is not None:
                self.echo.write(part)
                self.echo.flush()
            if self.logged >= self.cap:
                self.log.write(f"\n# output truncated at {self.cap} bytes\n".encode())

    def outcome(self, status: Status, exit_code: int, reason: str, log_rest: bytes) -> Outcome:
        final_text = self.reader.finish()
        return Outcome(
            status,
            exit_code,
            reason,
            self.total,
            # Every cut is marked: the log at the output cap, final_text (with a note in it).
            self.total > self.cap or self.reader.cut,
            final_text,
            self.reader.output_tail(),
            log_rest,
        )


class ShareLog:
    """done/<id>.log, written as the agent's output arrives. The share may stop answering
    (its server restarting, the network cut): a refused write must not end the execution.
    The bytes wait in memory (no more than the output cap) and go out when the share
    answers again; what still waits at the end goes out with the result."""

    RETRY_S = 1.0

    def __init__(self, node: Node, task_id: str, path: Path) -> None:
        self.node = node
        self.task_id = task_id
        self.path = path
        self.fd: int | None = None
        self.created = False
        self.pending = bytearray()
        self.retry_at = 0.0
        self.failing = ""

    def write(self, data: bytes) -> None:
        self.pending += data
        self.flush()

    def flush(self, force: bool = False) -> None:
        if not self.pending or (self.fd is None and not force and time.monotonic() < self.retry_at):
            return
        try:
            if self.fd is None:
                # O_EXCL, then O_APPEND to the file made so; O_NOFOLLOW: never through a link
                # someone planted on the share meanwhile.
                how = os.O_APPEND if self.created else os.O_CREAT | os.O_EXCL
                self.fd = os.open(
                    self.path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | how, 0o644
                )
                self.created = True
            while self.pending:
                del self.pending[: os.write(self.fd, self.pending)]
        except OSError as exc:
            # A handle from before a reconnect stays dead: open the file again next time.
            self._close_fd()
            self.retry_at = time.monotonic() + self.RETRY_S
            if not self.failing:
                self.failing = exc.strerror or str(exc)
                self.node.emit(
                    "log_write_failed",
                    f"{self.path}: {self.failing}; the agent "
                    "runs on, its output is kept until the share answers",
                    task_id=self.task_id,
                    level=events.WARNING,
                )
            return
        if self.failing:
            self.node.emit("log_write_resumed", f"{self.path}: writing again", task_id=self.task_id)
            self.failing = ""

    def _close_fd(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None

    def close(self) -> bytes:
        """Write what the share takes; return what it still refused."""
        self.flush(force=True)
        self._close_fd()
        rest = bytes(self.pending)
        self.pending.clear()
        return rest
