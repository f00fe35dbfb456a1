"""Agent profiles: who runs the agent and what it is told, how to call it, and how to read
its answer from its output. The promoter loads this for an execution's plan
(receive/exec_plan.py); the supervision loop's own imports stay in receive/supervise.py."""

from __future__ import annotations

import json
import os
import pwd
import shlex
from dataclasses import dataclass

from dispatch.core.config import AgentProfile, Config
from dispatch.core.errors import UsageError
from dispatch.core.model import Envelope
from dispatch.core.node import Node

SYSTEM_PROMPT = (
    "You are running as a headless dispatch worker. A peer agent session sent you this task "
    "via signed dispatch. Execute it end-to-end and report results. Be terse. The task "
    "request follows."
)
FINAL_TEXT_MAX = 65536
# One argument may hold at most 128 KiB on Linux (MAX_ARG_STRLEN): a request longer than
# this goes to the claude CLI on stdin, which it reads as the prompt in print mode.
ARGV_REQUEST_MAX = 100 * 1024
TAIL_BYTES = 8000
# A stream-json line longer than this is not a result line we can use; skip it unbuffered.
MAX_LINE = 4 * 1024 * 1024


def agent_user(node: Node) -> str | None:
    """Who the agent runs as: DISPATCH_RUN_AS, and never root unless it says `root`. None:
    as this (unprivileged) process. Raises when an executor running as root has no user
    to drop to, rather than run the agent as root by default."""
    if os.geteuid() != 0:
        return None
    if not node.cfg.run_as:
        raise UsageError(
            "DISPATCH_RUN_AS is unset and the executor runs as root: the agent never runs "
            "as root unless DISPATCH_RUN_AS=root; `dispatch init` sets dispatch-agent"
        )
    try:
        pwd.getpwnam(node.cfg.run_as)
    except KeyError:
        raise UsageError(
            f"DISPATCH_RUN_AS={node.cfg.run_as}: no such user (the packages create "
            "dispatch-agent; or `dispatch init --run-as USER`)"
        ) from None
    return node.cfg.run_as


def agent_settings(node: Node, envelope: Envelope) -> dict[str, str]:
    """What the executor adds to the environment the agent inherits (quickstart.inherited_env);
    the promoter puts the same in its plan for the quick start (receive/exec_plan.py)."""
    env = {
        "DISPATCH_TASK_ID": envelope.id,
        "DISPATCH_HOPS": str(envelope.hops),
        "DISPATCH_NODE": node.name,
        # Where to ask for a child task's signature (the agent holds no key): not a secret.
        "DISPATCH_SIGNER_SOCKET": str(node.cfg.signer_socket),
    }
    if node.cfg.run_as and os.geteuid() == 0:
        user = pwd.getpwnam(node.cfg.run_as)
        env.update(HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)
    return env


@dataclass(frozen=True)
class Invocation:
    argv: list[str]
    stdin: bytes | None
    perm_mode: str


def invocation(cfg: Config, envelope: Envelope) -> Invocation:
    # DISPATCH_AGENT_BIN may hold arguments too (`python3 -m dispatch.ops.fake_agent`).
    base = shlex.split(cfg.agent_bin)
    perm_mode = "bypassPermissions" if envelope.require_dangerous else "acceptEdits"
    if cfg.agent_profile is AgentProfile.GENERIC:
        return Invocation(base, envelope.request.encode("utf-8"), perm_mode)
    request = envelope.request.encode("utf-8")
    on_stdin = len(request) > ARGV_REQUEST_MAX
    argv = [
        *base,
        "-p",
        *([] if on_stdin else [envelope.request]),
        "--permission-mode",
        perm_mode,
        "--output-format",
        "stream-json",
        "--include-partial-messages",
        "--verbose",
        "--append-system-prompt",
        SYSTEM_PROMPT,
    ]
    if envelope.require_dangerous:
        argv.append("--dangerously-skip-permissions")
    return Invocation(argv, request if on_stdin else None, perm_mode)


# Appended where final_text was cut, so no reader takes a part for the whole.
CUT_NOTE = "\n[dispatch: final_text truncated: {kept} kept; the whole output is in the task's log]"


class OutputReader:
    """Follows the agent's output as it streams, in bounded memory: the last `result` line
    (claude profile) and the tail (generic profile, and `output_tail`)."""

    def __init__(self, profile: AgentProfile) -> None:
        self.profile = profile
        self.partial = bytearray()
        self.skipping = False
        self.final_text = ""
        self.final_chars = 0  # the whole answer's length, when it was cut to FINAL_TEXT_MAX
        self.tail = bytearray()
        self.fed = 0
        self.cut = False

    def feed(self, chunk: bytes) -> None:
        self.fed += len(chunk)
        self.tail.extend(chunk)
        del self.tail[:-TAIL_BYTES]
        if self.profile is not AgentProfile.CLAUDE:
            return
        start = 0
        while True:
            newline = chunk.find(b"\n", start)
            if newline < 0:
                break
            if not self.skipping:
                self.partial.extend(chunk[start:newline])
                self._line(bytes(self.partial))
            self.partial.clear()
            self.skipping = False
            start = newline + 1
        if not self.skipping:
            self.partial.extend(chunk[start:])
            if len(self.partial) > MAX_LINE:
                self.partial.clear()
                self.skipping = True

    def _line(self, line: bytes) -> None:
        if b'"result"' not in line:
            return
        try:
            msg = json.loads(line)
        except (ValueError, RecursionError):
            return  # not JSON, or nested past the parser's depth: not a result line
        if isinstance(msg, dict) and msg.get("type") == "result":
            result = msg.get("result")
            if isinstance(result, str) and result:
                self.final_text = utf8_safe(result[:FINAL_TEXT_MAX])
                self.final_chars = len(result)

    def finish(self) -> str:
        """final_text, with a note where it was cut (then `cut` is True)."""
        if self.profile is AgentProfile.CLAUDE:
            if self.partial and not self.skipping:
                self._line(bytes(self.partial))
            text = self.final_text
            if self.final_chars > len(text):
                self.cut = True
                return text + CUT_NOTE.format(kept=f"{len(text)} of {self.final_chars} characters")
            return text
        text = self.tail.decode("utf-8", "replace").strip()[-FINAL_TEXT_MAX:]
        if self.fed > len(self.tail):
            self.cut = True
            return text + CUT_NOTE.format(kept=f"the last {len(self.tail)} of {self.fed} bytes")
        return text

    def output_tail(self) -> str:
        return self.tail.decode("utf-8", "replace")


def utf8_safe(text: str) -> str:
    """The agent may print any JSON: an escaped lone surrogate (`\\ud800`) decodes to a str
    that no UTF-8 writer (the signed result, the journal) accepts. Replaced, it cannot
    crash the executor and lose the outcome."""
    return text.encode("utf-8", "replace").decode("utf-8")
