"""What the signer signs for whom: a pure function over who asks, the execution it belongs
to (if any) and what it asks to sign, so every rule is tested without a socket.

- a process inside an execution (its cgroup `dispatch-exec@<id>.service`, or its agent's
  session under `dispatch watch`), root or not, checked first: an agent may run as root
  (no DISPATCH_RUN_AS), or as a user in group `dispatch`, and neither widens what its
  execution may say:
  - the execution's executor (the pid, with its kernel start time, that `dispatch exec`
    recorded in node-local state before anything of the task ran; root): a `result` for
    its own task on the lane the ledger admitted it in, until the ledger says it ended;
  - any other process of it: only a child task, while its agent runs, with the chain
    fields the signer sets itself (parent = the execution's task, hops = its hops + 1,
    read from node-local state), up to DISPATCH_MAX_HOPS, to DISPATCH_CHAIN_PEERS;
- root, and the signer's own user (`dispatch watch` run by the key's owner): anything this
  node may sign (`check_may_sign`): both can read the key anyway;
- a member of group `dispatch`: tasks and cancels from this node;
- anyone else: nothing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dispatch.core.errors import UsageError
from dispatch.core.model import SCHEMA, Kind
from dispatch.core.signing import check_may_sign

GROUP = "dispatch"


@dataclass(frozen=True)
class Caller:
    pid: int
    uid: int
    gid: int
    groups: frozenset[int]
    # The task id of the execution this process belongs to (its cgroup, or the agent's
    # process group under `dispatch watch`); "" outside any.
    execution: str = ""
    # The kernel's start time of `pid` (tells a process from a later one with its pid).
    start: str = ""


@dataclass(frozen=True)
class Execution:
    """An execution as node-local state knows it."""

    task_id: str
    hops: int | None  # None: its started record does not say
    running: bool  # its agent runs: started, not ended, and no result yet
    # (pid, kernel start time) of its `dispatch exec`, as that recorded itself; None: none
    executor: tuple[int, str] | None = None
    lane: str = ""  # the lane the ledger admitted it in ("": never admitted here)
    ended: bool = False  # the ledger says it ended (done or rejected)


@dataclass(frozen=True)
class Policy:
    node: str
    group_gid: int | None  # None: no group `dispatch` on this host
    peers: tuple[str, ...]
    chain_peers: tuple[str, ...]  # empty: every peer
    max_hops: int
    owner_uid: int = 0  # the signer's own user: it reads the key, so may its other processes


@dataclass(frozen=True)
class Decision:
    allowed: bool
    why: str  # the rule that allowed it, or the one line saying why not
    body: dict[str, Any]  # what to sign (the request, with the chain fields set)


def _refuse(why: str) -> Decision:
    return Decision(False, why, {})


def decide(
    caller: Caller, policy: Policy, body: dict[str, Any], execution: Execution | None
) -> Decision:
    try:
        check_may_sign(policy.node, body)
    except UsageError as exc:
        return _refuse(str(exc))
    kind = body.get("kind")
    if caller.execution:
        if _is_executor(caller, execution):
            return _own_result(caller, body, execution)
        return _child(caller, policy, body, execution)
    if caller.uid == 0:
        return Decision(True, "root", body)
    if caller.uid == policy.owner_uid:
        return Decision(True, "the signer's own user", body)
    member = policy.group_gid is not None and (
        caller.gid == policy.group_gid or policy.group_gid in caller.groups
    )
    if not member:
        return _refuse(
            f"uid {caller.uid} may not sign as {policy.node}: only root, members of group "
            f"{GROUP!r} (ask an administrator: usermod -aG {GROUP} USER, then log in again) "
            "and running executions may"
        )
    if kind not in (Kind.TASK, Kind.CANCEL):
        return _refuse(f"group {GROUP!r} signs tasks and cancels only, not a {kind}")
    return Decision(True, f"group {GROUP}", body)


def _is_executor(caller: Caller, execution: Execution | None) -> bool:
    return (
        caller.uid == 0
        and bool(caller.start)
        and execution is not None
        and execution.task_id == caller.execution
        and execution.executor == (caller.pid, caller.start)
    )


def _own_result(caller: Caller, body: dict[str, Any], execution: Execution | None) -> Decision:
    task_id = caller.execution
    what = f"the executor of {task_id}"
    if execution is None or not execution.lane or execution.ended:
        return _refuse(f"{what}: the task is not admitted here, or has ended: nothing to sign")
    lane = f"{body.get('from')}-to-{body.get('to')}"
    if body.get("kind") != Kind.RESULT or body.get("id") != task_id:
        return _refuse(f"{what} may sign only that task's result, not a {body.get('kind')}")
    if lane != execution.lane:
        return _refuse(f"{what} signs its result for lane {execution.lane}, not {lane[:140]}")
    return Decision(True, f"result of {task_id}, by its executor", body)


def _child(
    caller: Caller, policy: Policy, body: dict[str, Any], execution: Execution | None
) -> Decision:
    task_id = caller.execution
    what = f"execution {task_id}"
    if body.get("kind") != Kind.TASK or body.get("schema") != SCHEMA:
        return _refuse(f"{what} may sign only its child tasks, not a {body.get('kind')}")
    if execution is None or execution.task_id != task_id or not execution.running:
        return _refuse(f"{what} is not running here: it may sign nothing")
    if execution.hops is None:
        return _refuse(f"{what} has no recorded hops: it may not start a chain")
    hops = execution.hops + 1
    # The chain fields are the signer's, never the caller's; a request that names others
    # is refused rather than silently changed, so the caller learns it.
    if body.get("parent") not in (None, task_id):
        return _refuse(f"{what} may sign only its own children (parent {task_id})")
    if body.get("hops") not in (None, hops) or isinstance(body.get("hops"), bool):
        return _refuse(f"{what}'s children are at hops {hops}, not {body.get('hops')!r}")
    if hops > policy.max_hops:
        return _refuse(
            f"{what}: a child at hops {hops} is over DISPATCH_MAX_HOPS={policy.max_hops}"
        )
    allowed = policy.chain_peers or policy.peers
    if body.get("to") not in allowed:
        return _refuse(
            f"{what} may send children to {', '.join(allowed) or 'no peer'} "
            f"(DISPATCH_CHAIN_PEERS), not {str(body.get('to'))[:64]!r}"
        )
    return Decision(True, f"child of {task_id}", {**body, "parent": task_id, "hops": hops})
