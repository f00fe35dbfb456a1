"""Agent profiles: the command line each one gets and how its answer is read."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

from dispatch.core.config import AgentProfile, Config
from dispatch.core.model import Callback, Envelope, Priority
from dispatch.ops.fake_agent import directives
from dispatch.receive.agent import FINAL_TEXT_MAX, MAX_LINE, TAIL_BYTES, OutputReader, invocation
from tests.conftest import Pair
from tests.unit.helpers import configure, drain, drop, envelope, lane_in, result_json


def an_envelope(request: str = "fix the build", dangerous: bool = False) -> Envelope:
    return Envelope(
        id=str(uuid.uuid4()),
        from_="devbox",
        to="gpubox",
        created="2025-01-01T00:00:00Z",
        priority=Priority.NORMAL,
        request=request,
        require_ack=False,
        require_dangerous=dangerous,
        timeout_s=60,
        max_output_bytes=1000,
        callback=Callback.FILE,
        parent=None,
        hops=0,
        kid="k",
        sig="0" * 128,
    )


def a_cfg(**kw: object) -> Config:
    return Config(root=Path("/r"), node="gpubox", peers=("devbox",), **kw)  # type: ignore[arg-type]


def test_claude_profile_command_line() -> None:
    inv = invocation(a_cfg(agent_bin="claude --model x"), an_envelope("do; $(rm -rf /)"))
    assert inv.argv[:5] == ["claude", "--model", "x", "-p", "do; $(rm -rf /)"]
    assert inv.argv[inv.argv.index("--permission-mode") + 1] == "acceptEdits"
    assert inv.argv[inv.argv.index("--output-format") + 1] == "stream-json"
    assert "--include-partial-messages" in inv.argv and "--verbose" in inv.argv
    assert "--append-system-prompt" in inv.argv
    assert "--dangerously-skip-permissions" not in inv.argv
    assert inv.stdin is None and inv.perm_mode == "acceptEdits"


def test_dangerous_task_gets_bypass_permissions() -> None:
    inv = invocation(a_cfg(), an_envelope(dangerous=True))
    assert inv.perm_mode == "bypassPermissions"
    assert inv.argv[inv.argv.index("--permission-mode") + 1] == "bypassPermissions"


def test_generic_profile_passes_the_request_on_stdin() -> None:
    inv = invocation(
        a_cfg(agent_bin="/usr/bin/env python3 -u worker.py", agent_profile=AgentProfile.GENERIC),
        an_envelope("-p --evil"),
    )
    assert inv.argv == ["/usr/bin/env", "python3", "-u", "worker.py"]
    assert inv.stdin == b"-p --evil"


def line(obj: object) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def test_reader_takes_the_last_result_line_across_chunks() -> None:
    reader = OutputReader(AgentProfile.CLAUDE)
    stream = (
        line({"type": "system"})
        + b"not json at all\n"
        + line({"type": "result", "result": "first"})
        + line({"type": "assistant", "result": "not a result line"})
        + line({"type": "result", "result": "final answer"})
    )
    for i in range(0, len(stream), 7):  # arbitrary chunk boundaries
        reader.feed(stream[i : i + 7])
    assert reader.finish() == "final answer"
    assert reader.output_tail() == stream.decode()


def test_reader_result_without_trailing_newline_and_empty_results() -> None:
    reader = OutputReader(AgentProfile.CLAUDE)
    reader.feed(line({"type": "result", "result": "kept"}))
    reader.feed(line({"type": "result", "result": ""}))  # empty: does not erase
    reader.feed(json.dumps({"type": "result", "result": "last"}).encode())
    assert reader.finish() == "last"


def test_reader_bounds_memory() -> None:
    reader = OutputReader(AgentProfile.CLAUDE)
    reader.feed(b"x" * (MAX_LINE + 10))  # an endless line is dropped, not buffered
    assert len(reader.partial) == 0
    reader.feed(b"more of the same\n" + line({"type": "result", "result": "y" * 100_000}))
    text = reader.finish()
    # Cut, and marked as cut: in the text and for the result's `truncated`.
    assert text.startswith("y" * FINAL_TEXT_MAX) and not text.startswith("y" * (FINAL_TEXT_MAX + 1))
    assert text.endswith(
        f"{FINAL_TEXT_MAX} of 100000 characters kept; the whole output is in the task's log]"
    )
    assert reader.cut
    assert len(reader.output_tail().encode()) <= TAIL_BYTES


def test_generic_reader_marks_an_answer_longer_than_its_tail() -> None:
    reader = OutputReader(AgentProfile.GENERIC)
    reader.feed(b"z" * (TAIL_BYTES + 100))
    assert reader.finish().endswith(
        f"the last {TAIL_BYTES} of {TAIL_BYTES + 100} bytes kept; "
        "the whole output is in the task's log]"
    )
    assert reader.cut
    short = OutputReader(AgentProfile.GENERIC)
    short.feed(b"the answer\n")
    assert short.finish() == "the answer" and not short.cut


def test_generic_reader_takes_the_end_of_stdout() -> None:
    reader = OutputReader(AgentProfile.GENERIC)
    reader.feed(b"progress\n")
    reader.feed(b"the answer\n\n")
    assert reader.finish().endswith("the answer")


def test_fake_agent_directives() -> None:
    assert directives("run sleep=2 then exit=3 spam=10 and hang") == {
        "sleep": "2",
        "exit": "3",
        "spam": "10",
        "hang": "",
    }
    assert directives("plain words") == {}


def test_fake_agent_speaks_stream_json(tmp_path: Path) -> None:
    log = tmp_path / "runs.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dispatch.ops.fake_agent",
            "-p",
            "hi exit=2",
            "--permission-mode",
            "bypassPermissions",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"DISPATCH_FAKE_AGENT_LOG": str(log), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    messages = [json.loads(x) for x in proc.stdout.splitlines()]
    assert messages[0]["type"] == "system" and messages[-1]["type"] == "result"
    assert messages[-1]["result"] == "fake agent (bypassPermissions) did: hi exit=2"
    assert json.loads(log.read_text())["request"] == "hi exit=2"


def test_any_json_the_agent_prints_is_read_without_a_crash() -> None:
    """Issue 12, finding 7: a result line with an escaped lone surrogate crashed the
    executor (UnicodeEncodeError) and the outcome was lost."""
    reader = OutputReader(AgentProfile.CLAUDE)
    reader.feed(b'{"type":"result","result":"' + b"[" * 100_000 + b'"}\n')  # too deep
    reader.feed(b'{"type":"result","result":{"not":"a string"}}\n')
    reader.feed(b'\xff\xfe{"type":"result"}\n')
    reader.feed(b'{"type":"result","result":"before \\ud800 after"}\n')
    text = reader.finish()
    assert text.encode("utf-8") and text.startswith("before ") and text.endswith(" after")
    assert reader.output_tail().encode("utf-8")


def test_an_execution_whose_agent_prints_a_lone_surrogate_ends_ok(
    pair: Pair, tmp_path: Path
) -> None:
    agent = tmp_path / "surrogate-agent"
    agent.write_text(
        '#!/bin/sh\nprintf \'%s\\n\' \'{"type":"result","result":"odd \\ud800 text"}\'\n'
    )
    agent.chmod(0o755)
    configure(pair.receiver, DISPATCH_AGENT_BIN=str(agent))
    obj = envelope(pair)
    drop(lane_in(pair), obj)
    drain(pair.receiver.node())
    res = result_json(lane_in(pair), obj["id"])
    assert res["status"] == "ok", res
    assert res["final_text"].startswith("odd ") and res["final_text"].endswith(" text")
