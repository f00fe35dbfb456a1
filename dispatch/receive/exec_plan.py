"""The plan the promoter writes for an execution's quick start (receive/quickstart.py):
everything `dispatch exec` needs to claim the execution and start its agent before it loads
the rest of dispatch. The promoter has it all loaded already; each value comes from the
same function the full executor uses, so the two starts cannot differ.

Written to /run/dispatch/plans/<id>.json, root's and 0600, just before the unit's start;
removed by the execution unit's ExecStopPost=, or here when the start fails. A task without
a plan (no root, another launcher, a plan that could not be written) starts the full way."""

from __future__ import annotations

import contextlib
import json
import os
import pwd

from dispatch.core.digests import sha256_hex
from dispatch.core.errors import DispatchError, Rejection
from dispatch.core.fsio import atomic_write, read_regular
from dispatch.core.model import Stage
from dispatch.core.node import Node
from dispatch.receive.agent import agent_settings, agent_user, invocation
from dispatch.receive.courier import EXEC_RUN_DIR, ChainBox, settings_for
from dispatch.receive.intake import examine
from dispatch.receive.quickstart import PLAN_VERSION, plan_path
from dispatch.signer.records import executor_path

RUNNABLE = (Stage.QUEUED, Stage.RUNNING)


def build(node: Node, task_id: str) -> dict[str, object] | None:
    """The plan, or None where the full executor must decide (and say why)."""
    entry = node.state.entry(task_id)
    if entry is None or entry.stage not in RUNNABLE or not entry.sha256:
        return None
    lane = next((lane for lane in node.spool.lanes_in(node.cfg) if lane.name == entry.lane), None)
    if lane is None:
        return None
    name = lane.task_name(task_id)
    try:
        data = read_regular(lane.processing / name)
        if sha256_hex(data) != entry.sha256:
            return None
        envelope = examine(node.cfg, node.keys, lane, name, data, check_fresh=False).envelope
        user = agent_user(node)
    except (OSError, DispatchError):
        return None  # Rejection and UsageError included: the executor reports them
    env = agent_settings(node, envelope)
    box: dict[str, object] | None = None
    if user is not None and user != "root":
        account = pwd.getpwnam(user)
        chain = ChainBox(EXEC_RUN_DIR / task_id)
        box = {
            "base": str(chain.base),
            "shared": [str(chain.verdicts)],
            "owned": [str(chain.outbox), str(chain.state)],
            "uid": account.pw_uid,
            "gid": account.pw_gid,
        }
        env.update(settings_for(node, chain))
    inv = invocation(node.cfg, envelope)
    return {
        "v": PLAN_VERSION,
        "task_id": task_id,
        "sha256": entry.sha256,
        "root": str(node.cfg.root),
        "task_path": [*lane.processing.relative_to(node.cfg.root).parts, name],
        "ledger": str(node.state.ledger_path(task_id)),
        "stages": [stage.value for stage in RUNNABLE],
        "hold_if_present": [
            str(node.spool.killswitch_path),
            str(node.state.cancel_path(task_id)),
        ],
        "marker": str(node.state.started_path(task_id)),
        "executor_record": str(executor_path(node.state, task_id)),
        "hops": envelope.hops,
        "timeout_s": envelope.timeout_s,
        "argv": inv.argv,
        "with_stdin": inv.stdin is not None,
        "user": user,
        "env": env,
        "box": box,
    }


def write(node: Node, task_id: str) -> bool:
    """Write the task's plan; False (and no plan) where it starts the full way."""
    if os.geteuid() != 0:
        return False  # the quick start trusts root's plans only
    try:
        plan = build(node, task_id)
        if plan is None:
            return False
        executor_path(node.state, task_id).parent.mkdir(mode=0o700, exist_ok=True)
        path = plan_path(task_id)
        path.parent.mkdir(mode=0o700, exist_ok=True)  # in /run/dispatch: no promoter, no plans
        # Not synced: /run does not outlive a crash, nor the plan its unit.
        atomic_write(path, json.dumps(plan).encode(), mode=0o600, durable=False)
    except (OSError, KeyError, Rejection):
        return False
    return True


def drop(task_id: str) -> None:
    with contextlib.suppress(OSError):
        plan_path(task_id).unlink()
