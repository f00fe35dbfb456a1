"""The one place that knows node-local state (`DISPATCH_STATE_DIR`, systemd's
`StateDirectory=`): the replay ledger, started markers, the queue index and the promoter's
lock. None of it is on the share: a peer cannot forge or erase it."""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dispatch.core.faults import Faults
from dispatch.core.fsio import atomic_write, link_new, write_new
from dispatch.core.model import Stage


@dataclass(frozen=True)
class LedgerEntry:
    task_id: str
    sha256: str
    stage: Stage
    lane: str
    at: float


@dataclass(frozen=True)
class NodeState:
    path: Path

    def ensure(self) -> None:
        for sub in ("seen", "started", "queue", "run", "cancel"):
            (self.path / sub).mkdir(parents=True, exist_ok=True, mode=0o700)

    @property
    def faults(self) -> Faults:
        """Faults that keep recurring (refused lanes, unmovable entries), until they clear."""
        return Faults(self.path / "faults")

    # -- replay ledger --------------------------------------------------------------
    def _seen(self, task_id: str) -> Path:
        return self.path / "seen" / task_id

    def ledger_path(self, task_id: str) -> Path:
        """Where the task's ledger entry is (for the executor's quick start, which reads it
        without this module)."""
        return self._seen(task_id)

    def claim(self, task_id: str, sha256: str, lane: str) -> LedgerEntry | None:
        """Record a first sighting; return None when this call made the claim, else the
        entry that was already there (a replay, or an intake a crash interrupted)."""
        entry = LedgerEntry(task_id, sha256, Stage.INBOX, lane, time.time())
        path = self._seen(task_id)
        if os.path.lexists(path):
            return self.entry(task_id)
        # Whole or not at all (fsio.link_new): a torn entry would read as a replay of a task
        # that never ran.
        if not link_new(path, _entry_bytes(entry)):
            return self.entry(task_id)
        return None

    def entry(self, task_id: str) -> LedgerEntry | None:
        try:
            data = json.loads(self._seen(task_id).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            # A torn entry still proves the id was seen: treat it as a replay.
            return LedgerEntry(task_id, "", Stage.QUEUED, "", 0.0)
        return LedgerEntry(
            task_id,
            data.get("sha256", ""),
            Stage.of_record(data.get("stage", data.get("phase", "accepted"))),
            data.get("lane", ""),
            float(data.get("at", 0)),
        )

    def mark(self, task_id: str, stage: Stage) -> None:
        old = self.entry(task_id)
        entry = LedgerEntry(
            task_id, old.sha256 if old else "", stage, old.lane if old else "", time.time()
        )
        atomic_write(self._seen(task_id), _entry_bytes(entry), mode=0o600)

    def prune(self, older_than_s: float, limit: int = 5000) -> int:
        """Drop ledger entries and started markers older than the freshness window: such an
        envelope is refused as stale anyway. Finished entries only; at most `limit` a call,
        so a heartbeat stays short however large the backlog."""
        cutoff = time.time() - older_than_s
        removed = 0
        for entry in os.scandir(self.path / "seen"):
            if removed >= limit:
                break
            try:
                if entry.name.startswith("."):  # a claim's temp file a crash left behind
                    if entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                    continue
                if entry.stat().st_mtime >= cutoff:
                    continue
                seen = self.entry(entry.name)
                if seen is None or seen.stage not in (Stage.DONE, Stage.REJECTED):
                    continue
                os.unlink(entry.path)
                self._started(entry.name).unlink(missing_ok=True)
                (self.path / "cancel" / entry.name).unlink(missing_ok=True)
                removed += 1
            except (FileNotFoundError, ValueError):
                continue
        return removed

    # -- started markers ------------------------------------------------------------
    def _started(self, task_id: str) -> Path:
        return self.path / "started" / task_id

    def started_path(self, task_id: str) -> Path:
        """Where the task's started marker is claimed (see ledger_path)."""
        return self._started(task_id)

    def mark_started(self, task_id: str, info: dict[str, Any]) -> bool:
        """Claim the single execution of a task. False when it was started before: whatever
        happened since, it must not run again (invariant 1)."""
        try:
            write_new(self._started(task_id), json.dumps(info).encode(), 0o600)
        except FileExistsError:
            return False
        return True

    def started(self, task_id: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self._started(task_id).read_bytes() or b"{}")
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return data

    def update_started(self, task_id: str, info: dict[str, Any]) -> None:
        """Rewrite an existing marker (a Slurm execution adds its job id, and a follower that
        takes over after a restart its own pid). Never creates one: only mark_started claims
        an execution."""
        if self.started(task_id) is None:
            raise FileNotFoundError(f"no started marker for {task_id}")
        atomic_write(self._started(task_id), json.dumps(info).encode(), mode=0o600)

    # -- cancel requests, recorded before acting so no crash or race can lose one ------
    def cancel_path(self, task_id: str) -> Path:
        return self.path / "cancel" / task_id

    def request_cancel(self, task_id: str, reason: str) -> None:
        atomic_write(self.cancel_path(task_id), reason.encode("utf-8"), mode=0o600)

    def cancel_ids(self) -> set[str]:
        try:
            return set(os.listdir(self.path / "cancel"))
        except FileNotFoundError:
            return set()

    def cancel_reason(self, task_id: str) -> str | None:
        try:
            return self.cancel_path(task_id).read_text("utf-8", "replace").strip()
        except FileNotFoundError:
            return None

    # -- queue index: order without parsing every queued envelope on every pass --------
    def index_names(self) -> list[str]:
        return sorted(os.listdir(self.path / "queue"))

    def index_add(self, task_id: str, rank: int, created: str, lane: str) -> None:
        stamp = "".join(ch for ch in created if ch.isdigit())[:20].ljust(20, "0")
        name = f"{rank}-{stamp}-{task_id}-{lane}"
        (self.path / "queue" / name).touch()

    def index_remove(self, name: str) -> None:
        (self.path / "queue" / name).unlink(missing_ok=True)

    # -- launcher bookkeeping (process launcher) ------------------------------------
    def run_dir(self) -> Path:
        return self.path / "run"

    # -- results the share refused: the next promote pass publishes them -------------
    def _outbox(self) -> Path:
        return self.path / "outbox"

    def defer_result(
        self, task_id: str, lane: str, result: dict[str, Any], log_rest: bytes
    ) -> None:
        """Keep a result (and the end of its log) that could not be written to the share,
        or not signed (no `sig`: the local signer did not answer), so the task still ends
        with its one real result once the share, or the signer, is back."""
        outbox = self._outbox()
        outbox.mkdir(mode=0o700, exist_ok=True)
        if log_rest:
            atomic_write(outbox / f"{task_id}.log", log_rest, mode=0o600)
        atomic_write(
            outbox / f"{task_id}.json",
            json.dumps({"lane": lane, "result": result}).encode(),
            mode=0o600,
        )

    def deferred_results(self) -> list[tuple[str, str, dict[str, Any], bytes]]:
        """(task id, lane, result, log rest) of every deferred result; a result without
        `sig` is still to be signed."""
        outbox = self._outbox()
        try:
            names = sorted(os.listdir(outbox))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            task_id = name[: -len(".json")]
            try:
                record = json.loads((outbox / name).read_bytes())
            except (OSError, ValueError):
                continue
            try:
                log_rest = (outbox / f"{task_id}.log").read_bytes()
            except FileNotFoundError:
                log_rest = b""
            if isinstance(record, dict) and isinstance(record.get("result"), dict):
                found.append((task_id, str(record.get("lane")), record["result"], log_rest))
        return found

    def keep_log_rest(self, task_id: str, rest: bytes) -> None:
        """What is still to be appended to a deferred result's log (nothing: forget it)."""
        if rest:
            atomic_write(self._outbox() / f"{task_id}.log", rest, mode=0o600)
        else:
            self.forget_log_rest(task_id)

    def forget_log_rest(self, task_id: str) -> None:
        (self._outbox() / f"{task_id}.log").unlink(missing_ok=True)

    def forget_result(self, task_id: str) -> None:
        self.forget_log_rest(task_id)
        (self._outbox() / f"{task_id}.json").unlink(missing_ok=True)

    # -- what dispatch-sensor puts in the heartbeats it writes (receive/sensor.py) ------
    def record_identity(self, version: str, kid: str) -> None:
        """The version and signing key id, so the sensor, which reads no key, can write the
        same heartbeat as `dispatch heartbeat`. Rewritten only when it changed."""
        data = f"version={version}\nkid={kid}\n".encode()
        path = self.path / "heartbeat.identity"
        try:
            if path.read_bytes() == data:
                return
        except OSError:
            pass
        atomic_write(path, data, mode=0o600)

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Serialise passes on this host (a manual `dispatch promote` beside the service)."""
        fd = os.open(self.path / f"{name}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def parse_index(name: str) -> tuple[str, str] | None:
    """(task id, lane name) from a queue index name, or None if it is not one of ours."""
    parts = name.split("-", 2)
    if len(parts) != 3 or len(parts[2]) < 38:
        return None
    rest = parts[2]
    return rest[:36], rest[37:]


def _entry_bytes(entry: LedgerEntry) -> bytes:
    return json.dumps(
        {
            "id": entry.task_id,
            "sha256": entry.sha256,
            "stage": entry.stage.value,
            "lane": entry.lane,
            "at": entry.at,
        }
    ).encode()


@dataclass(frozen=True)
class SentTask:
    task_id: str
    from_: str
    to: str
    at: float

    @property
    def lane(self) -> str:
        return f"{self.from_}-to-{self.to}"


@dataclass(frozen=True)
class SentLog:
    """The sender's own record of what it sent, and on which lane: the one thing that says
    where to look for a task's result or send its cancel. Where files sit on the share
    decides nothing (anyone can plant a file of any name in any lane). Written to the
    first of `dirs` this user can write (the node's state, else the user's own state
    directory: senders are often not the service user); read from all of them."""

    dirs: tuple[Path, ...]

    def record(self, task_id: str, from_: str, to: str) -> None:
        data = json.dumps({"id": task_id, "from": from_, "to": to, "at": time.time()}).encode()
        failure: OSError | None = None
        for directory in self.dirs:
            try:
                directory.mkdir(parents=True, exist_ok=True, mode=0o700)
                atomic_write(directory / task_id, data, mode=0o600)
                return
            except OSError as exc:
                failure = failure or exc
        assert failure is not None
        raise failure

    def lookup(self, task_id: str) -> SentTask | None:
        for directory in self.dirs:
            try:
                record = json.loads((directory / task_id).read_bytes())
            except (OSError, ValueError):
                continue
            if not isinstance(record, dict):
                continue
            from_, to = record.get("from"), record.get("to")
            if isinstance(from_, str) and isinstance(to, str) and record.get("id") == task_id:
                at = record.get("at")
                return SentTask(task_id, from_, to, float(at) if isinstance(at, int | float) else 0)
        return None


def sent_dirs(state_dir: Path, environ: dict[str, str] | None = None) -> tuple[Path, ...]:
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or os.path.join(
        env.get("HOME") or "/nonexistent", ".local/state"
    )
    own = Path(base) / "dispatch" / "sent"
    return (state_dir / "sent", own) if own != state_dir / "sent" else (own,)
