"""The shared root's layout: lanes, atomic writes, quarantine, killswitch, stale temp files."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from dispatch.core.config import Config
from dispatch.core.errors import Rejection
from dispatch.core.fsio import atomic_write
from dispatch.core.lanedirs import make_layout
from dispatch.core.spool import LANE_DIRS, Lane, Spool, clear_killswitch, set_killswitch


def a_lane(tmp_path: Path) -> Lane:
    lane = Lane(tmp_path / "share", "devbox", "gpubox")
    lane.ensure()
    return lane


def test_layout(tmp_path: Path) -> None:
    cfg = Config(root=tmp_path, node="hub", peers=("w1", "w2"))
    make_layout(Spool.of(cfg), cfg)
    for name in ("w1-to-hub", "w2-to-hub", "hub-to-w1", "hub-to-w2"):
        for sub in LANE_DIRS:
            assert (tmp_path / name / sub).is_dir(), (name, sub)
    assert (tmp_path / "heartbeats").is_dir() and (tmp_path / "logs").is_dir()
    lane = Spool(tmp_path).lane("w1", "hub")
    task_id = "0" * 8
    assert lane.result_path(task_id) == tmp_path / "w1-to-hub" / "done" / f"{task_id}.result.json"
    assert lane.relative(lane.log_path(task_id)) == f"w1-to-hub/done/{task_id}.log"


def test_atomic_write(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    assert atomic_write(target, b"one", mode=0o600)
    assert target.read_bytes() == b"one" and target.stat().st_mode & 0o777 == 0o600
    assert atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert not atomic_write(target, b"three", overwrite=False)
    assert target.read_bytes() == b"two"
    assert sorted(os.listdir(tmp_path)) == ["f.json"]  # no temp file left behind


def test_deliver_goes_through_tmp(tmp_path: Path) -> None:
    lane = a_lane(tmp_path)
    path = lane.deliver("abc", b"{}")
    assert path == lane.inbox / "abc.json" and path.read_bytes() == b"{}"
    assert os.listdir(lane.tmp) == []


def test_reject_keeps_the_file_and_a_reason(tmp_path: Path) -> None:
    lane = a_lane(tmp_path)
    (lane.inbox / "x.json").write_text("first")
    target = lane.reject("x.json", Rejection("malformed", "m"), node="gpubox")
    assert target == lane.rejected / "x.json" and target.read_text() == "first"
    record = json.loads((lane.rejected / "x.json.reason.json").read_text())
    assert record["reason"] == "malformed" and record["from_dir"] == "inbox"
    # The same name again: the first quarantined file and its reason stay untouched.
    (lane.inbox / "x.json").write_text("second")
    second = lane.reject("x.json", Rejection("replay", "again"), node="gpubox")
    assert second != target and second.read_text() == "second"
    assert target.read_text() == "first"
    assert json.loads((lane.rejected / "x.json.reason.json").read_text())["reason"] == "malformed"
    assert json.loads(Path(f"{second}.reason.json").read_text())["reason"] == "replay"


def test_reject_moves_a_symlink_itself(tmp_path: Path) -> None:
    lane = a_lane(tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    os.symlink(outside, lane.inbox / "l.json")
    lane.reject("l.json", Rejection("symlink", "a link"), node="gpubox")
    assert (lane.rejected / "l.json").is_symlink()
    assert outside.read_text() == "precious"


def test_reject_names_that_do_not_fit(tmp_path: Path) -> None:
    lane = a_lane(tmp_path)
    long_name = "a" * 250
    (lane.inbox / long_name).write_text("x")
    target = lane.reject(long_name, Rejection("bad_name", "long"), node="gpubox")
    assert target.name.startswith("renamed-")
    assert json.loads(Path(f"{target}.reason.json").read_text())["name"] == long_name
    (lane.inbox / ".hidden").write_text("x")
    assert lane.reject(".hidden", Rejection("bad_name", "hidden"), node="gpubox").name.startswith(
        "renamed-"
    )


def test_stale_tmp_files(tmp_path: Path) -> None:
    lane = a_lane(tmp_path)
    old = time.time() - 7200
    for path in (
        lane.tmp / "dead",
        lane.inbox / "x.json.tmp",
        lane.tmp / "fresh",
        lane.inbox / "y.json.tmp",
        lane.inbox / "old.json",
    ):
        path.write_text("x")
    for path in (lane.tmp / "dead", lane.inbox / "x.json.tmp", lane.inbox / "old.json"):
        os.utime(path, (old, old))
    stale = {p.name for p in lane.stale_tmp(time.time())}
    assert stale == {"dead", "x.json.tmp"}


def test_killswitch_states(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    assert not spool.killswitch().on
    spool.killswitch_path.write_text("")
    ks = spool.killswitch()
    assert ks.on and not ks.hard and ks.reason == "KILLSWITCH present"
    set_killswitch(spool, hard=False, reason="maintenance window")
    ks = spool.killswitch()
    assert ks.on and not ks.hard and ks.reason == "maintenance window"
    set_killswitch(spool, hard=True, reason="runaway agent")
    ks = spool.killswitch()
    assert ks.on and ks.hard and ks.reason == "runaway agent"
    spool.killswitch_path.write_text("HARD\n")
    assert spool.killswitch().hard
    spool.killswitch_path.write_text("please\nhard\n")  # only the first line decides
    assert not spool.killswitch().hard
    assert clear_killswitch(spool) is True
    assert clear_killswitch(spool) is False
    assert not spool.killswitch().on


def test_unreadable_killswitch_fails_closed(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.killswitch_path.mkdir()  # exists, cannot be read as a file
    ks = spool.killswitch()
    assert ks.on and "unreadable" in ks.reason
