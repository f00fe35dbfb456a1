"""dispatch wait through a share that stops answering: it says so once, and says when the
share answers again even when that first answer is the result."""

from __future__ import annotations

import pytest

from dispatch.core.spool import Lane
from dispatch.send import task as sender
from dispatch.send import waiting
from tests.conftest import Pair
from tests.unit.helpers import drain


def test_the_first_look_after_an_outage_says_so_even_if_it_finds_the_result(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    tx, rx = pair.sender.node(), pair.receiver.node()
    sent = sender.deliver(tx, sender.build(tx, to="gpubox", request="rides out an outage"))
    drain(rx)  # the result is on the share before the share "comes back"
    real = waiting.stage_of
    calls = {"n": 0}

    def flaky(lane: Lane, task_id: str) -> str:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(5, "Input/output error", str(lane.path))
        return real(lane, task_id)

    monkeypatch.setattr(waiting, "stage_of", flaky)
    notes: list[str] = []
    result = waiting.wait(
        pair.sender.node(DISPATCH_POLL_SEC="0.05"), sent.envelope.id, timeout=10, note=notes.append
    )
    assert result.status == "ok"
    assert len(notes) == 2, notes
    assert "Input/output error; still waiting for" in notes[0]
    assert notes[1].startswith("share reachable again")
