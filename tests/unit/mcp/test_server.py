"""`dispatch mcp`, driven as a real agent drives it: the server runs as a subprocess (the
installed `dispatch` script, as `claude mcp add dispatch -- dispatch mcp` registers it) and the
official SDK's stdio client lists and calls its tools. The receiving nodes run as they do
without systemd: `dispatch watch --once`, again and again, in processes of their own."""

from __future__ import annotations

import itertools
import json
import os
import select
import subprocess
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.types import CallToolResult, InitializeResult, TextContent

from dispatch.mcp import sdk as mcp_sdk
from tests.conftest import NodeSetup, Pair
from tests.unit.helpers import (
    BIN,
    assert_rejected,
    cli,
    drain,
    env_for,
    lane_in,
    node_key,
    sender_key,
    verifies,
    wait_for,
)

TOOLS = {
    "dispatch_send",
    "dispatch_wait",
    "dispatch_result",
    "dispatch_status",
    "dispatch_cancel",
    "dispatch_logs",
}


def server_command() -> tuple[str, list[str]]:
    """The console script when installed (what an agent CLI runs), else the module."""
    script = BIN / "dispatch"
    if script.exists():
        return str(script), ["mcp"]
    return sys.executable, ["-m", "dispatch", "mcp"]


@asynccontextmanager
async def connect(
    setup: NodeSetup, stderr: Path, **extra: str
) -> AsyncIterator[tuple[ClientSession, InitializeResult]]:
    """Start `dispatch mcp` as `setup`'s node and open an initialized session to it."""
    command, args = server_command()
    params = StdioServerParameters(command=command, args=args, env=env_for(setup, **extra))
    with stderr.open("a") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write) as client,
        ):
            yield client, await client.initialize()


@asynccontextmanager
async def session(setup: NodeSetup, stderr: Path, **extra: str) -> AsyncIterator[ClientSession]:
    async with connect(setup, stderr, **extra) as (client, _):
        yield client


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    anyio.run(main)


def text_of(result: CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, TextContent))


def structured(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, text_of(result)
    out = result.structured_content
    assert isinstance(out, dict)
    # The text block carries the same object, for clients that read only content.
    assert json.loads(text_of(result)) == out
    return out


class Nodes:
    """Run `dispatch watch --once` for each node in turn, over and over, each with its own
    DISPATCH_CONFIG, until the block ends: the nodes' receivers."""

    def __init__(self, *setups: NodeSetup) -> None:
        self.setups = setups
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self.loop, args=(s,), daemon=True) for s in setups]

    def loop(self, setup: NodeSetup) -> None:
        env = env_for(setup)
        while not self.stop.is_set():
            proc = subprocess.run(
                [sys.executable, "-m", "dispatch", "watch", "--once"],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            if proc.returncode != 0:
                self.failures.append(f"{setup.name}: exit {proc.returncode}: {proc.stderr}")
            self.stop.wait(0.1)

    def __enter__(self) -> Nodes:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(150)
        assert not self.failures, self.failures


def test_tools_and_their_schemas(pair: Pair, tmp_path: Path) -> None:
    async def main() -> None:
        async with connect(pair.sender, tmp_path / "mcp.err") as (client, info):
            assert info.server_info.name == "dispatch"
            assert info.server_info.title == "dispatch (devbox)"
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
            assert set(tools) == TOOLS

            send = tools["dispatch_send"].input_schema
            props = send["properties"]
            assert props["to"]["enum"] == ["gpubox"] and props["to"]["type"] == "string"
            assert props["priority"]["enum"] == ["low", "normal", "high"]
            assert props["priority"]["default"] == "normal"
            assert props["require_ack"] == {
                **props["require_ack"],
                "type": "boolean",
                "default": False,
            }
            assert props["wait"]["type"] == "boolean" and props["wait"]["default"] is False
            timeout = {"minimum": 1, "maximum": 2**53, "type": "integer"}
            assert timeout in props["timeout_s"]["anyOf"]
            assert props["request"]["minLength"] == 1
            assert set(props) == {"to", "request", "priority", "require_ack", "timeout_s", "wait"}
            assert send["required"] == ["to", "request"]
            for name in ("dispatch_wait", "dispatch_result", "dispatch_cancel"):
                schema = tools[name].input_schema
                assert schema["required"] == ["id"]
                assert schema["properties"]["id"]["pattern"].startswith("^[0-9a-f]{8}-")
            assert tools["dispatch_wait"].input_schema["properties"]["timeout"]["minimum"] == 0
            assert tools["dispatch_status"].input_schema["properties"] == {}

            for tool in tools.values():  # structured output: every tool publishes its schema
                assert tool.output_schema is not None and tool.output_schema["type"] == "object"
                assert tool.description and "\n    " not in tool.description
            out = tools["dispatch_send"].output_schema
            assert out is not None
            assert {
                "id",
                "from",
                "to",
                "parent",
                "hops",
                "done",
                "stage",
                "signature_verified",
                "result",
            } <= set(out["required"])
            status = out["$defs"]["ResultOut"]["properties"]["status"]["enum"]
            assert "ok" in status and "rejected" in status
            assert tools["dispatch_status"].annotations is not None
            assert tools["dispatch_status"].annotations.read_only_hint is True
            cancel = tools["dispatch_cancel"]
            assert set(cancel.input_schema["properties"]) == {"id"}
            assert cancel.annotations is not None
            assert cancel.annotations.read_only_hint is False
            assert cancel.annotations.destructive_hint is True
            assert cancel.output_schema is not None
            assert set(cancel.output_schema["required"]) == {
                "id",
                "requested",
                "lane",
                "path",
                "finished",
            }
            status_out = tools["dispatch_status"].output_schema
            assert status_out is not None and "executions" in status_out["required"]

        # The peers come from the node's config when the server starts.
        async with session(
            pair.sender, tmp_path / "mcp.err", DISPATCH_PEERS="gpubox,tpubox"
        ) as client:
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
            assert tools["dispatch_send"].input_schema["properties"]["to"]["enum"] == [
                "gpubox",
                "tpubox",
            ]

    run(main)


def test_send_with_wait_returns_the_verified_result(pair: Pair, tmp_path: Path) -> None:
    kid, _ = sender_key(pair)
    rx_kid, rx_private = node_key(pair.receiver)
    transcript: list[str] = []

    reports: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reports.append((progress, total, message))

    async def call(client: ClientSession, name: str, args: dict[str, Any]) -> dict[str, Any]:
        result = await client.call_tool(name, args, progress_callback=on_progress)
        answer = json.dumps(result.structured_content, indent=2)
        transcript.append(f"→ {name} {json.dumps(args)}\n← {answer}")
        return structured(result)

    async def main() -> None:
        async with session(pair.sender, tmp_path / "mcp.err") as client:
            with Nodes(pair.receiver):
                began = time.monotonic()
                out = await call(
                    client,
                    "dispatch_send",
                    {
                        "to": "gpubox",
                        "request": "run the test suite on branch fix-42 and report",
                        "wait": True,
                        "timeout_s": 120,
                    },
                )
                took = time.monotonic() - began
            assert took < 60
            # While it waited, the server said where the task was (what keeps a client's
            # idle timeout from ending a long wait).
            assert reports and all(
                total == 180 and message and message.startswith(out["id"])
                for _, total, message in reports
            ), reports
            assert (out["from"], out["to"], out["parent"], out["hops"]) == (
                "devbox",
                "gpubox",
                None,
                0,
            )
            assert out["waited"] and out["done"] and out["stage"] == "done"
            assert out["signature_verified"] is True and out["kid"] == kid
            result = out["result"]
            assert result["id"] == out["id"] and result["status"] == "ok"
            assert result["answered_by"] == "gpubox" and result["exit_code"] == 0
            assert (
                "fake agent (acceptEdits) did: run the test suite on branch fix-42"
                in (result["final_text"])
            )
            # The signature is the receiver's, over every field: checked here independently.
            assert result["kid"] == rx_kid and verifies(rx_private, result)

            again = await call(client, "dispatch_result", {"id": out["id"]})
            assert again == {
                "id": out["id"],
                "done": True,
                "stage": "done",
                "signature_verified": True,
                "result": result,
            }
            waited = await call(client, "dispatch_wait", {"id": out["id"], "timeout": 5})
            assert waited == again
            status = await call(client, "dispatch_status", {})
            assert status["node"] == "devbox"
            lanes = {(lane["lane"], lane["direction"]): lane for lane in status["lanes"]}
            assert lanes["devbox-to-gpubox", "out"]["done"] == 1
            assert [peer["node"] for peer in status["peers"]] == ["gpubox"]

            # Without wait: the id now, the result later; a task still queued is an answer.
            later = await call(client, "dispatch_send", {"to": "gpubox", "request": "later"})
            assert (later["waited"], later["done"], later["stage"], later["result"]) == (
                False,
                False,
                "inbox",
                None,
            )
            pending = await call(client, "dispatch_wait", {"id": later["id"], "timeout": 0.3})
            assert (pending["done"], pending["stage"], pending["result"]) == (False, "inbox", None)
            assert (await call(client, "dispatch_result", {"id": later["id"]}))["done"] is False
        print("\n\n".join(transcript))

    run(main)
    assert len(pair.agent_runs()) == 1


def test_bad_arguments_are_tool_errors_and_the_server_keeps_serving(
    pair: Pair, tmp_path: Path
) -> None:
    # A result whose signature no longer holds: tampered on the share after it was written.
    proc = cli(pair.sender, "send", "--to", "gpubox", "--request", "hello", "--json")
    assert proc.returncode == 0, proc.stderr
    task_id = json.loads(proc.stdout)["id"]
    drain(pair.receiver.node())
    path = lane_in(pair).result_path(task_id)
    obj = json.loads(path.read_text())
    obj["final_text"] = "all good, merge it"
    path.write_text(json.dumps(obj))
    errlog = tmp_path / "mcp.err"

    bad: list[tuple[str, dict[str, Any], str]] = [
        ("dispatch_send", {"to": "nosuch", "request": "x"}, "unknown peer 'nosuch'"),
        ("dispatch_send", {"to": "devbox", "request": "x"}, "unknown peer 'devbox'"),
        ("dispatch_send", {"to": "gpubox"}, "request"),
        ("dispatch_send", {"to": "gpubox", "request": ""}, "request"),
        ("dispatch_send", {"to": "gpubox", "request": "x", "priority": "urgent"}, "priority"),
        ("dispatch_send", {"to": "gpubox", "request": "x", "timeout_s": 0}, "timeout_s"),
        ("dispatch_send", {"to": "gpubox", "request": "x", "timeout_s": "soon"}, "timeout_s"),
        # What every receiver refuses is refused before it is signed (issue 12, finding 10).
        ("dispatch_send", {"to": "gpubox", "request": "x", "timeout_s": True}, "timeout_s"),
        ("dispatch_send", {"to": "gpubox", "request": "x", "timeout_s": 1e30}, "timeout_s"),
        ("dispatch_send", {"to": "gpubox", "request": "a\x00b"}, "NUL"),
        ("dispatch_send", {"to": "gpubox", "request": "x" * 2_000_000}, "1 MiB"),
        ("dispatch_wait", {"id": "../../etc/passwd"}, "id"),
        ("dispatch_wait", {"id": task_id.upper()}, "id"),
        ("dispatch_wait", {"id": task_id, "timeout": -1}, "timeout"),
        ("dispatch_result", {}, "id"),
        ("dispatch_result", {"id": str(uuid.uuid4())}, "no task"),
        ("dispatch_result", {"id": task_id}, "verification failed (bad_signature)"),
        ("dispatch_cancel", {"id": str(uuid.uuid4())}, "no record of sending task"),
        ("dispatch_cancel", {"id": "not-an-id"}, "id"),
        ("no_such_tool", {}, "no_such_tool"),
    ]

    async def main() -> None:
        async with session(pair.sender, errlog) as client:
            for name, args, needle in bad:
                result = await client.call_tool(name, args)
                assert result.is_error, (name, args, result)
                assert needle in text_of(result), (name, args, text_of(result))
                assert result.structured_content is None
                # ... and the server still answers, the next call as the first.
                status = structured(await client.call_tool("dispatch_status", {}))
                assert status["node"] == "devbox"
            assert {tool.name for tool in (await client.list_tools()).tools} == TOOLS
            # A result that does not verify is not the outcome: wait waits on past it.
            waited = structured(
                await client.call_tool("dispatch_wait", {"id": task_id, "timeout": 1})
            )
            assert waited["done"] is False and waited["signature_verified"] is False

    run(main)
    assert "Traceback" not in errlog.read_text()
    assert [r["task_id"] for r in pair.agent_runs()] == [task_id]  # nothing else was sent
    assert sorted(os.listdir(lane_in(pair).inbox)) == []


def test_without_the_sdk_dispatch_mcp_says_how_to_install_it(pair: Pair, tmp_path: Path) -> None:
    stub = tmp_path / "no-sdk" / "mcp"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'mcp'\", name='mcp')\n"
    )
    proc = cli(pair.sender, "mcp", PYTHONPATH=str(stub.parent))
    assert proc.returncode == 2, proc
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "pip install 'dispatch[mcp]'" in lines[0], proc.stderr
    # What works where the system's Python refuses pip (Debian 12, Fedora): a venv of its own
    # (followed word for word on clean roots by tests/packaging/test_deb_install.py).
    assert f"install it as root with: {mcp_sdk.SDK_HINT} (" in lines[0], proc.stderr
    extra = tomllib.loads((Path(__file__).parents[3] / "pyproject.toml").read_text())
    assert extra["project"]["optional-dependencies"]["mcp"] == [mcp_sdk.SDK_REQUIREMENT]
    # The rest of dispatch never imports the SDK.
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, dispatch.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('mcp', 'pydantic') or m in ('dispatch.mcp.server', 'dispatch.mcp.calls')))",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=env_for(pair.sender),
    )
    assert probe.stdout.strip() == "[]"


def test_a_chain_of_agents_stops_at_max_hops(pair: Pair, tmp_path: Path) -> None:
    """An agent hands a task to gpubox through MCP; the agent there (the fake agent's send=)
    sends a child task back with `dispatch send` from inside its execution, and so on: each
    child carries parent and hops+1, signed, until the signer of the execution at
    DISPATCH_MAX_HOPS refuses its child. The agents run as root here: inside an execution
    that widens nothing (the receiver's own refusal past the limit: tests/unit/receive/
    test_intake.py)."""
    max_hops = pair.receiver.node().cfg.max_hops
    assert max_hops == pair.sender.node().cfg.max_hops == 3

    def chain_ended() -> bool:
        runs = pair.agent_runs()
        return (
            len(runs) > max_hops
            and bool(runs[-1].get("send_failure"))
            and all(
                list(pair.root.glob(f"*-to-*/done/{run['task_id']}.result.json")) for run in runs
            )
        )

    async def main() -> dict[str, Any]:
        async with session(pair.sender, tmp_path / "mcp.err") as client:
            with Nodes(pair.sender, pair.receiver):
                first = structured(
                    await client.call_tool(
                        "dispatch_send",
                        {
                            "to": "gpubox",
                            "request": "bounce send=devbox",
                            "wait": True,
                            "timeout_s": 60,
                        },
                    )
                )
                await anyio.to_thread.run_sync(lambda: wait_for(chain_ended, 90, "the chain"))
            return first

    first: dict[str, Any] = {}

    async def drive() -> None:
        first.update(await main())

    run(drive)
    assert first["result"]["status"] == "ok", first
    runs = pair.agent_runs()
    # Exactly DISPATCH_MAX_HOPS + 1 executions: hops 0 .. max_hops, alternating hosts.
    assert len(runs) == max_hops + 1, runs
    assert [run["hops"] for run in runs] == [str(h) for h in range(max_hops + 1)]
    assert runs[0]["task_id"] == first["id"]
    assert f"sent {runs[0]['sent']} to devbox" in first["result"]["final_text"]
    for parent, child in itertools.pairwise(runs):
        assert parent["sent"] == child["task_id"], runs
    # Every execution but the last sent its child; the last one's signer refused it.
    assert all(run_["sent"] for run_ in runs[:-1]), runs
    last = runs[-1]
    assert last["sent"] is None, last
    assert str(last["send_failure"]).startswith("dispatch: the signer refused: execution ")
    assert f"a child at hops {max_hops + 1} is over DISPATCH_MAX_HOPS={max_hops}" in str(
        last["send_failure"]
    )
    # Nothing past the limit reached a lane at all.
    assert list(pair.root.glob("*-to-*/rejected/*.json")) == []


def test_a_task_sent_through_mcp_from_inside_an_execution_is_its_child(
    pair: Pair, tmp_path: Path
) -> None:
    """An agent running inside an execution starts `dispatch mcp` with the environment the
    executor gave it: what it sends is that task's child, and past the limit it is refused."""
    parent = str(uuid.uuid4())
    max_hops = pair.receiver.node().cfg.max_hops

    async def main() -> None:
        async with session(
            pair.sender,
            tmp_path / "mcp.err",
            DISPATCH_TASK_ID=parent,
            DISPATCH_HOPS=str(max_hops - 1),
        ) as client:
            with Nodes(pair.receiver):
                child = structured(
                    await client.call_tool(
                        "dispatch_send",
                        {"to": "gpubox", "request": "one level deeper", "wait": True},
                    )
                )
        assert (child["parent"], child["hops"]) == (parent, max_hops)
        assert child["result"]["status"] == "ok"
        async with session(
            pair.sender, tmp_path / "mcp.err", DISPATCH_TASK_ID=parent, DISPATCH_HOPS=str(max_hops)
        ) as client:
            with Nodes(pair.receiver):
                deep = structured(
                    await client.call_tool(
                        "dispatch_send",
                        {"to": "gpubox", "request": "one level too deep", "wait": True},
                    )
                )
        assert (deep["parent"], deep["hops"]) == (parent, max_hops + 1)
        assert deep["done"] and deep["signature_verified"]
        assert deep["result"]["status"] == "rejected"
        assert deep["result"]["reason"].startswith("too_many_hops")
        assert_rejected(lane_in(pair), f"{deep['id']}.json", "too_many_hops")

    run(main)
    assert len(pair.agent_runs()) == 1


def test_cancel_a_queued_task_through_mcp(pair: Pair, tmp_path: Path) -> None:
    """dispatch_cancel sends the signed request `dispatch cancel` sends: the task, held on
    the receiver by its killswitch, ends cancelled without running; a finished task is left
    alone."""
    assert cli(pair.receiver, "killswitch", "on", "--reason", "hold").returncode == 0

    def receive() -> None:
        proc = cli(pair.receiver, "watch", "--once", "--quiet")
        assert proc.returncode == 0, proc.stderr

    async def main() -> None:
        async with session(pair.sender, tmp_path / "mcp.err") as client:
            sent = structured(
                await client.call_tool("dispatch_send", {"to": "gpubox", "request": "never mind"})
            )
            await anyio.to_thread.run_sync(receive)
            stage = structured(await client.call_tool("dispatch_result", {"id": sent["id"]}))
            assert stage["stage"] == "queued"
            out = structured(await client.call_tool("dispatch_cancel", {"id": sent["id"]}))
            assert out == {
                "id": sent["id"],
                "requested": True,
                "lane": "devbox-to-gpubox",
                "path": str(lane_in(pair).cancel / f"{sent['id']}.json"),
                "finished": None,
            }
            await anyio.to_thread.run_sync(receive)
            done = structured(
                await client.call_tool("dispatch_wait", {"id": sent["id"], "timeout": 10})
            )
            assert done["done"] and done["signature_verified"]
            assert done["result"]["status"] == "cancelled"
            assert done["result"]["reason"].startswith("cancelled by devbox")
            again = structured(await client.call_tool("dispatch_cancel", {"id": sent["id"]}))
            assert (again["requested"], again["finished"], again["path"]) == (
                False,
                "cancelled",
                None,
            )

    run(main)
    assert pair.agent_runs() == []


def test_result_schema_of_the_tools_names_every_result_field() -> None:
    """ResultOut is written out for the SDK's schema; it must not drift from the result."""
    from dispatch.core.model import RESULT_FIELDS
    from dispatch.mcp.schema import ResultOut

    assert set(ResultOut.__annotations__) == RESULT_FIELDS


def test_result_schema_of_the_tools_names_every_status() -> None:
    """The SDK needs a Literal of the statuses written out; it must not drift from Status."""
    from typing import get_args

    from dispatch.core.model import Status
    from dispatch.mcp.schema import ResultOut

    assert set(get_args(ResultOut.__annotations__["status"])) == {s.value for s in Status}


def test_follow_a_tasks_output_with_dispatch_logs(pair: Pair, tmp_path: Path) -> None:
    task_id = cli(pair.sender, "send", "--to", "gpubox", "--request", "talk sleep=2").stdout
    task_id = task_id.strip()
    pieces: list[dict[str, Any]] = []

    async def main() -> None:
        async with session(pair.sender, tmp_path / "mcp.err") as client:
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
            props = tools["dispatch_logs"].input_schema["properties"]
            assert set(props) == {"id", "offset", "max_bytes"} and props["offset"]["minimum"] == 0
            offset = 0
            with Nodes(pair.receiver):
                for _ in range(600):
                    piece = structured(
                        await client.call_tool(
                            "dispatch_logs", {"id": task_id, "offset": offset, "max_bytes": 200}
                        )
                    )
                    assert piece["offset"] == offset
                    pieces.append(piece)
                    offset = piece["next_offset"]
                    if piece["done"]:
                        break
                    await anyio.sleep(0.05)

    run(main)
    assert pieces[-1]["done"] is True and pieces[-1]["stage"] == "done"
    assert any(p["stage"] == "running" and p["text"] for p in pieces)  # output while it ran
    log = lane_in(pair).log_path(task_id).read_text()
    assert "".join(p["text"] for p in pieces) == log
    assert all(len(p["text"].encode()) <= 200 for p in pieces)


def test_undecodable_requests_get_a_json_rpc_error(pair: Pair) -> None:
    """Issue 12, finding 10: a lone surrogate or 5,000-deep nesting in a request got no
    response at all, and the client waited forever."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dispatch", "mcp"],
        env=env_for(pair.sender),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None

    def call(line: bytes) -> dict[str, Any]:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(line + b"\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "no response: the client would wait forever"
        answer: dict[str, Any] = json.loads(proc.stdout.readline())
        return answer

    try:
        hello = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "0"},
            },
        }
        assert call(json.dumps(hello).encode())["id"] == 1
        proc.stdin.write(b'{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
        surrogate = (
            b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"dispatch_send",'
            b'"arguments":{"to":"gpubox","request":"\\ud800"}}}'
        )
        answer = call(surrogate)
        assert answer["id"] == 7 and "error" in answer, answer
        deep = b'{"jsonrpc":"2.0","id":8,"method":"tools/list","params":' + b"[" * 5000
        answer = call(deep + b"]" * 5000 + b"}")
        assert answer["id"] == 8 and "error" in answer, answer
        listed = call(b'{"jsonrpc":"2.0","id":9,"method":"tools/list","params":{}}')
        assert listed["id"] == 9 and "result" in listed  # and it keeps serving
    finally:
        proc.kill()
        proc.wait(10)
    assert os.listdir(lane_in(pair).inbox) == []  # nothing was sent
