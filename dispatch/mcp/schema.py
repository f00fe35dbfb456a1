"""The MCP tools' structured output: the SDK publishes these as each tool's outputSchema and
checks every return value against it. Plain TypedDicts, so importing this needs no SDK."""

# No `from __future__ import annotations`: pydantic reads these annotations at run time.

from typing import TYPE_CHECKING, Literal, NotRequired, cast

from dispatch.core.model import Result

if TYPE_CHECKING:
    from typing import TypedDict
else:
    try:  # pydantic reads nested TypedDicts on Python < 3.12 only from typing_extensions
        from typing_extensions import TypedDict
    except ImportError:  # no pydantic then, and no SDK either: load_sdk() says so
        from typing import TypedDict


# A signed result, schema 4, exactly as `dispatch result ID --json` prints it ("from" is a
# keyword: the functional form).
ResultOut = TypedDict(
    "ResultOut",
    {
        "schema": int,
        "kind": Literal["result"],
        "from": str,
        "to": str,
        "id": str,
        "answered_by": str,
        "answered_at": str,
        "request": str,
        "status": Literal[
            "ok", "error", "timeout", "killed", "interrupted", "cancelled", "rejected", "stalled"
        ],
        "exit_code": int,
        "elapsed_s": float,
        "log_path": str,
        "final_text": str,
        "output_tail": str,
        "output_bytes": int,
        "perm_mode": str,
        "started_at": str | None,
        "truncated": bool,
        "unit": str,
        "reason": str,
        "kid": str,
        "sig": str,
    },
)


class TaskOut(TypedDict):
    """Where a task is, and its verified result once it has one."""

    id: str
    done: bool
    stage: str
    signature_verified: bool
    result: ResultOut | None


SendOut = TypedDict(
    "SendOut",
    {
        "id": str,
        "from": str,
        "to": str,
        "parent": str | None,
        "hops": int,
        "kid": str,
        "path": str,
        "waited": bool,
        "done": bool,
        "stage": str,
        "signature_verified": bool,
        "result": ResultOut | None,
    },
)


SendOut.__doc__ = (
    "The task as sent (id, lanes, its place in a chain: parent and hops), and "
    "with wait=true its verified result."
)


class KillswitchOut(TypedDict):
    on: bool
    hard: bool
    reason: str


class LaneOut(TypedDict):
    lane: str
    direction: Literal["in", "out"]
    inbox: int
    pending_ack: int
    queued: int
    running: int
    done: int
    rejected: int


class PeerOut(TypedDict):
    node: str
    heartbeat_age_s: float | None
    stale: bool
    key_problem: str
    # What the peer's own heartbeat says is wrong with its config ("" for nothing): a claim.
    config_problem: str
    version: NotRequired[str | None]
    killswitch: NotRequired[bool | None]


class ExecutionOut(TypedDict):
    id: str
    lane: str
    unit: str | None
    state: str
    started_at: str | None
    elapsed_s: float | None
    memory_bytes: int | None


class FaultOut(TypedDict):
    key: str
    reason: str
    message: str
    since: str
    count: int


class StatusOut(TypedDict):
    node: str
    root: str
    version: str
    killswitch: KillswitchOut
    lanes: list[LaneOut]
    executions: list[ExecutionOut]
    peers: list[PeerOut]
    faults: list[FaultOut]
    root_problem: str | None


class CancelOut(TypedDict):
    """What `dispatch cancel ID --json` says: a request sent, or the task already ended."""

    id: str
    requested: bool
    lane: str
    path: str | None
    finished: str | None


class LogsOut(TypedDict):
    """A piece of a task's log (the agent's output as it runs), from `offset` on."""

    id: str
    offset: int
    next_offset: int
    text: str
    done: bool
    stage: str


def result_out(result: Result) -> ResultOut:
    return cast(ResultOut, result.to_json())


def task_out(task_id: str, stage: str, result: Result | None) -> TaskOut:
    return {
        "id": task_id,
        "done": result is not None,
        "stage": "done" if result else stage,
        "signature_verified": result is not None,
        "result": result_out(result) if result is not None else None,
    }
