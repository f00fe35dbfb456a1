"""What the signer signs for whom: a pure function over who asks, the execution it belongs
to (if any) and what it asks to sign, so every rule is tested without a socket.

- root: anything this node may sign (`check_may_sign`); root can read the key anyway;
- a process inside a running execution: only a child task of that execution, with the chain
  fields the signer sets itself (parent = the execution's task, hops = its hops + 1, read
  from node-local state), up to DISPATCH_MAX_HOPS, to DISPATCH_CHAIN_PEERS. Checked before
  the group: an agent's user being in group `dispatch` does not widen what its execution
  may say;
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


@dataclass(frozen=True)
class Execution:
    """An execution as node-local state knows it."""

    task_id: str
    hops: int | None  # None: its started record does not say
    running: bool  # started and no result yet


@dataclass(frozen=True)
class Policy:
    node: str
    group_gid: int | None  # None: no group `dispatch` on this host
    peers: tuple[str, ...]
    chain_peers: tuple[str, ...]  # empty: every peer
    max_hops: int


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
    if caller.uid == 0:
        return Decision(True, "root", body)
    kind = body.get("kind")
    if caller.execution:
        return _child(caller, policy, body, execution)
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
