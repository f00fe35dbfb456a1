"""A stand-in agent that speaks the claude CLI's stream-json, for the demo and the tests.

    python3 -m dispatch.ops.fake_agent -p "REQUEST" [claude-style flags...]

The request may carry directives, each `word` or `word=value`, anywhere in it:
  sleep=S    print progress, then finish after S seconds
  hang=S     print nothing at all for S seconds (a silent agent, for the watchdog)
  spam=N     print N bytes of filler
  mem=M      hold M MiB of memory
  exit=C     exit with status C
  read=PATH  try to read PATH and report whether it could (allowed, empty, denied)
  fork=S     leave a child process behind that sleeps S seconds
  send=PEER  from inside the execution, run `dispatch send --to PEER` (no --wait) with the
             environment the executor gave it, so the child task carries parent and hops+1;
             the child's request is this one with `send=` naming this node, so the task
             bounces between the two nodes until a receiver refuses it at DISPATCH_MAX_HOPS
  chain=N    with send=: send only while this task's DISPATCH_HOPS is below N
  via=mcp    with send=: send through `dispatch mcp` (its dispatch_send tool over stdio)
  parent=ID  with send=: claim another parent (DISPATCH_TASK_ID=ID) for the child
  hops=N     with send=: claim DISPATCH_HOPS=N for the child
  wait=S     with send=: `dispatch send --wait --timeout S`, and report the child's status
  late=S     leave behind a process that sends (send=) S seconds after the agent ended
  answer=N   make the final answer N characters long
The request comes after -p, or (as the claude CLI reads it in print mode) on stdin when -p
has no prompt after it.
Every run appends one JSON line to $DISPATCH_FAKE_AGENT_LOG, if set: the tests' proof of how
often each task really ran (with its DISPATCH_HOPS, and the id of any task it sent)."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import TYPE_CHECKING

# Only what sending a child needs loads anything more: the agent's start record comes first
# (bench/hops.py measures it), as a real agent CLI would be at work by then.
if TYPE_CHECKING:
    from typing import Any


def _emit(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def directives(request: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for word in request.split():
        key, _, value = word.partition("=")
        if key in (
            "sleep",
            "hang",
            "spam",
            "mem",
            "exit",
            "read",
            "fork",
            "send",
            "chain",
            "answer",
            "via",
            "parent",
            "hops",
            "late",
            "wait",
        ):
            found[key] = value
    return found


def _child_env(d: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    if d.get("parent"):
        env["DISPATCH_TASK_ID"] = d["parent"]
    if d.get("hops"):
        env["DISPATCH_HOPS"] = d["hops"]
    return env


def send_child(request: str, peer: str, d: dict[str, str] | None = None) -> tuple[str, str]:
    """`dispatch send` from inside the execution: (child id, "") or ("", why it failed)."""
    d = d or {}
    here = os.environ.get("DISPATCH_NODE", "")
    words = [
        f"send={here}" if word.startswith("send=") else word
        for word in request.split()
        if not word.startswith(("late=", "parent=", "hops=", "wait="))
    ]
    if d.get("via") == "mcp":
        return _send_by_mcp(" ".join(words), peer, _child_env(d))
    import subprocess

    from dispatch.core.runner import dispatch_argv

    argv = dispatch_argv(
        "send",
        "--to",
        peer,
        "--request",
        " ".join(words),
        "--json",
        *(["--wait", "--timeout", d["wait"]] if d.get("wait") else []),
    )
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=60 + float(d.get("wait") or 0),
            check=False,
            env=_child_env(d),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "", str(exc)
    if proc.returncode != 0 and not (d.get("wait") and proc.stdout.strip()):
        return "", (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    try:
        out = json.loads(proc.stdout)
        if d.get("wait"):
            # The child's verified result, as `dispatch send --wait` followed it.
            return f"{out['id']} (child ended {out['result']['status']})", ""
        return str(out["id"]), ""
    except (ValueError, KeyError, TypeError):
        return "", f"unexpected output: {proc.stdout[:200]!r}"


def mcp_session(
    argv: list[str], calls: list[dict[str, Any]], env: dict[str, str] | None = None
) -> dict[int, dict[str, Any]]:
    """Drive an MCP server over stdio as an agent CLI does: `initialize`, and once it is
    answered `notifications/initialized` and each of `calls` (`method`, `params`; ids from
    2 on), stdin kept open until the last answer (a server may drop what is still in flight
    when its stdin closes). The answers by id; those that never came are missing."""
    hello = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "fake-agent", "version": "0"},
        },
    }
    rest: list[dict[str, Any]] = [{"jsonrpc": "2.0", "method": "notifications/initialized"}]
    rest += [{"jsonrpc": "2.0", "id": i, **call} for i, call in enumerate(calls, start=2)]
    answers: dict[int, dict[str, Any]] = {}
    import subprocess

    with subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            for batch, last in (([hello], 1), (rest, len(calls) + 1)):
                for message in batch:
                    proc.stdin.write(json.dumps(message) + "\n")
                proc.stdin.flush()
                for line in proc.stdout:
                    answer = json.loads(line)
                    if isinstance(answer.get("id"), int):
                        answers[answer["id"]] = answer
                    if last in answers:
                        break
                if last not in answers:
                    break  # the server ended
        finally:
            proc.kill()
    return answers


def _send_by_mcp(request: str, peer: str, env: dict[str, str]) -> tuple[str, str]:
    """The MCP server's dispatch_send tool, driven over stdio as an agent CLI would."""
    call = {
        "method": "tools/call",
        "params": {"name": "dispatch_send", "arguments": {"to": peer, "request": request}},
    }
    from dispatch.core.runner import dispatch_argv

    answer = mcp_session(dispatch_argv("mcp"), [call], env).get(2)
    if answer is None:
        return "", "the MCP server ended without an answer"
    result = answer.get("result") or {}
    if answer.get("error") or result.get("isError"):
        texts = [c.get("text", "") for c in result.get("content", [])]
        return "", (" ".join(texts) or str(answer.get("error")))[:500]
    structured = result.get("structuredContent") or {}
    return str(structured.get("id", "")), ""


def _leave_sender(request: str, peer: str, after_s: float) -> None:
    """A process the agent leaves behind, which asks for a child's signature once the
    execution is over. It asks in-process, with what it loaded while the execution ran: by
    then the unit's private /tmp, where the checkout (and the interpreter a new `dispatch
    send` would start) may live, is gone."""
    from dispatch.core import config
    from dispatch.core.errors import DispatchError
    from dispatch.core.node import Node
    from dispatch.send import task as sender

    node = Node(config.load())
    assert node.keys.signer is not None  # the signer's client, loaded now
    words = [w for w in request.split() if not w.startswith(("late=", "send="))]
    if os.fork() != 0:
        return
    os.setsid()
    time.sleep(after_s)
    try:
        child, failure = sender.build(node, to=peer, request=" ".join(words)).id, ""
    except DispatchError as exc:
        child, failure = "", f"dispatch: {exc}"
    log = os.environ.get("DISPATCH_FAKE_AGENT_LOG")
    if log:
        with open(log, "a") as handle:
            record = {"late_of": os.environ.get("DISPATCH_TASK_ID"), "sent": child or None}
            handle.write(json.dumps({**record, "send_failure": failure}) + "\n")
    os._exit(0)


def main(argv: list[str]) -> int:
    request = ""
    mode = "acceptEdits"
    for i, arg in enumerate(argv):
        if arg == "-p" and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            request = argv[i + 1]
        if arg == "--permission-mode" and i + 1 < len(argv):
            mode = argv[i + 1]
    source = "argv"
    if not request and not sys.stdin.isatty():
        request, source = sys.stdin.read(), "stdin"
    task_id = os.environ.get("DISPATCH_TASK_ID", "")
    d = directives(request)
    notes = []
    record: dict[str, object] = {
        "task_id": task_id,
        "pid": os.getpid(),
        "at": time.time(),
        "request": request[:200],
        "request_chars": len(request),
        "request_from": source,
        "uid": os.getuid(),
        "hops": os.environ.get("DISPATCH_HOPS"),
    }
    if d.get("send") and d.get("late"):
        _leave_sender(request, d["send"], float(d["late"]))
    elif d.get("send"):
        limit = int(d["chain"]) if d.get("chain") else None
        if limit is None or int(os.environ.get("DISPATCH_HOPS") or 0) < limit:
            child, failure = send_child(request, d["send"], d)
            record["sent"] = child or None
            record["send_failure"] = failure
            notes.append(
                f"sent {child} to {d['send']}"
                if child
                else f"send to {d['send']} failed: {failure}"
            )
    log = os.environ.get("DISPATCH_FAKE_AGENT_LOG")
    if log:
        with open(log, "a") as handle:
            handle.write(json.dumps(record) + "\n")
    _emit(
        {
            "type": "system",
            "subtype": "init",
            "session_id": task_id or "fake",
            "permissionMode": mode,
            "model": "fake-agent",
        }
    )
    if "hang" in d:
        time.sleep(float(d["hang"] or 3600))
    if "fork" in d and os.fork() == 0:
        os.setsid()
        time.sleep(float(d["fork"] or 60))
        os._exit(0)
    if "mem" in d:
        hold = bytearray(int(d["mem"]) * 1024 * 1024)
        for offset in range(0, len(hold), 4096):
            hold[offset] = 1
        notes.append(f"held {d['mem']} MiB")
    if "spam" in d:
        remaining = int(d["spam"])
        line = "x" * 1023 + "\n"
        while remaining > 0:
            chunk = line[: min(remaining, 1024)]
            sys.stdout.write(chunk)
            remaining -= len(chunk)
        sys.stdout.flush()
    if "sleep" in d:
        end = time.monotonic() + float(d["sleep"] or 1)
        while time.monotonic() < end:
            _emit(
                {
                    "type": "stream_event",
                    "event": {
                        "type": "content_block_delta",
                        "delta": {"type": "text_delta", "text": "working... "},
                    },
                }
            )
            time.sleep(min(0.5, max(0.0, end - time.monotonic())))
    if "read" in d:
        try:
            with open(d["read"], "rb") as handle:
                got = handle.read(1)
            # Opened but empty: what InaccessiblePaths= leaves root (a mode-0 empty file).
            notes.append(f"read {d['read']}: {'allowed' if got else 'empty'}")
        except OSError as exc:
            notes.append(f"read {d['read']}: denied ({exc.strerror})")
    answer = f"fake agent ({mode}) did: {request.strip()[:200]}"
    if notes:
        answer += " [" + "; ".join(notes) + "]"
    if d.get("answer"):
        answer = answer.ljust(int(d["answer"]), ".")
    _emit(
        {
            "type": "assistant",
            "message": {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        }
    )
    code = int(d.get("exit") or 0)
    _emit(
        {
            "type": "result",
            "subtype": "success" if code == 0 else "error",
            "is_error": code != 0,
            "result": answer,
            "session_id": task_id or "fake",
        }
    )
    return code


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
