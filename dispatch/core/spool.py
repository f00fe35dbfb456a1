"""The one place that knows the shared root's layout: where each stage of a lane lives,
the file-name suffixes, which directories a receiver watches, and how a refused entry is
quarantined with its reason.

<root>/KILLSWITCH, heartbeats/<node>.json, logs/<node>.jsonl,
<from>-to-<to>/{tmp,inbox,pending-ack,processing,done,rejected,cancel}/
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dispatch.core.config import Config
from dispatch.core.digests import sha256_hex
from dispatch.core.errors import Rejection
from dispatch.core.fsio import atomic_write, dump_json, rename_new, write_new
from dispatch.core.model import Stage
from dispatch.core.wire import now_utc, rfc3339, valid_id

LANE_DIRS = ("tmp", "inbox", "pending-ack", "processing", "done", "rejected", "cancel")
# What a sender writes in its outgoing lane.
SENDER_DIRS = ("tmp", "inbox", "cancel")
# What a receiver watches for news: arrivals, acks, executions ending, cancel requests.
WATCHED_DIRS = ("inbox", "pending-ack", "processing", "cancel")
# Set (by dispatch-generator) on dispatch-watch.service when the path unit also watches
# the inboxes level-triggered (DirectoryNotEmpty=, a local root): an entry a pass leaves in
# an inbox would start the next pass as soon as this one exits (promote/linger.py). Its
# value names the very inboxes the path unit watches, as of the last daemon-reload.
INBOX_LEVEL_ENV = "DISPATCH_INBOX_LEVEL"
TASK_SUFFIX = ".json"
ACK_SUFFIX = ".ack"
RESULT_SUFFIX = ".result.json"
LOG_SUFFIX = ".log"
REASON_SUFFIX = ".reason.json"
# Senders write under a name ending so, then rename; every reader skips such names.
PARTIAL_SUFFIX = ".tmp"
TMP_MAX_AGE_S = 3600
NAME_MAX = 255


@dataclass(frozen=True)
class Killswitch:
    on: bool
    hard: bool = False
    reason: str = ""


def level_inboxes_value(root: str, node: str, peers: tuple[str, ...]) -> str:
    """INBOX_LEVEL_ENV's value: `<node>:<peer>,<peer>:<root>` (node names hold no ':' or ',';
    the root, last, may)."""
    return f"{node}:{','.join(peers)}:{root}"


def level_inboxes(value: str) -> list[Path]:
    """The inboxes a value of INBOX_LEVEL_ENV names (none for anything else)."""
    node, _, rest = value.partition(":")
    peers, _, root = rest.partition(":")
    if not node or not root.startswith("/"):
        return []
    return [Lane(Path(root), peer, node).inbox for peer in peers.split(",") if peer]


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

    def watched_dirs(self) -> list[Path]:
        return [self.path / sub for sub in WATCHED_DIRS]

    def stage_dir(self, stage: Stage) -> Path:
        """Where a task file of this stage sits (queued and running share processing/)."""
        dirs = {
            Stage.INBOX: self.inbox,
            Stage.PENDING_ACK: self.pending_ack,
            Stage.QUEUED: self.processing,
            Stage.RUNNING: self.processing,
            Stage.DONE: self.done,
            Stage.REJECTED: self.rejected,
            Stage.SENDING: self.tmp,
        }
        return dirs[stage]

    def stage_of(self, task_id: str) -> Stage:
        """A task's stage as the share shows it (what a sender can see)."""
        name = self.task_name(task_id)
        if self.result_path(task_id).exists():
            return Stage.DONE
        if (self.processing / name).exists():
            # The execution opens done/<id>.log as it starts: what the sender can see of it.
            return Stage.RUNNING if os.path.lexists(self.log_path(task_id)) else Stage.QUEUED
        for stage in (Stage.PENDING_ACK, Stage.INBOX, Stage.REJECTED, Stage.SENDING):
            if (self.stage_dir(stage) / name).exists():
                return stage
        return Stage.UNKNOWN

    @staticmethod
    def in_progress(name: str) -> bool:
        """A name a writer has not finished (the original writes inbox/<id>.json.tmp)."""
        return name.endswith(PARTIAL_SUFFIX)

    @staticmethod
    def valid_task_id(task_id: str) -> bool:
        return valid_id(task_id)

    def task_name(self, task_id: str) -> str:
        return f"{task_id}{TASK_SUFFIX}"

    @staticmethod
    def task_id_of(name: str) -> str:
        """The task id a task file's name gives, or "" when it is not `<id>.json`."""
        task_id = name[: -len(TASK_SUFFIX)] if name.endswith(TASK_SUFFIX) else ""
        return task_id if valid_id(task_id) else ""

    def task_ids(self, directory: Path) -> list[str]:
        """Ids of the task files in one of this lane's directories ([] if unreadable)."""
        try:
            names = os.listdir(directory)
        except OSError:
            return []
        return [task_id for name in names if (task_id := self.task_id_of(name))]

    def ack_path(self, task_id: str) -> Path:
        return self.pending_ack / f"{task_id}{ACK_SUFFIX}"

    def result_path(self, task_id: str) -> Path:
        return self.done / f"{task_id}{RESULT_SUFFIX}"

    def log_path(self, task_id: str) -> Path:
        return self.done / f"{task_id}{LOG_SUFFIX}"

    def reason_path(self, task_id: str) -> Path:
        """The reason record of a task file quarantined under its own name."""
        return self.rejected / f"{self.task_name(task_id)}{REASON_SUFFIX}"

    def relative(self, path: Path) -> str:
        """Paths recorded in results are relative to the root: each host mounts it elsewhere.
        `path` is an entry of one of this lane's directories."""
        return f"{self.name}/{self.dir_name(path.parent)}/{path.name}"

    def dir_name(self, directory: Path) -> str:
        """The layout's name of one of this lane's directories (`inbox`, `done`, ...)."""
        return directory.name

    def deliver(self, task_id: str, data: bytes) -> Path:
        """Maildir rule: write in tmp/, rename into inbox/, so a receiver never sees half."""
        self.tmp.mkdir(parents=True, exist_ok=True)
        staged = self.tmp / self.task_name(task_id)
        write_new(staged, data)
        target = self.inbox / self.task_name(task_id)
        os.rename(staged, target)
        return target

    def reject(
        self,
        name: str,
        exc: Rejection,
        *,
        node: str,
        source: Path | None = None,
        task_id: str | None = None,
    ) -> Path:
        """Move `<source>/<name>` (default inbox/; a file, symlink, FIFO or directory) to
        `rejected/` and write `<name>.reason.json` beside it: the one place that builds the
        reason record. Never follows a symlink."""
        reason = {
            "reason": exc.reason,
            "message": str(exc),
            "at": rfc3339(now_utc()),
            "node": node,
            "task_id": task_id or exc.task_id,
        }
        source = self.inbox if source is None else source
        kept = name
        if source == self.cancel and name.endswith(".json"):
            # A refused cancel request is not the task: rejected/<id>.json would read as the
            # task's own rejection to `wait` and to an operator.
            kept = name[: -len(".json")] + ".cancel.json"
        target = self.rejected / _safe_name(kept)
        if os.path.lexists(target):
            target = self.rejected / _safe_name(f"{kept}~{time.time_ns()}")
        record = {
            "name": name,
            "from_dir": self.dir_name(source),
            "rejected_name": target.name,
            **reason,
        }
        # The reason first: a crash between the two leaves the entry where it was and a
        # reason the next pass's rejection reuses, never a rejected file without its reason.
        atomic_write(_reason_path(target), dump_json(record))
        try:
            # Never over an entry already there (someone may plant one meanwhile).
            rename_new(source / name, target)
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
    return target.with_name(target.name + REASON_SUFFIX)


def _safe_name(name: str) -> str:
    """Names come from another host: keep them when they fit, else a hashed stand-in that
    still leaves room for the `.reason.json` suffix."""
    encoded = os.fsencode(name)
    if len(encoded) + len(".reason.json") <= NAME_MAX and not name.startswith("."):
        return name
    return "renamed-" + sha256_hex(encoded)[:32]


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
        """The root's own directories; the lanes are lanedirs.make_layout's (init)."""
        for sub in ("heartbeats", "logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)


def sender_group(name: str = "dispatch") -> int | None:
    """The gid of group `dispatch` (the packages' sysusers.d makes it), if this host has it."""
    import grp

    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def set_killswitch(spool: Spool, *, hard: bool, reason: str) -> None:
    text = ("hard\n" if hard else "") + (reason.strip() or "stopped by operator") + "\n"
    atomic_write(spool.killswitch_path, text.encode("utf-8"))


def clear_killswitch(spool: Spool) -> bool:
    try:
        os.unlink(spool.killswitch_path)
    except FileNotFoundError:
        return False
    return True
