"""The one exception family the CLI turns into a one-line message and an exit code."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    TASK_FAILED = 1
    USAGE = 2
    VERIFICATION = 3
    WAIT_TIMEOUT = 4
    SIGNER = 5  # the local signer did not sign: unreachable, hung, or it refused
    INTERRUPTED = 130  # 128 + SIGINT: the shell's own convention for Ctrl-C


class DispatchError(Exception):
    """Base of every error dispatch reports to a user."""

    exit_code: ExitCode = ExitCode.USAGE


class ConfigError(DispatchError):
    """Configuration is missing or invalid."""


class UsageError(DispatchError):
    """A command was asked for something it cannot do."""


class Rejection(DispatchError):
    """An envelope, result or ack failed intake or verification.

    `reason` is a short machine-readable code (`bad_signature`, `stale`, ...), the
    message the human-readable sentence.
    """

    exit_code = ExitCode.VERIFICATION

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        # The envelope's id when it named a valid one: lets the receiver answer the sender.
        self.task_id: str | None = None


class SigningFailed(DispatchError):
    """Nothing was signed: the local signer could not be reached, did not answer in time,
    or refused. Whoever asked keeps what it wanted signed (or writes nothing) and says so."""

    exit_code = ExitCode.SIGNER


class WaitTimeout(DispatchError):
    exit_code = ExitCode.WAIT_TIMEOUT


class NotFound(DispatchError):
    """A task, result or key that was asked for does not exist."""


class Interrupted(DispatchError):
    """The user stopped a command (Ctrl-C); the message says what goes on without it."""

    exit_code = ExitCode.INTERRUPTED
