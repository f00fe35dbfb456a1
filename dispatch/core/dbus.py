"""A minimal D-Bus client for systemd's private socket (`/run/systemd/private`, root only):
the wire protocol, EXTERNAL authentication, method calls and their replies. It is what
`systemctl` itself speaks as root, without a bus daemon and without a process per call:
starting an execution this way takes a fraction of a millisecond instead of a `systemctl`
run (bench/RESULTS.md). Only what the systemd launcher needs: no signals, no bus names,
no file descriptors.

Values map to Python as: y n q i u x t → int, b → bool, d → float, s o g → str, a → list
(a{..} → dict), (..) → tuple, v → (signature, value)."""

from __future__ import annotations

# The C module under socket.py: the wrapper (with selectors) is ~3 ms of every promote pass,
# and this client needs none of it.
import _socket
import os
import select
import struct
import time
from typing import Any

from dispatch.core.errors import DispatchError

PRIVATE_SOCKET = "/run/systemd/private"
FIXED = {"y": "B", "b": "I", "n": "h", "q": "H", "i": "i", "u": "I", "x": "q", "t": "Q", "d": "d"}
ALIGN = {**{code: struct.calcsize(fmt) for code, fmt in FIXED.items()}, "s": 4, "o": 4}
ALIGN.update({"g": 1, "v": 1, "a": 4, "(": 8, "{": 8})
METHOD_CALL, METHOD_RETURN, ERROR = 1, 2, 3
# Header field codes (D-Bus specification, "Message Format").
F_PATH, F_INTERFACE, F_MEMBER, F_ERROR_NAME, F_REPLY_SERIAL = 1, 2, 3, 4, 5
F_DESTINATION, F_SIGNATURE = 6, 8
MAX_MESSAGE = 128 * 1024 * 1024
PEER = "org.freedesktop.DBus.Peer"  # every sd-bus object answers its Ping


class DBusError(DispatchError):
    """systemd answered a call with an error (`name` is the D-Bus error name)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}" if message else name)
        self.name = name


def split_signature(signature: str) -> list[str]:
    """The complete types of a signature, in order ("sa(su)u" → ["s", "a(su)", "u"])."""
    types, at = [], 0
    while at < len(signature):
        end = _type_end(signature, at)
        types.append(signature[at:end])
        at = end
    return types


def _type_end(signature: str, at: int) -> int:
    code = signature[at]
    if code == "a":
        return _type_end(signature, at + 1)
    if code in "({":
        close = ")" if code == "(" else "}"
        at += 1
        while signature[at] != close:
            at = _type_end(signature, at)
        return at + 1
    if code not in ALIGN:
        raise ValueError(f"not a D-Bus type: {code!r}")
    return at + 1


def _pad(buf: bytearray, alignment: int) -> None:
    buf.extend(b"\0" * (-len(buf) % alignment))


def marshal(signature: str, values: list[Any] | tuple[Any, ...]) -> bytes:
    """Little-endian wire bytes of `values`, aligned as if they start at offset 0 (a message's
    header and its body both do)."""
    buf = bytearray()
    types = split_signature(signature)
    if len(types) != len(values):
        raise ValueError(f"signature {signature!r} has {len(types)} types, not {len(values)}")
    for kind, value in zip(types, values, strict=True):
        _put(buf, kind, value)
    return bytes(buf)


def _put(buf: bytearray, kind: str, value: Any) -> None:
    code = kind[0]
    _pad(buf, ALIGN[code])
    if code in FIXED:
        buf.extend(struct.pack("<" + FIXED[code], value))
    elif code in "so":
        data = value.encode("utf-8")
        buf.extend(struct.pack("<I", len(data)) + data + b"\0")
    elif code == "g":
        data = value.encode("ascii")
        buf.extend(struct.pack("<B", len(data)) + data + b"\0")
    elif code == "v":
        inner, inner_value = value
        _put(buf, "g", inner)
        _put(buf, inner, inner_value)
    elif code == "a":
        element = kind[1:]
        at = len(buf)
        buf.extend(b"\0\0\0\0")
        _pad(buf, ALIGN[element[0]])
        start = len(buf)
        items = value.items() if element[0] == "{" else value
        for item in items:
            _put(buf, element, item)
        struct.pack_into("<I", buf, at, len(buf) - start)
    else:  # struct or dict entry
        for inner, inner_value in zip(split_signature(kind[1:-1]), value, strict=True):
            _put(buf, inner, inner_value)


def unmarshal(signature: str, data: bytes, at: int = 0) -> tuple[list[Any], int]:
    """The values `marshal` wrote, and the offset after them."""
    values = []
    for kind in split_signature(signature):
        value, at = _get(data, kind, at)
        values.append(value)
    return values, at


def _get(data: bytes, kind: str, at: int) -> tuple[Any, int]:
    code = kind[0]
    at += -at % ALIGN[code]
    if code in FIXED:
        fmt = "<" + FIXED[code]
        (value,) = struct.unpack_from(fmt, data, at)
        return (bool(value) if code == "b" else value), at + struct.calcsize(fmt)
    if code in "sog":
        size_fmt = "<B" if code == "g" else "<I"
        (size,) = struct.unpack_from(size_fmt, data, at)
        at += struct.calcsize(size_fmt)
        if at + size >= len(data) or data[at + size] != 0:
            raise ValueError("a string runs past the message")
        return data[at : at + size].decode("utf-8"), at + size + 1
    if code == "v":
        inner, at = _get(data, "g", at)
        value, at = _get(data, inner, at)
        return (inner, value), at
    if code == "a":
        (size,) = struct.unpack_from("<I", data, at)
        element = kind[1:]
        at += 4
        at += -at % ALIGN[element[0]]
        end = at + size
        if end > len(data):
            raise ValueError("an array runs past the message")
        items = []
        while at < end:
            item, at = _get(data, element, at)
            items.append(item)
        return (dict(items) if element[0] == "{" else items), at
    items = []
    for inner in split_signature(kind[1:-1]):
        item, at = _get(data, inner, at)
        items.append(item)
    return tuple(items), at


def message(
    serial: int, path: str, interface: str, member: str, signature: str, args: list[Any]
) -> bytes:
    """A method call, header and body."""
    body = marshal(signature, args)
    fields: list[tuple[int, tuple[str, str]]] = [
        (F_PATH, ("o", path)),
        (F_INTERFACE, ("s", interface)),
        (F_MEMBER, ("s", member)),
    ]
    if signature:
        fields.append((F_SIGNATURE, ("g", signature)))
    header = bytearray(
        marshal("yyyyuua(yv)", [ord("l"), METHOD_CALL, 0, 1, len(body), serial, fields])
    )
    _pad(header, 8)
    return bytes(header) + body


def parse(data: bytes) -> tuple[int, dict[int, Any], list[Any]]:
    """(message type, header fields, body values) of one whole message."""
    if data[:1] != b"l":
        raise ValueError("a big-endian message (this client asks in little-endian)")
    (_order, kind, _flags, _version, _size, _serial, fields), at = unmarshal("yyyyuua{yv}", data)
    at += -at % 8
    body_signature = fields.get(F_SIGNATURE, ("g", ""))[1]
    body, _ = unmarshal(body_signature, data, at) if body_signature else ([], at)
    return kind, {code: value for code, (_sig, value) in fields.items()}, body


def message_size(head: bytes) -> int:
    """The whole size of a message from its first 16 bytes."""
    body_size: int
    fields_size: int
    body_size, _serial, fields_size = struct.unpack_from("<III", head, 4)
    header = 16 + fields_size
    return header + (-header % 8) + body_size


class Connection:
    """One authenticated connection; calls are made one at a time."""

    def __init__(self, path: str = PRIVATE_SOCKET, timeout: float = 30) -> None:
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        self.timeout = timeout
        self.serial = 0
        try:
            self.sock.connect(path)
            self._authenticate()
            self._first_answer()
        except BaseException:
            self.sock.close()
            raise

    def _authenticate(self) -> None:
        uid = str(os.geteuid()).encode("ascii").hex().encode("ascii")
        self.sock.sendall(b"\0AUTH EXTERNAL " + uid + b"\r\n")
        answer = b""
        while not answer.endswith(b"\r\n"):
            chunk = self.sock.recv(512)
            if not chunk:
                raise ConnectionError("the bus closed the connection during authentication")
            answer += chunk
        if not answer.startswith(b"OK "):
            raise ConnectionError(f"the bus refused authentication: {answer.strip()[:80]!r}")
        self.sock.sendall(b"BEGIN\r\n")

    def _send(self, path: str, interface: str, member: str, signature: str, args: Any) -> int:
        self.serial += 1
        self.sock.sendall(message(self.serial, path, interface, member, signature, list(args)))
        return self.serial

    def _reply(self, serials: set[int]) -> tuple[int, dict[int, Any], list[Any]]:
        # A deadline of its own: systemd's signals would otherwise keep each recv alive.
        deadline = time.monotonic() + self.timeout
        while True:
            kind, fields, body = _parsed(self._receive())
            if fields.get(F_REPLY_SERIAL) in serials:
                return kind, fields, body
            # else a signal (systemd sends them on its private socket), or an old answer
            if time.monotonic() > deadline:
                raise TimeoutError("no answer from systemd's private socket")

    def _first_answer(self) -> None:
        """Ping until the server answers. systemd 252 can read BEGIN and the first message
        in one read and then leave that message unprocessed until more bytes arrive (seen
        in tests/integration: 6 connections of 12 stuck until their timeout); each further
        ping is such bytes. Signals it sends meanwhile are not an answer: after a boot
        they come by the hundred (tests/hostile, a power cut). Once it answers, it reads
        one message at a time."""
        deadline = time.monotonic() + self.timeout
        pings: set[int] = set()
        wait = 0.005
        while True:
            pings.add(self._send("/", PEER, "Ping", "", []))
            until = time.monotonic() + wait
            # Read what comes for `wait` seconds, then ping again (signals included).
            while select.select([self.sock], [], [], max(until - time.monotonic(), 0))[0]:
                _kind, fields, _body = _parsed(self._receive())
                if fields.get(F_REPLY_SERIAL) in pings:
                    return
                if time.monotonic() >= until:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("systemd's private socket does not answer")
            wait = min(wait * 2, 0.25)

    def call(
        self, path: str, interface: str, member: str, signature: str = "", *args: Any
    ) -> list[Any]:
        """The reply's values; DBusError when the call was answered with an error."""
        kind, fields, body = self._reply({self._send(path, interface, member, signature, args)})
        if kind == ERROR:
            text = body[0] if body and isinstance(body[0], str) else ""
            raise DBusError(str(fields.get(F_ERROR_NAME, "error")), text)
        return body

    def _receive(self) -> bytes:
        head = self._read(16)
        try:
            size = message_size(head)
        except (ValueError, struct.error) as exc:
            raise ConnectionError(f"a message from the bus that is not D-Bus: {exc}") from None
        if size > MAX_MESSAGE:
            raise ConnectionError(f"a {size}-byte message from the bus")
        return head + self._read(size - 16)

    def _read(self, size: int) -> bytes:
        chunks, left = [], size
        while left:
            chunk = self.sock.recv(min(left, 1 << 20))
            if not chunk:
                raise ConnectionError("the bus closed the connection")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self.sock.close()


def _parsed(data: bytes) -> tuple[int, dict[int, Any], list[Any]]:
    """A message the bus sent that does not parse is a broken connection (an OSError, so
    the launcher falls back to systemctl), never an exception that ends the pass."""
    try:
        return parse(data)
    except (ValueError, IndexError, KeyError, struct.error, UnicodeDecodeError) as exc:
        raise ConnectionError(f"a message from the bus that does not parse: {exc!r:.120}") from None
