"""Faults are per entry and per lane (issue 12, finding 5): an entry that cannot be moved,
or a lane whose rejected/ is a regular file, is recorded and retried, and every other entry
and lane goes on; `dispatch promote` (the service) does not fail on it."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from dispatch.core import spool
from dispatch.core.spool import Lane
from tests.conftest import Pair
from tests.unit.helpers import cli, configure, drop, envelope, lane_in, promote_once, result_json


def _three(pair: Pair) -> Lane:
    configure(pair.receiver, DISPATCH_PEERS="third,devbox")
    other = Lane(pair.root, "third", "gpubox")
    other.ensure()
    return other


def test_an_unmovable_entry_is_recorded_and_the_rest_goes_on(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = _three(pair)
    stuck = "junk-that-will-not-move.json"
    (other.processing / "a.json").write_text("{}")
    (other.pending_ack / stuck).write_text("{}")
    real = spool.rename_new  # type: ignore[attr-defined]

    def refusing(src: str | Path, dst: str | Path, **kw: int | None) -> None:
        if Path(src).name == stuck:  # the share refuses this one rename (EACCES on NFS)
            raise PermissionError(errno.EACCES, "Permission denied", str(src))
        real(src, dst, **kw)

    monkeypatch.setattr(spool, "rename_new", refusing)
    good = envelope(pair)
    drop(lane_in(pair), good)
    report = promote_once(pair.receiver.node())
    assert result_json(lane_in(pair), good["id"])["status"] == "ok"
    assert report.errors >= 1
    assert os.path.lexists(other.rejected / "a.json")  # the other junk of that lane went
    faults = pair.receiver.node().state.faults.all()
    assert [f.key for f in faults] == [f"{other.name}/pending-ack/{stuck}"]
    assert "Permission denied" in faults[0].message
    promote_once(pair.receiver.node())
    assert pair.receiver.node().state.faults.all()[0].count == 2  # retried every pass
    monkeypatch.setattr(spool, "rename_new", real)
    promote_once(pair.receiver.node())
    assert os.path.lexists(other.rejected / stuck)
    assert pair.receiver.node().state.faults.all() == []


def test_a_lane_whose_rejected_is_a_file_does_not_stop_the_others(pair: Pair) -> None:
    other = _three(pair)
    (other.processing / "junk.json").write_text("{}")
    (other.pending_ack / "junk.json").write_text("{}")
    os.rmdir(other.rejected)
    other.rejected.write_text("in the way\n")
    good = envelope(pair)
    drop(lane_in(pair), good)
    proc = cli(pair.receiver, "promote")
    assert proc.returncode == 0, proc.stderr
    promote_once(pair.receiver.node())
    assert result_json(lane_in(pair), good["id"])["status"] == "ok"
    (fault,) = pair.receiver.node().state.faults.all()
    assert fault.reason == "dir_not_directory" and "rejected" in fault.message
