"""Every event, told once: a structured journald entry (when journald is there) and a line in
this node's audit log on the share (`logs/<node>.jsonl`, one writer per file)."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

from dispatch.core import journal
from dispatch.core.wire import now_utc, rfc3339

JOURNAL_SOCKET = journal.SOCKET
# syslog levels, as journald's PRIORITY field wants them
ERR, WARNING, NOTICE, INFO = 3, 4, 5, 6

_echo = False


def set_echo(enabled: bool) -> None:
    """Foreground runs (`dispatch watch`) also print events on stderr."""
    global _echo
    _echo = enabled


def _journal_send(message: str, fields: dict[str, str]) -> bool:
    if not os.path.exists(JOURNAL_SOCKET):
        return False
    return journal.send(message, {"SYSLOG_IDENTIFIER": "dispatch", **fields}, JOURNAL_SOCKET)


def emit(
    node: str,
    audit_log: Path | None,
    event: str,
    message: str,
    *,
    task_id: str | None = None,
    from_: str | None = None,
    to: str | None = None,
    level: int = INFO,
    **extra: Any,
) -> None:
    # Messages quote names from the share, which need not be UTF-8 (lone surrogates from
    # os.listdir): journald and the audit log take UTF-8 only.
    message = _utf8(message)
    extra = {key: _utf8(value) if isinstance(value, str) else value for key, value in extra.items()}
    fields = {"DISPATCH_EVENT": event, "DISPATCH_NODE": node, "PRIORITY": str(level)}
    if task_id:
        fields["DISPATCH_TASK_ID"] = task_id
    if from_:
        fields["DISPATCH_FROM"] = from_
    if to:
        fields["DISPATCH_TO"] = to
    for key, value in extra.items():
        fields["DISPATCH_" + key.upper()] = str(value)
    journaled = _journal_send(message, fields)
    if _echo or (not journaled and level <= WARNING):
        ident = f" {task_id[:8]}" if task_id else ""
        print(f"dispatch[{node}] {event}{ident}: {message}", file=sys.stderr, flush=True)
    if audit_log is not None:
        record = {
            "ts": rfc3339(now_utc()),
            "node": node,
            "event": event,
            "summary": message[:200],
            "task_id": task_id,
            "from": from_,
            "to": to,
            **extra,
        }
        line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        try:
            # One write(2) with O_APPEND: whole lines from this host's processes.
            # O_NOFOLLOW, O_NONBLOCK: the file is on the share; a planted symlink must not
            # redirect the append, nor a FIFO block it.
            fd = os.open(
                audit_log,
                os.O_WRONLY
                | os.O_APPEND
                | os.O_CREAT
                | os.O_CLOEXEC
                | os.O_NOFOLLOW
                | os.O_NONBLOCK,
                0o644,
            )
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as exc:
            # The audit log must never stop a task; journald still has the event.
            if _echo:
                print(f"dispatch[{node}] audit log {audit_log}: {exc.strerror}", file=sys.stderr)


def _utf8(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
