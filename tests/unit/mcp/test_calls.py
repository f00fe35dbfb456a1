"""dispatch.mcp.calls: what the tools do, without the SDK (the tools end to end: test_server)."""

from __future__ import annotations

import uuid

import pytest

from dispatch.core.errors import NotFound, Rejection
from dispatch.mcp import calls
from tests.conftest import Pair


def test_whole_utf8_holds_back_a_character_cut_at_the_end() -> None:
    snowman = "☃".encode()  # three bytes
    assert calls.whole_utf8(b"ab" + snowman) == ("ab☃", 5)
    assert calls.whole_utf8(b"ab" + snowman[:2]) == ("ab", 2)
    assert calls.whole_utf8(b"ab" + snowman[:1]) == ("ab", 2)
    assert calls.whole_utf8(b"") == ("", 0)


def test_whole_utf8_replaces_bytes_that_are_no_utf8_at_all() -> None:
    # Cutting up to 3 bytes cannot make this whole: all of it, replaced, is consumed.
    text, consumed = calls.whole_utf8(b"\xff\xfeab\xff\xff\xff\xff")
    assert consumed == 8 and text.count("\ufffd") == 6 and "ab" in text


def test_tool_message_names_why_verification_failed() -> None:
    assert calls.tool_message(Rejection("bad_signature", "no good")) == (
        "verification failed (bad_signature): no good"
    )
    assert calls.tool_message(Rejection("rejected", "refused by gpubox")) == "refused by gpubox"
    assert calls.tool_message(NotFound("no task x")) == "no task x"


def test_an_id_this_node_never_saw_is_not_found(pair: Pair) -> None:
    node = pair.sender.node()
    task_id = str(uuid.uuid4())
    with pytest.raises(NotFound, match=task_id):
        calls.get_task(node, task_id)
    with pytest.raises(NotFound, match=task_id):
        calls.read_logs(node, task_id, 0, 10)
    assert calls.stage_now(node, task_id) == "unknown"
