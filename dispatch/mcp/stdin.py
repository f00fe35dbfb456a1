"""The client's lines, checked before the SDK parses them. The SDK drops a line it cannot
decode (a lone surrogate, nesting past its parser's depth) without a word, and the client
waits forever; here such a line is handed on as a call of a method no server has, under the
request's own id, so the client gets a JSON-RPC error for it at once."""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio

# The request's id, found without parsing the line (which is what failed).
ID_RE = re.compile(r'"id"\s*:\s*(-?\d{1,15}|"(?:[^"\\]|\\.){0,200}")')
UNDECODABLE = "dispatch/undecodable-request"


def decodable(line: str) -> bool:
    """Whether the line is one JSON value that any strict parser reads the same way."""
    try:
        obj = json.loads(line)
        # Python reads an escaped lone surrogate; the SDK's parser (and UTF-8) does not.
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except (ValueError, RecursionError, UnicodeEncodeError):
        return False
    return True


def stand_in(line: str) -> str | None:
    """A request the server answers with an error, under the bad line's id; None when the
    line names no id (a notification, or nothing: there is no one to answer)."""
    found = ID_RE.search(line)
    if found is None:
        return None
    try:
        request_id: Any = json.loads(found.group(1))
        json.dumps(request_id, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        return None
    call = {"jsonrpc": "2.0", "id": request_id, "method": UNDECODABLE, "params": {}}
    return json.dumps(call) + "\n"


class CheckedLines:
    """stdin as the SDK reads it (`async for line in ...`), bad lines replaced."""

    def __init__(self) -> None:
        text = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")
        self.source = anyio.wrap_file(text)

    async def __aiter__(self) -> AsyncIterator[str]:
        async for line in self.source:
            if not line.strip() or decodable(line):
                yield line
                continue
            replacement = stand_in(line)
            print(
                "dispatch mcp: a request that cannot be decoded "
                f"({'answered with an error' if replacement else 'no id: dropped'})",
                file=sys.stderr,
                flush=True,
            )
            if replacement is not None:
                yield replacement
