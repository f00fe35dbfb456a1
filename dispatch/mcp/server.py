"""`dispatch mcp`: a stdio MCP server, so an agent session hands work to a peer with one tool
call.

Built on the official `mcp` SDK, imported only here and only when the server starts: the rest
of dispatch never pays for it. Where dispatch came from pip, `pip install 'dispatch[mcp]'`;
where it came from the distribution's package (which has no SDK to depend on, and whose
Python refuses `pip install`), the SDK goes into a venv of its own that also sees the
system's packages, and `dispatch mcp` runs itself there (`dispatch.mcp.sdk`). This module is
the SDK side: each tool's arguments, schema and description, run off the event loop. What a
tool does is `dispatch.mcp.calls` (the same code as the commands), so a task sent through MCP is
signed, delivered, chained (`parent`, `hops` from DISPATCH_TASK_ID/DISPATCH_HOPS when the
agent itself runs inside an execution) and verified exactly like one sent with `dispatch send`.

Every result a tool returns was verified against this host's key ring first; one that does not
verify is a tool error, never data. A mistake the caller can correct (an unknown peer, a bad
argument, an unknown id) comes back as a tool error (`isError: true`) carrying dispatch's
one-line message, and the server keeps serving.
"""

# No `from __future__ import annotations`: the SDK derives each tool's JSON schema from its
# signature, and the tools are defined inside `build_server` (after the lazy import of the
# SDK), so their annotations must be evaluated where they are written.

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, cast

from dispatch import __version__
from dispatch.core.errors import DispatchError
from dispatch.core.model import MAX_INT, Priority
from dispatch.core.node import Node
from dispatch.core.wire import valid_id
from dispatch.mcp import calls
from dispatch.mcp.schema import CancelOut, LogsOut, SendOut, StatusOut, TaskOut
from dispatch.mcp.sdk import load_sdk
from dispatch.ops import overview

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

# dispatch_send with wait: give up (and say where the task is) after its own timeout plus this.
WAIT_GRACE_S = 60
UUID4_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def build_server(node: Node) -> "MCPServer[Any]":
    """The server for this node: peers (the `to` enum) are read once, here."""
    import anyio
    import anyio.from_thread
    import anyio.to_thread
    from mcp.server.mcpserver import Context, MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp.types import ToolAnnotations
    from pydantic import AfterValidator, Field

    peers = list(node.cfg.peers)
    me = node.name

    def check_peer(name: str) -> str:
        if name not in peers:
            known = ", ".join(peers) or "none configured (DISPATCH_PEERS)"
            raise ValueError(f"unknown peer {name!r}: {me}'s peers are {known}")
        return name

    def check_id(text: str) -> str:
        if not valid_id(text):
            raise ValueError(f"not a task id (a lowercase uuid4): {text[:60]!r}")
        return text

    def peer_schema() -> dict[str, Any]:
        return {"enum": peers} if peers else {}

    async def in_thread(call: Callable[[], T]) -> T:
        """Run blocking dispatch code off the event loop; DispatchError becomes a tool
        error with its one-line message. A cancelled call abandons the worker, whose own
        timeout (or the progress reports that can no longer be sent) ends it."""
        try:
            return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
        except DispatchError as exc:
            raise ToolError(calls.tool_message(exc)) from None
        except OSError as exc:
            where = f" {exc.filename}" if exc.filename else ""
            raise ToolError(f"error:{where}: {exc.strerror or exc}") from None

    def progress(
        ctx: Context[Any, Any], task_id: str, total: float
    ) -> Callable[[str, float], None]:
        """Tell the client (if it asked for progress) where the task is while we wait: also
        what keeps a client's idle timeout from ending a long wait."""
        last_stage, last_at = "", -1.0

        def tick(stage: str, elapsed: float) -> None:
            nonlocal last_stage, last_at
            if stage == last_stage and elapsed - last_at < 1.0:
                return  # at most one report a second while nothing changes
            last_stage, last_at = stage, elapsed
            anyio.from_thread.run(
                ctx.report_progress, round(elapsed, 1), total, f"{task_id} {stage}"
            )

        return tick

    server: MCPServer[Any] = MCPServer(
        name="dispatch",
        title=f"dispatch ({me})",
        version=__version__,
        instructions=(
            f"This is dispatch on node {me!r}. dispatch_send hands a task (a plain-language "
            "request for the coding agent on a peer host) to one of the peers "
            f"({', '.join(peers) or 'none configured'}); the task is HMAC-signed, runs there "
            "under that host's limits, and its result comes back signed. With wait=true the "
            "call returns the verified result; otherwise keep the id and call dispatch_wait "
            "or dispatch_result; dispatch_cancel calls a task back. dispatch_status shows "
            "lanes, running tasks, the killswitch and the peers' heartbeats."
        ),
        log_level="WARNING",
    )

    def tool(annotations: ToolAnnotations) -> Callable[[F], F]:
        """Register a tool with structured output (a return type the SDK cannot describe
        fails here, at start), its docstring dedented as its description."""

        def register(fn: F) -> F:
            server.add_tool(
                fn,
                description=inspect.cleandoc(fn.__doc__ or ""),
                annotations=annotations,
                structured_output=True,
            )
            return fn

        return register

    def reading(title: str) -> ToolAnnotations:
        return ToolAnnotations(title=title, read_only_hint=True, open_world_hint=True)

    sending = ToolAnnotations(
        title="Send a task to a peer",
        read_only_hint=False,
        destructive_hint=False,
        idempotent_hint=False,
        open_world_hint=True,
    )

    @tool(sending)
    async def dispatch_send(
        to: Annotated[
            str,
            Field(description="The peer host that runs the task.", json_schema_extra=peer_schema()),
            AfterValidator(check_peer),
        ],
        request: Annotated[
            str,
            Field(
                min_length=1,
                description=("What the agent on the peer should do, in plain language."),
            ),
        ],
        ctx: Context[Any, Any],
        priority: Annotated[
            Literal["low", "normal", "high"], Field(description="Queue order on the peer.")
        ] = "normal",
        require_ack: Annotated[
            bool,
            Field(
                description=(
                    "Hold the task on the peer until someone there runs `dispatch ack ID`."
                )
            ),
        ] = False,
        timeout_s: Annotated[
            int | None,
            Field(
                # strict: `true` is not 1, and 1e30 is not a whole number a receiver takes.
                strict=True,
                ge=1,
                le=MAX_INT,
                description=(
                    "Seconds the agent on the peer may run (default: this node's "
                    f"DISPATCH_DEFAULT_TIMEOUT_S, {node.cfg.default_timeout_s}); the peer refuses "
                    "more than its DISPATCH_TIMEOUT_MAX_S."
                ),
            ),
        ] = None,
        wait: Annotated[
            bool,
            Field(
                description=(
                    "Block until the verified result arrives (at most timeout_s + "
                    f"{WAIT_GRACE_S} s; then done=false and the current stage)."
                )
            ),
        ] = False,
    ) -> SendOut:
        """Send a signed task to a peer host's agent. Returns the task id and where it
        went; with wait=true also the peer's signature-verified result (status, final_text,
        exit_code, ...). A task sent while this agent itself runs inside a dispatch execution
        is that task's child (parent, hops+1); peers refuse chains deeper than their
        DISPATCH_MAX_HOPS."""

        send = functools.partial(
            calls.send_task,
            node,
            to=to,
            request=request,
            priority=Priority(priority),
            require_ack=require_ack,
            timeout_s=timeout_s,
        )
        out = await in_thread(send)
        if wait:
            bound = float((timeout_s or node.cfg.default_timeout_s) + WAIT_GRACE_S)
            task = await in_thread(
                functools.partial(
                    calls.wait_task, node, out["id"], bound, progress(ctx, out["id"], bound)
                )
            )
            out["waited"] = True
            out["done"] = task["done"]
            out["stage"] = task["stage"]
            out["signature_verified"] = task["signature_verified"]
            out["result"] = task["result"]
        return out

    @tool(reading("Wait for a task's result"))
    async def dispatch_wait(
        id: Annotated[
            str,
            Field(pattern=UUID4_PATTERN, description=("The task id dispatch_send returned.")),
            AfterValidator(check_id),
        ],
        ctx: Context[Any, Any],
        timeout: Annotated[
            float,
            Field(
                ge=0,
                description=(
                    "Seconds to wait at most; then done=false and the task's current stage."
                ),
            ),
        ] = 60,
    ) -> TaskOut:
        """Wait for a task's result and return it signature-verified. A task still on its
        way after `timeout` seconds is not an error: done=false, and `stage` says where it is
        (inbox, pending-ack, queued, running, ...). A task the peer refused, or a result whose
        signature fails, is a tool error."""
        return await in_thread(
            functools.partial(calls.wait_task, node, id, timeout, progress(ctx, id, timeout))
        )

    @tool(reading("A task's verified result"))
    async def dispatch_result(
        id: Annotated[
            str,
            Field(pattern=UUID4_PATTERN, description=("The task id dispatch_send returned.")),
            AfterValidator(check_id),
        ],
    ) -> TaskOut:
        """A task's signature-verified result if it has one (done=true), else where it is
        (done=false, stage). An id this node never sent or received, a task the peer
        refused, or a result whose signature fails is a tool error."""
        return await in_thread(functools.partial(calls.get_task, node, id))

    @tool(
        ToolAnnotations(
            title="Cancel a task sent to a peer",
            read_only_hint=False,
            destructive_hint=True,
            idempotent_hint=True,
            open_world_hint=True,
        )
    )
    async def dispatch_cancel(
        id: Annotated[
            str,
            Field(
                pattern=UUID4_PATTERN,
                description=("The id of a task this node sent (dispatch_send returned it)."),
            ),
            AfterValidator(check_id),
        ],
    ) -> CancelOut:
        """Ask the peer to cancel a task this node sent, with a signed request: still
        queued or waiting for an ack, it never runs; running, the peer stops it. Either way
        it ends with a `cancelled` result (dispatch_wait returns it). A task that already
        finished is left alone: requested=false and `finished` holds its status."""

        return await in_thread(functools.partial(calls.cancel_task, node, id))

    @tool(reading("Follow a task's output"))
    async def dispatch_logs(
        id: Annotated[
            str,
            Field(pattern=UUID4_PATTERN, description=("The task id dispatch_send returned.")),
            AfterValidator(check_id),
        ],
        offset: Annotated[
            int,
            Field(ge=0, description="Where to read from: 0, then the last call's next_offset."),
        ] = 0,
        max_bytes: Annotated[
            int, Field(ge=1, le=calls.LOGS_MAX_BYTES, description="At most this much text a call.")
        ] = 64 * 1024,
    ) -> LogsOut:
        """The agent's output on the peer, as it runs (the task's log on the share), from
        `offset`: call again from `next_offset` to follow it. done=true once the result is
        there and everything before it was read; then dispatch_result returns the result."""
        return await in_thread(functools.partial(calls.read_logs, node, id, offset, max_bytes))

    @tool(reading("This node's status"))
    async def dispatch_status() -> StatusOut:
        """This node's lanes (inbox, pending_ack, queued, running, done, rejected per peer
        and direction), its running executions (id, unit, elapsed_s, memory_bytes), the
        killswitch, and each peer's heartbeat age, as `dispatch status --json` prints
        them."""
        return cast(StatusOut, await in_thread(functools.partial(overview.overview, node)))

    return server


def serve(node: Node) -> None:
    """Run the server on stdin/stdout until the client closes it."""
    load_sdk()
    _ = node.keys.signer.kid  # a node that cannot sign fails now, not at the first call
    import anyio

    server = build_server(node)

    async def run() -> None:
        from mcp.server.stdio import stdio_server

        from dispatch.mcp.stdin import CheckedLines

        # The SDK's own run("stdio"), with stdin checked line by line first.
        async with stdio_server(stdin=CheckedLines()) as (read_stream, write_stream):  # type: ignore[arg-type]
            low = server._lowlevel_server
            await low.run(read_stream, write_stream, low.create_initialization_options())

    anyio.run(run)
