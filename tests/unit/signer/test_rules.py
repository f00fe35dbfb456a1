"""The signer's decisions, as a pure function: who asks (root, group `dispatch`, an
execution, anyone else) against what it asks to sign."""

from __future__ import annotations

import uuid
from typing import Any

from dispatch.core.model import SCHEMA
from dispatch.signer.rules import Caller, Execution, Policy, decide

NODE = "devbox"
PARENT = str(uuid.uuid4())
POLICY = Policy(NODE, group_gid=990, peers=("gpubox", "c"), chain_peers=(), max_hops=3)


def task(**kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "schema": SCHEMA,
        "kind": "task",
        "id": str(uuid.uuid4()),
        "from": NODE,
        "to": "gpubox",
        "request": "x",
        "parent": None,
        "hops": 0,
    }
    body.update(kw)
    return body


def cancel() -> dict[str, Any]:
    return {"schema": SCHEMA, "kind": "cancel", "id": str(uuid.uuid4()), "from": NODE}


def result() -> dict[str, Any]:
    return {"schema": SCHEMA, "kind": "result", "to": NODE, "answered_by": NODE}


ROOT = Caller(10, 0, 0, frozenset())
MEMBER = Caller(11, 1000, 1000, frozenset({990}))
PRIMARY = Caller(12, 1001, 990, frozenset())
STRANGER = Caller(13, 1002, 1002, frozenset({27}))
AGENT = Caller(14, 65534, 65534, frozenset(), execution=PARENT)
RUNNING = Execution(PARENT, hops=1, running=True)


def test_root_signs_what_the_node_may_say_and_nothing_else() -> None:
    assert decide(ROOT, POLICY, result(), None).allowed
    assert decide(ROOT, POLICY, task(), None).allowed
    assert not decide(ROOT, POLICY, task(**{"from": "c"}), None).allowed


def test_group_members_sign_tasks_and_cancels_from_this_node() -> None:
    for caller in (MEMBER, PRIMARY):
        assert decide(caller, POLICY, task(), None).allowed
        assert decide(caller, POLICY, cancel(), None).allowed
        refused = decide(caller, POLICY, result(), None)
        assert not refused.allowed and "tasks and cancels only" in refused.why
        assert not decide(caller, POLICY, task(**{"from": "c"}), None).allowed


def test_anyone_else_is_refused_with_one_line_naming_the_group() -> None:
    refused = decide(STRANGER, POLICY, task(), None)
    assert not refused.allowed and refused.body == {}
    assert "group 'dispatch'" in refused.why and "\n" not in refused.why
    no_group = Policy(NODE, None, POLICY.peers, (), 3)
    assert not decide(MEMBER, no_group, task(), None).allowed


def test_an_execution_signs_its_child_with_chain_fields_the_signer_sets() -> None:
    # A request naming other chain fields is refused, not silently changed.
    assert not decide(AGENT, POLICY, task(parent=None, hops=0), RUNNING).allowed
    decision = decide(AGENT, POLICY, task(parent=PARENT, hops=2), RUNNING)
    assert decision.allowed
    assert (decision.body["parent"], decision.body["hops"]) == (PARENT, 2)
    bare = {k: v for k, v in task().items() if k not in ("parent", "hops")}
    decision = decide(AGENT, POLICY, bare, RUNNING)
    assert decision.allowed and (decision.body["parent"], decision.body["hops"]) == (PARENT, 2)


def test_an_execution_cannot_forge_parent_or_hops() -> None:
    forged = decide(AGENT, POLICY, task(parent=str(uuid.uuid4()), hops=2), RUNNING)
    assert not forged.allowed and "its own children" in forged.why
    for hops in (0, 1, 3, True):
        assert not decide(AGENT, POLICY, task(parent=PARENT, hops=hops), RUNNING).allowed


def test_an_execution_is_bounded_by_max_hops_and_the_chain_peers() -> None:
    deep = Execution(PARENT, hops=3, running=True)
    refused = decide(AGENT, POLICY, task(parent=PARENT, hops=4), deep)
    assert not refused.allowed and "DISPATCH_MAX_HOPS=3" in refused.why
    only_c = Policy(NODE, 990, ("gpubox", "c"), ("c",), 3)
    refused = decide(AGENT, only_c, task(parent=PARENT, hops=2), RUNNING)
    assert not refused.allowed and "DISPATCH_CHAIN_PEERS" in refused.why
    assert decide(AGENT, only_c, task(to="c", parent=PARENT, hops=2), RUNNING).allowed
    assert not decide(AGENT, POLICY, task(to="zz", parent=PARENT, hops=2), RUNNING).allowed


def test_an_execution_signs_nothing_once_ended_nor_anything_but_tasks() -> None:
    ended = Execution(PARENT, hops=1, running=False)
    refused = decide(AGENT, POLICY, task(parent=PARENT, hops=2), ended)
    assert not refused.allowed and "not running" in refused.why
    assert not decide(AGENT, POLICY, task(parent=PARENT, hops=2), None).allowed
    unknown_hops = Execution(PARENT, hops=None, running=True)
    assert not decide(AGENT, POLICY, task(parent=PARENT, hops=2), unknown_hops).allowed
    assert not decide(AGENT, POLICY, cancel(), RUNNING).allowed


def test_group_membership_does_not_widen_an_execution() -> None:
    member_agent = Caller(15, 1000, 1000, frozenset({990}), execution=PARENT)
    assert not decide(member_agent, POLICY, cancel(), RUNNING).allowed
    assert not decide(member_agent, POLICY, task(), None).allowed


# The executor of PARENT: root, in the execution's cgroup, the pid (and kernel start time)
# it recorded before anything of the task ran.
EXECUTOR = Caller(20, 0, 0, frozenset(), execution=PARENT, start="4242")
ROOT_AGENT = Caller(21, 0, 0, frozenset(), execution=PARENT, start="4300")
LANE = f"gpubox-to-{NODE}"
AT_WORK = Execution(PARENT, 1, True, executor=(20, "4242"), lane=LANE)


def own_result(**kw: Any) -> dict[str, Any]:
    return {**result(), "id": PARENT, "from": "gpubox", **kw}


def test_the_executor_signs_its_own_tasks_result_on_its_lane_and_nothing_else() -> None:
    assert decide(EXECUTOR, POLICY, own_result(), AT_WORK).allowed
    # Also once its agent has ended: that is when the result is signed.
    agent_ended = Execution(PARENT, 1, False, executor=(20, "4242"), lane=LANE)
    assert decide(EXECUTOR, POLICY, own_result(), agent_ended).allowed
    refusals = {
        "another task's result": own_result(id=str(uuid.uuid4())),
        "its result for another lane": own_result(**{"from": "c"}),
        "a task": task(),
        "a cancel": cancel(),
    }
    for what, body in refusals.items():
        decision = decide(EXECUTOR, POLICY, body, AT_WORK)
        assert not decision.allowed, what
        assert decision.why.startswith(f"the executor of {PARENT}"), (what, decision.why)
    # Once the ledger says the task ended, its executor signs nothing more.
    ended = Execution(PARENT, 1, False, executor=(20, "4242"), lane=LANE, ended=True)
    assert not decide(EXECUTOR, POLICY, own_result(), ended).allowed


def test_root_in_an_execution_but_not_its_executor_signs_only_child_tasks() -> None:
    """An agent may run as root (no DISPATCH_RUN_AS): it is not its execution's executor
    (another pid; or the executor's pid recycled, with another start time)."""
    recycled = Caller(20, 0, 0, frozenset(), execution=PARENT, start="9999")
    for caller in (ROOT_AGENT, recycled):
        refused = decide(caller, POLICY, own_result(), AT_WORK)
        assert not refused.allowed and "only its child tasks" in refused.why
        assert not decide(caller, POLICY, task(**{"from": NODE}), AT_WORK).allowed
        child = decide(caller, POLICY, task(parent=PARENT, hops=2), AT_WORK)
        assert child.allowed and child.body["parent"] == PARENT
    # No executor recorded: nobody of the execution signs its result.
    unrecorded = Execution(PARENT, 1, True, executor=None, lane=LANE)
    assert not decide(EXECUTOR, POLICY, own_result(), unrecorded).allowed
    # A non-root process with the executor's pid and start time is not it either.
    impostor = Caller(20, 65534, 65534, frozenset(), execution=PARENT, start="4242")
    assert not decide(impostor, POLICY, own_result(), AT_WORK).allowed


def test_root_outside_executions_and_the_signers_own_user_sign_as_the_node() -> None:
    assert decide(ROOT, POLICY, own_result(), None).allowed
    owner = Policy(NODE, 990, POLICY.peers, (), 3, owner_uid=1002)
    assert decide(STRANGER, owner, own_result(), None).allowed
    assert not decide(STRANGER, POLICY, own_result(), None).allowed
    # Inside an execution the owner's uid widens nothing either.
    owners_agent = Caller(16, 1002, 1002, frozenset(), execution=PARENT, start="1")
    assert not decide(owners_agent, owner, own_result(), AT_WORK).allowed
