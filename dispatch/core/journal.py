"""journald's native protocol, spoken directly: one datagram of fields to
/run/systemd/journal/socket. Importing `systemd.journal` costs 13 to 27 ms (18 M
instructions), paid by every promote pass and by every execution before its agent starts;
this is a socket and a few bytes. An entry too large for one datagram goes through
systemd-python, which passes it in a memfd."""

from __future__ import annotations

import _socket
import errno
import struct
from collections.abc import Mapping

SOCKET = "/run/systemd/journal/socket"


def encode(fields: Mapping[str, str]) -> bytes:
    """The native protocol's datagram: `NAME=value\\n`, or, for a value holding a newline,
    `NAME\\n`, its length as 64-bit little-endian, the value and `\\n`."""
    parts = []
    for name, value in fields.items():
        data = value.encode("utf-8")
        if b"\n" in data:
            parts.append(name.encode("ascii") + b"\n" + struct.pack("<Q", len(data)) + data + b"\n")
        else:
            parts.append(name.encode("ascii") + b"=" + data + b"\n")
    return b"".join(parts)


def decode(datagram: bytes) -> dict[str, str]:
    """The fields of one datagram (what journald reads; the tests' check of `encode`)."""
    fields: dict[str, str] = {}
    at = 0
    while at < len(datagram):
        end = datagram.index(b"\n", at)
        line = datagram[at:end]
        name, sep, value = line.partition(b"=")
        if sep:
            fields[name.decode("ascii")] = value.decode("utf-8")
            at = end + 1
            continue
        (size,) = struct.unpack("<Q", datagram[end + 1 : end + 9])
        start = end + 9
        fields[line.decode("ascii")] = datagram[start : start + size].decode("utf-8")
        if datagram[start + size : start + size + 1] != b"\n":
            raise ValueError("a binary field does not end in a newline")
        at = start + size + 1
    return fields


def send(message: str, fields: Mapping[str, str], path: str = SOCKET) -> bool:
    """One journal entry; False when journald is not there (or refused it)."""
    datagram = encode({"MESSAGE": message, **fields})
    try:
        # The C module under `socket`: socket.py's enums cost every process that logs an
        # event (each promote pass, each execution) 11 M instructions, ~4 ms.
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
        try:
            sock.sendto(datagram, path)
        finally:
            sock.close()
    except OSError as exc:
        if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
            return False
        return _send_large(message, fields)
    return True


def _send_large(message: str, fields: Mapping[str, str]) -> bool:
    try:
        from systemd import journal
    except ImportError:
        return False
    try:
        journal.send(message, **fields)
    except OSError:
        return False
    return True
