"""journald's native protocol: what `encode` writes is what journald's parser reads back, and
`send` delivers one datagram to the socket it is given."""

from __future__ import annotations

import socket
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from dispatch.core import journal

NAMES = st.from_regex(r"[A-Z][A-Z0-9_]{0,20}", fullmatch=True)
VALUES = st.text(st.characters(exclude_categories=["Cs"]), max_size=200)


@given(st.dictionaries(NAMES, VALUES, max_size=8))
def test_round_trip(fields: dict[str, str]) -> None:
    assert journal.decode(journal.encode(fields)) == fields


def test_a_value_with_a_newline_is_sent_with_its_length() -> None:
    data = journal.encode({"MESSAGE": "two\nlines", "A": "b"})
    assert data == b"MESSAGE\n\x09\x00\x00\x00\x00\x00\x00\x00two\nlines\nA=b\n"


def test_send_delivers_one_datagram(tmp_path: Path) -> None:
    path = str(tmp_path / "socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(path)
        assert journal.send("task started\nsecond line", {"DISPATCH_EVENT": "x"}, path)
        fields = journal.decode(server.recv(65536))
    assert fields == {"MESSAGE": "task started\nsecond line", "DISPATCH_EVENT": "x"}


def test_send_without_journald_says_so(tmp_path: Path) -> None:
    assert not journal.send("nobody listens", {}, str(tmp_path / "absent"))
