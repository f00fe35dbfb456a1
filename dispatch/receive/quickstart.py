"""The executor's quick start: the agent started from a plan the promoter wrote, before
`dispatch exec` imports the rest of dispatch.

A fresh executor used to spend ~50 ms importing config, state, model, signing and the
supervisor (their frozen dataclasses, enums and OpenSSL) before its agent started, on every
task. The promoter has all of that loaded: when it starts `dispatch-exec@<id>` it writes
what the start needs (receive/exec_plan.py) to /run/dispatch/plans/<id>.json, root's alone.
This module reads that plan with nothing but the stdlib, the file I/O of core/fsio.py and the
one place that runs processes (core/runner.py), checks what may have changed since, claims
the execution (the started marker, exactly as NodeState.mark_started does) and starts the
agent. The full executor then takes over the running agent (receive/executor.py).

Any doubt means no quick start and nothing done: no plan, a plan that is not root's, the
KILLSWITCH or a cancel request, a ledger that no longer says queued, the share's task file
changed (its sha256 is not the one admitted), a started marker already there. The full
executor then decides, as it always did. Once the marker is claimed, the agent is started
or its failure to start is reported, never left to a second claim.

Deliberately no dataclasses here (their import is 7 ms): QuickStart is a NamedTuple."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from dispatch.core.digests import sha256_hex
from dispatch.core.errors import Rejection
from dispatch.core.fsio import held, open_dir, read_regular, write_new
from dispatch.core.pids import process_start_time
from dispatch.core.runner import spawn_agent
from dispatch.core.wire import now_utc, rfc3339
from dispatch.signer.records import write_executor_record

if TYPE_CHECKING:
    import subprocess  # loaded by spawn_agent: the promoter loads this module too

PLAN_DIR = Path("/run/dispatch/plans")
PLAN_VERSION = 2
# The agent inherits the executor's environment but none of dispatch's settings (the config
# names the key directory and the share) and not systemd's channels to this unit.
AGENT_KEEPS = ("DISPATCH_CONFIG", "DISPATCH_FAKE_AGENT_LOG")
AGENT_DROPS = ("NOTIFY_SOCKET", "JOURNAL_STREAM")


class QuickStart(NamedTuple):
    """An execution this process claimed and whose agent it started at `spawned_at` (unix
    time, for the record; `spawned_mono`, time.monotonic(), for its deadline, `timeout_s`
    after it), or failed to start (`error`, and no `proc`). `data` is the task file's bytes
    as admitted, read before the agent started; `box` its chain box, if it has one."""

    task_id: str
    data: bytes
    started_at: str
    spawned_at: float
    spawned_mono: float
    timeout_s: float
    proc: subprocess.Popen[bytes] | None
    error: str | None
    box: Path | None


def plan_path(task_id: str) -> Path:
    return PLAN_DIR / f"{task_id}.json"


def inherited_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What of the executor's environment the agent gets."""
    return {
        k: v
        for k, v in environ.items()
        if k not in AGENT_DROPS and (not k.startswith("DISPATCH_") or k in AGENT_KEEPS)
    }


def make_box(base: Path, shared: list[Path], owned: list[Path], uid: int, gid: int) -> None:
    """An execution's chain box (receive/courier.py): `base` and `shared` root's, `owned`
    the agent's. Refuses a `base` that exists (the courier replaces a leftover one)."""
    base.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    base.mkdir(mode=0o755)
    for path in shared:
        path.mkdir(mode=0o755)
    for path in owned:
        path.mkdir(mode=0o700)
        os.chown(path, uid, gid)


def _read_plan(task_id: str) -> dict[str, Any] | None:
    try:
        fd = os.open(plan_path(task_id), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        # Root wrote it, and only root could have: anything else is not a plan.
        if not stat.S_ISREG(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
            return None
        data = os.read(fd, 4 << 20)
    finally:
        os.close(fd)
    plan = json.loads(data)
    if (
        not isinstance(plan, dict)
        or plan.get("v") != PLAN_VERSION
        or plan.get("task_id") != task_id
    ):
        return None
    return plan


def _share_bytes(plan: dict[str, Any]) -> bytes:
    """The task file, reached from the root through directories held open and never through
    a link (core/lanedirs.py does the same for the full executor)."""
    *dirs, name = plan["task_path"]
    fds = [open_dir(plan["root"], follow=True)]
    try:
        for part in dirs:
            fds.append(open_dir(part, dir_fd=fds[-1]))
        return read_regular(held(fds[-1]) / name)
    finally:
        for fd in fds:
            os.close(fd)


def _still_queued(plan: dict[str, Any]) -> bytes | None:
    """The admitted bytes, when nothing has changed since the plan was written."""
    if any(os.path.lexists(path) for path in plan["hold_if_present"]):
        return None  # KILLSWITCH or a cancel request: the full executor answers them
    with open(plan["ledger"], "rb") as ledger:
        entry = json.loads(ledger.read())
    if entry.get("stage") not in plan["stages"] or entry.get("sha256") != plan["sha256"]:
        return None
    data = _share_bytes(plan)
    if sha256_hex(data) != plan["sha256"]:
        return None  # swapped on the share: the full executor rejects it
    return data


def start(task_id: str, environ: Mapping[str, str] = os.environ) -> QuickStart | None:
    """Claim the execution and start its agent from the plan; None when there is no plan or
    anything is in doubt, with nothing claimed."""
    try:
        plan = _read_plan(task_id)
        if plan is None:
            return None
        data = _still_queued(plan)
        if data is None:
            return None
        box = plan.get("box")
        base = None if box is None else Path(box["base"])
        if box is not None and base is not None:
            make_box(
                base,
                [Path(p) for p in box["shared"]],
                [Path(p) for p in box["owned"]],
                int(box["uid"]),
                int(box["gid"]),
            )
        timeout_s = float(plan["timeout_s"])
        write_executor_record(Path(plan["executor_record"]))
        started_at = rfc3339(now_utc())
        # The same marker, with the same fields, as the full executor's NodeState.mark_started.
        info = {
            "started_at": started_at,
            "pid": os.getpid(),
            "pid_start": process_start_time(os.getpid()),
            "unit": environ.get("DISPATCH_UNIT", ""),
            "hops": plan["hops"],
        }
        write_new(Path(plan["marker"]), json.dumps(info).encode(), 0o600)
    except (OSError, ValueError, KeyError, TypeError, Rejection):
        return None  # FileExistsError (started before) included: the full executor answers
    # Claimed: this execution is the task's one and only. Whatever happens, report it.
    env = inherited_env(environ)
    env.update(plan["env"])
    spawned_at, spawned_mono = time.time(), time.monotonic()
    try:
        proc = spawn_agent(
            plan["argv"], env=env, cwd=None, user=plan["user"], with_stdin=plan["with_stdin"]
        )
    except (OSError, KeyError, TypeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return QuickStart(
            task_id, data, started_at, spawned_at, spawned_mono, timeout_s, None, why, base
        )
    return QuickStart(
        task_id, data, started_at, spawned_at, spawned_mono, timeout_s, proc, None, base
    )


def abandon(quick: QuickStart) -> None:
    """End the agent's whole process group: nothing would follow it. Its started marker stays,
    and recovery answers the task as interrupted."""
    if quick.proc is not None:
        with contextlib.suppress(OSError):
            os.killpg(quick.proc.pid, signal.SIGKILL)
        quick.proc.wait()
