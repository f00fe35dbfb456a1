"""The D-Bus wire protocol of core/dbus: values round-trip through marshal/unmarshal with the
specification's alignment, a method call has the bytes the specification gives, and a
Connection authenticates and matches replies against a server speaking the protocol on a
socket pair (the real systemd answers in tests/integration/test_systemd_bus.py)."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dispatch.core import dbus

TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=20)
SEGMENT = st.text("abcxyz019_", min_size=1, max_size=6)
LEAVES: dict[str, st.SearchStrategy[Any]] = {
    "y": st.integers(0, 255),
    "b": st.booleans(),
    "n": st.integers(-(2**15), 2**15 - 1),
    "q": st.integers(0, 2**16 - 1),
    "i": st.integers(-(2**31), 2**31 - 1),
    "u": st.integers(0, 2**32 - 1),
    "x": st.integers(-(2**63), 2**63 - 1),
    "t": st.integers(0, 2**64 - 1),
    "d": st.floats(allow_nan=False),
    "s": TEXT,
    "o": st.lists(SEGMENT, max_size=3).map(lambda parts: "/" + "/".join(parts)),
    "g": st.sampled_from(["", "s", "a(ssssssouso)", "a{sv}", "usssoo"]),
}
LEAF = st.sampled_from(sorted(LEAVES)).flatmap(
    lambda code: LEAVES[code].map(lambda value: (code, value))
)


def _containers(
    inner: st.SearchStrategy[tuple[str, Any]],
) -> st.SearchStrategy[tuple[str, Any]]:
    arrays = inner.flatmap(
        lambda pair: st.lists(st.just(pair[1]), max_size=3).map(lambda v: ("a" + pair[0], v))
    )
    structs = st.lists(inner, min_size=1, max_size=3).map(
        lambda items: ("(" + "".join(s for s, _ in items) + ")", tuple(v for _, v in items))
    )
    dicts = st.tuples(st.sampled_from("suy"), inner).flatmap(
        lambda kv: st.dictionaries(LEAVES[kv[0]], st.just(kv[1][1]), max_size=3).map(
            lambda d: ("a{" + kv[0] + kv[1][0] + "}", d)
        )
    )
    return st.one_of(arrays, structs, dicts, inner.map(lambda pair: ("v", pair)))


# (signature of one complete type, a value of it), nested a few levels deep.
TYPED = st.recursive(LEAF, _containers, max_leaves=8)


@settings(deadline=None)
@given(st.lists(TYPED, max_size=4))
def test_values_round_trip(items: list[tuple[str, Any]]) -> None:
    signature = "".join(s for s, _ in items)
    values = [v for _, v in items]
    data = dbus.marshal(signature, values)
    decoded, end = dbus.unmarshal(signature, data)
    assert decoded == values
    assert end == len(data)


def test_alignment_follows_the_specification() -> None:
    # y at 0, padding to 4, u at 4; the array's length, padding to 8, then its struct.
    assert dbus.marshal("yu", [1, 2]) == b"\x01\0\0\0\x02\0\0\0"
    assert dbus.marshal("a(y)", [[(7,)]]) == b"\x01\0\0\0\0\0\0\0\x07"
    assert dbus.marshal("s", ["ab"]) == b"\x02\0\0\0ab\0"


def test_signatures_split_into_complete_types() -> None:
    assert dbus.split_signature("sa(su)a{sv}u") == ["s", "a(su)", "a{sv}", "u"]
    with pytest.raises(ValueError, match="not a D-Bus type"):
        dbus.split_signature("z")


def test_a_method_call_has_the_specified_header() -> None:
    data = dbus.message(7, "/org/x", "org.x.I", "M", "s", ["hi"])
    assert data[:12] == b"l\x01\x00\x01" + struct.pack("<II", 7, 7)
    kind, fields, body = dbus.parse(data)
    assert kind == dbus.METHOD_CALL
    assert fields[dbus.F_PATH] == "/org/x"
    assert fields[dbus.F_MEMBER] == "M"
    assert body == ["hi"]
    assert dbus.message_size(data[:16]) == len(data)


def test_a_string_past_the_end_is_refused() -> None:
    with pytest.raises(ValueError, match="past the message"):
        dbus.unmarshal("s", b"\xff\0\0\0ab\0")


def reply(serial: int, kind: int, signature: str, values: list[Any], error: str = "") -> bytes:
    body = dbus.marshal(signature, values)
    fields: list[tuple[int, tuple[str, Any]]] = [(dbus.F_REPLY_SERIAL, ("u", serial))]
    if signature:
        fields.append((dbus.F_SIGNATURE, ("g", signature)))
    if error:
        fields.append((dbus.F_ERROR_NAME, ("s", error)))
    header = dbus.marshal("yyyyuua(yv)", [ord("l"), kind, 0, 1, len(body), 99, fields])
    return header + b"\0" * (-len(header) % 8) + body


def signal() -> bytes:
    """A signal as systemd broadcasts them on its private socket (no reply serial)."""
    body = dbus.marshal("uo", [1, "/org/freedesktop/systemd1/job/1"])
    fields: list[tuple[int, tuple[str, Any]]] = [
        (dbus.F_PATH, ("o", "/org/freedesktop/systemd1")),
        (dbus.F_MEMBER, ("s", "JobNew")),
        (dbus.F_SIGNATURE, ("g", "uo")),
    ]
    header = dbus.marshal("yyyyuua(yv)", [ord("l"), 4, 1, 1, len(body), 7, fields])
    return header + b"\0" * (-len(header) % 8) + body


Answer = Callable[[int, dict[int, Any], list[Any]], bytes]


class Server:
    """A socket speaking the protocol: it checks EXTERNAL auth, answers pings (leaving the
    first `stuck` of them unanswered but for signals, as systemd does with a message read
    along with BEGIN)
    and each other call with the next function in `answers`, recording the calls."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.answers: list[Answer] = []
        self.calls: list[dict[int, Any]] = []
        self.stuck = 0
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.thread = threading.Thread(target=self.serve, daemon=True)

    def serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            auth = conn.recv(512)
            assert auth.startswith(b"\0AUTH EXTERNAL ")
            conn.sendall(b"OK 0123456789abcdef0123456789abcdef\r\n")
            assert conn.recv(7) == b"BEGIN\r\n"
            answers = iter(self.answers)
            while True:
                head = conn.recv(16, socket.MSG_WAITALL)
                if len(head) < 16:
                    return
                rest = conn.recv(dbus.message_size(head) - 16, socket.MSG_WAITALL)
                _kind, fields, body = dbus.parse(head + rest)
                serial = struct.unpack_from("<I", head, 8)[0]
                self.calls.append(fields)
                if fields[dbus.F_MEMBER] == "Ping":
                    if self.stuck:
                        self.stuck -= 1
                        # What systemd sends every connection meanwhile (after a boot, many).
                        conn.sendall(signal() * 3)
                    else:
                        conn.sendall(reply(serial, dbus.METHOD_RETURN, "", []))
                    continue
                conn.sendall(next(answers)(serial, fields, body))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    fake = Server(str(tmp_path / "bus"))
    fake.thread.start()
    yield fake
    fake.listener.close()
    fake.thread.join(timeout=5)


def test_a_call_gets_its_own_reply_past_a_signal(server: Server) -> None:
    server.answers.append(
        lambda serial, fields, body: (
            reply(serial + 100, dbus.METHOD_RETURN, "s", ["not ours"])
            + reply(serial, dbus.METHOD_RETURN, "o", ["/job/" + body[0]])
        )
    )
    conn = dbus.Connection(server.path, timeout=5)
    try:
        assert conn.call("/org/x", "org.x.I", "Start", "s", "42") == ["/job/42"]
    finally:
        conn.close()
    assert [call[dbus.F_MEMBER] for call in server.calls] == ["Ping", "Start"]


def test_a_connection_pings_until_the_server_answers(server: Server) -> None:
    server.stuck = 2
    server.answers.append(lambda serial, fields, body: reply(serial, dbus.METHOD_RETURN, "u", [5]))
    conn = dbus.Connection(server.path, timeout=5)
    try:
        assert conn.call("/", "org.x.I", "Count") == [5]
    finally:
        conn.close()
    assert [call[dbus.F_MEMBER] for call in server.calls] == ["Ping", "Ping", "Ping", "Count"]


def test_an_error_reply_raises_with_its_name(server: Server) -> None:
    server.answers.append(
        lambda serial, fields, body: reply(
            serial, dbus.ERROR, "s", ["Unit x not found."], "org.freedesktop.systemd1.NoSuchUnit"
        )
    )
    conn = dbus.Connection(server.path, timeout=5)
    try:
        with pytest.raises(dbus.DBusError, match="NoSuchUnit: Unit x not found") as caught:
            conn.call("/org/x", "org.x.I", "Start", "s", "x")
    finally:
        conn.close()
    assert caught.value.name == "org.freedesktop.systemd1.NoSuchUnit"


def test_a_refused_authentication_is_one_error(tmp_path: Path) -> None:
    path = str(tmp_path / "bus")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)

        def refuse() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(512)
                conn.sendall(b"REJECTED EXTERNAL\r\n")

        thread = threading.Thread(target=refuse, daemon=True)
        thread.start()
        with pytest.raises(ConnectionError, match="refused authentication"):
            dbus.Connection(path, timeout=5)
        thread.join(timeout=5)


def test_a_reply_that_does_not_parse_is_a_broken_connection(server: Server) -> None:
    """An OSError (the launcher falls back to systemctl), not a ValueError that ends the pass."""

    def garbled(serial: int, fields: dict[int, Any], body: list[Any]) -> bytes:
        good = reply(serial, dbus.METHOD_RETURN, "s", ["fine"])
        # The right length, a body that claims a string running past the end.
        return good[:-9] + b"\xff\xff\xff\x00" + good[-5:]

    server.answers.append(garbled)
    conn = dbus.Connection(server.path, timeout=5)
    try:
        with pytest.raises(ConnectionError, match="does not parse"):
            conn.call("/org/x", "org.x.I", "Start", "s", "x")
    finally:
        conn.close()
