"""The signer's wire: one request and one response per connection, each a 4-byte big-endian
length and that many bytes of JSON. Requests: {"op": "sign", "body": {...}} or
{"op": "kid"}; responses: {"ok": true, ...} or {"ok": false, "error": "one line"}."""

from __future__ import annotations

import json
import struct
from typing import Any, Protocol

# A task is at most 1 MiB as a file; room for the JSON around it.
MAX_FRAME = 2 * 1024 * 1024


class ProtocolError(Exception):
    pass


class Conn(Protocol):
    """A connected stream socket: `socket.socket` (the server), or the bare `_socket.socket`
    the client uses (signer/client.py)."""

    def sendall(self, data: bytes, /) -> None: ...

    def recv(self, size: int, /) -> bytes: ...


def send_frame(conn: Conn, obj: dict[str, Any]) -> None:
    data = json.dumps(obj, ensure_ascii=False, allow_nan=False).encode("utf-8")
    if len(data) > MAX_FRAME:
        raise ProtocolError(f"message of {len(data)} bytes is over {MAX_FRAME}")
    conn.sendall(struct.pack(">I", len(data)) + data)


def _exactly(conn: Conn, size: int) -> bytes:
    chunks: list[bytes] = []
    while size:
        chunk = conn.recv(min(size, 65536))
        if not chunk:
            raise ProtocolError("connection closed mid-message")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def recv_frame(conn: Conn) -> dict[str, Any]:
    (size,) = struct.unpack(">I", _exactly(conn, 4))
    if size > MAX_FRAME:
        raise ProtocolError(f"message of {size} bytes is over {MAX_FRAME}")
    try:
        obj = json.loads(_exactly(conn, size))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("message is not JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("message is not a JSON object")
    return obj
