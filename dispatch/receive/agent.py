"""Agent profiles: how to call the agent, and how to read its answer from its output."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass

from dispatch.core.config import AgentProfile, Config
from dispatch.core.model import Envelope

SYSTEM_PROMPT = (
    "You are running as a headless dispatch worker. A peer agent session sent you this task "
    "via signed dispatch. Execute it end-to-end and report results. Be terse. The task "
    "request follows."
)
FINAL_TEXT_MAX = 65536
TAIL_BYTES = 8000
# A stream-json line longer than this is not a result line we can use; skip it unbuffered.
MAX_LINE = 4 * 1024 * 1024


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
    argv = [
        *base,
        "-p",
        envelope.request,
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
    return Invocation(argv, None, perm_mode)


class OutputReader:
    """Follows the agent's output as it streams, in bounded memory: the last `result` line
    (claude profile) and the tail (generic profile, and `output_tail`)."""

    def __init__(self, profile: AgentProfile) -> None:
        self.profile = profile
        self.partial = bytearray()
        self.skipping = False
        self.final_text = ""
        self.tail = bytearray()

    def feed(self, chunk: bytes) -> None:
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
        except ValueError:
            return
        if isinstance(msg, dict) and msg.get("type") == "result":
            result = msg.get("result")
            if isinstance(result, str) and result:
                self.final_text = result[:FINAL_TEXT_MAX]

    def finish(self) -> str:
        if self.profile is AgentProfile.CLAUDE:
            if self.partial and not self.skipping:
                self._line(bytes(self.partial))
            return self.final_text
        return self.tail.decode("utf-8", "replace").strip()[-FINAL_TEXT_MAX:]

    def output_tail(self) -> str:
        return self.tail.decode("utf-8", "replace")
