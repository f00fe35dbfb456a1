"""The one place that knows the shared root's layout.

<root>/KILLSWITCH, heartbeats/<node>.json, logs/<node>.jsonl,
<from>-to-<to>/{tmp,inbox,pending-ack,processing,done,rejected}/
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dispatch.core.config import Config

LANE_DIRS = ("tmp", "inbox", "pending-ack", "processing", "done", "rejected", "cancel")
TMP_MAX_AGE_S = 3600
NAME_MAX = 255


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, overwrite: bool = True) -> bool:
    """Write then rename, so readers see the old file or the whole new one. The temp name ends
    in `.tmp`, which every reader of the share ignores. With `overwrite=False` an existing
    target is left alone and False returned (link(2) is not available on every share, so this
    check-then-rename relies on one writer per target, which the layout guarantees)."""
    tmp = path.with_name(f".{path.name[:200]}.{secrets.token_hex(4)}.tmp")
    write_new(tmp, data, mode)
    if not overwrite and os.path.lexists(path):
        os.unlink(tmp)
        return False
    os.rename(tmp, path)
    return True


def write_new(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Create `path` (it must not exist) with all of `data`, synced. A full share refuses
    the data after it let the name in: then nothing is left behind (every retry would add
    another empty file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def dump_json(obj: Any) -> bytes:
    try:
        return (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        # A file name from the share that is not UTF-8 (os.listdir hands its bytes over as
        # lone surrogates): escaped, so the record is still written, and reads back the same.
        return (json.dumps(obj, indent=2, ensure_ascii=True) + "\n").encode("ascii")


@dataclass(frozen=True)
class Killswitch:
    on: bool
    hard: bool = False
    reason: str = ""


@dataclass(frozen=True)
class Lane:
    root: Path
    from_: str
    to: str

    @property
    def name(self) -> str:
        return f"{self.from_}-to-{self.to}"

    @property
    def path(self) -> Path:
        return self.root / self.name

    @property
    def tmp(self) -> Path:
        return self.path / "tmp"

    @property
    def inbox(self) -> Path:
        return self.path / "inbox"

    @property
    def pending_ack(self) -> Path:
        return self.path / "pending-ack"

    @property
    def processing(self) -> Path:
        return self.path / "processing"

    @property
    def done(self) -> Path:
        return self.path / "done"

    @property
    def cancel(self) -> Path:
        """Signed cancel requests from the sender, `<id>.json`."""
        return self.path / "cancel"

    @property
    def rejected(self) -> Path:
        return self.path / "rejected"

    def ensure(self) -> None:
        for sub in LANE_DIRS:
            (self.path / sub).mkdir(parents=True, exist_ok=True)

    def task_name(self, task_id: str) -> str:
        return f"{task_id}.json"

    def result_path(self, task_id: str) -> Path:
        return self.done / f"{task_id}.result.json"

    def log_path(self, task_id: str) -> Path:
        return self.done / f"{task_id}.log"

    def relative(self, path: Path) -> str:
        """Paths recorded in results are relative to the root: each host mounts it elsewhere."""
        return str(path.relative_to(self.root))

    def deliver(self, task_id: str, data: bytes) -> Path:
        """Maildir rule: write in tmp/, rename into inbox/, so a receiver never sees half."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        staged = self.tmp / self.task_name(task_id)
        write_new(staged, data)
        target = self.inbox / self.task_name(task_id)
        os.rename(staged, target)
        return target

    def reject(self, name: str, reason: dict[str, Any], source: Path | None = None) -> Path:
        """Move `<source>/<name>` (default inbox/; a file, symlink, FIFO or directory) to
        `rejected/` and write `<name>.reason.json` beside it. Never follows a symlink."""
        source = self.inbox if source is None else source
        kept = name
        if source == self.cancel and name.endswith(".json"):
            # A refused cancel request is not the task: rejected/<id>.json would read as the
            # task's own rejection to `wait` and to an operator.
            kept = name[: -len(".json")] + ".cancel.json"
        target = self.rejected / _safe_name(kept)
        if os.path.lexists(target):
            target = self.rejected / _safe_name(f"{kept}~{time.time_ns()}")
        record = {"name": name, "from_dir": source.name, "rejected_name": target.name, **reason}
        # The reason first: a crash between the two leaves the entry where it was and a
        # reason the next pass's rejection reuses, never a rejected file without its reason.
        atomic_write(_reason_path(target), dump_json(record))
        try:
            os.rename(source / name, target)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(_reason_path(target))
            raise
        return target

    def stale_tmp(self, now: float) -> Iterator[Path]:
        """Sender temp files older than an hour: senders that died mid-write."""
        for directory in (self.tmp, self.inbox):
            try:
                entries = list(os.scandir(directory))
            except FileNotFoundError:
                continue
            for entry in entries:
                if directory == self.inbox and not entry.name.endswith(".tmp"):
                    continue
                try:
                    age = now - entry.stat(follow_symlinks=False).st_mtime
                except FileNotFoundError:
                    continue
                if age > TMP_MAX_AGE_S:
                    yield Path(entry.path)


def _reason_path(target: Path) -> Path:
    return target.with_name(target.name + ".reason.json")


def _safe_name(name: str) -> str:
    """Names come from another host: keep them when they fit, else a hashed stand-in that
    still leaves room for the `.reason.json` suffix."""
    encoded = os.fsencode(name)
    if len(encoded) + len(".reason.json") <= NAME_MAX and not name.startswith("."):
        return name
    import hashlib

    return "renamed-" + hashlib.sha256(encoded).hexdigest()[:32]


@dataclass(frozen=True)
class Spool:
    root: Path

    @classmethod
    def of(cls, cfg: Config) -> Spool:
        return cls(cfg.root)

    def lane(self, from_: str, to: str) -> Lane:
        return Lane(self.root, from_, to)

    def lanes_in(self, cfg: Config) -> list[Lane]:
        return [self.lane(f, t) for f, t in cfg.lanes_in()]

    def lanes_out(self, cfg: Config) -> list[Lane]:
        return [self.lane(f, t) for f, t in cfg.lanes_out()]

    @property
    def killswitch_path(self) -> Path:
        return self.root / "KILLSWITCH"

    def killswitch(self) -> Killswitch:
        try:
            # O_NONBLOCK: a FIFO named KILLSWITCH must not block every pass.
            fd = os.open(self.killswitch_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    return Killswitch(True, False, "unreadable KILLSWITCH: not a regular file")
                text = os.read(fd, 4096).decode("utf-8", "replace")
            finally:
                os.close(fd)
        except FileNotFoundError:
            return Killswitch(False)
        except OSError as exc:
            # Fail closed: a killswitch we cannot read still stops new executions.
            if exc.errno == errno.ENOENT:
                return Killswitch(False)
            return Killswitch(True, False, f"unreadable KILLSWITCH: {exc.strerror}")
        lines = text.strip().splitlines()
        hard = bool(lines) and lines[0].strip().lower() == "hard"
        reason = " ".join(line.strip() for line in (lines[1:] if hard else lines)).strip()
        return Killswitch(True, hard, reason or "KILLSWITCH present")

    def heartbeat_path(self, node: str) -> Path:
        return self.root / "heartbeats" / f"{node}.json"

    def audit_log_path(self, node: str) -> Path:
        return self.root / "logs" / f"{node}.jsonl"

    def ensure(self, cfg: Config) -> None:
        for sub in ("heartbeats", "logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for lane in self.lanes_in(cfg) + self.lanes_out(cfg):
            lane.ensure()


def set_killswitch(spool: Spool, *, hard: bool, reason: str) -> None:
    text = ("hard\n" if hard else "") + (reason.strip() or "stopped by operator") + "\n"
    atomic_write(spool.killswitch_path, text.encode("utf-8"))


def clear_killswitch(spool: Spool) -> bool:
    try:
        os.unlink(spool.killswitch_path)
    except FileNotFoundError:
        return False
    return True
