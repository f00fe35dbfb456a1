"""Junk is cheap and bounded (issue 12, finding 8): refused entries that earned no signed
answer are kept in rejected/ only up to a count per lane (and an age); what was dropped is
counted for metrics; nothing else of theirs stays (no ledger entry, result or post)."""

from __future__ import annotations

import os

import pytest

from dispatch.receive.promote import junk
from tests.conftest import Pair
from tests.unit.helpers import drop, envelope, lane_in, promote_once, result_json


def test_rejected_junk_is_capped_per_lane_and_counted(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(junk, "JUNK_KEEP", 3)
    lane = lane_in(pair)
    rx = pair.receiver.node()
    names = [f"junk-{i}.json" for i in range(7)]
    for name in names:
        drop(lane, b"{not json", name=name)
    good = envelope(pair)
    drop(lane, good)
    promote_once(rx)
    assert result_json(lane, good["id"])["status"] == "ok"
    kept = sorted(n for n in os.listdir(lane.rejected) if not n.endswith(".reason.json"))
    assert kept == names[-3:]  # the newest, each with its reason
    assert all(os.path.exists(lane.rejected / f"{n}.reason.json") for n in kept)
    assert junk.dropped_counts(rx.state.path) == {lane.name: 4}
    assert sorted(os.listdir(rx.state.path / "seen")) == [good["id"]]
    from dispatch.ops import metrics

    text = metrics.render(rx, {"running": 0, "killswitch": False, "unix": 0.0}, [])
    assert f'dispatch_junk_dropped_total{{node="gpubox",lane="{lane.name}"}} 4' in text


def test_junk_older_than_its_age_goes(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    lane = lane_in(pair)
    rx = pair.receiver.node()
    drop(lane, b"junk", name="old.json")
    promote_once(rx)
    assert os.path.lexists(lane.rejected / "old.json")
    monkeypatch.setattr(junk, "JUNK_MAX_AGE_S", 0)
    promote_once(rx)
    assert not os.path.lexists(lane.rejected / "old.json")
    assert not os.path.lexists(lane.rejected / "old.json.reason.json")
