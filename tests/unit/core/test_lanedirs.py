"""Nothing under the root is followed (issue 12, finding 2): a lane whose directory, or one
of its stage directories, is a symbolic link, a file, or someone else's is refused for that
lane alone, with its reason recorded; nothing outside the lane is touched, and a directory
swapped for a link after it was opened changes nothing."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from dispatch.core.config import Config
from dispatch.core.fsio import DirRefused
from dispatch.core.lanedirs import FAULT_PREFIX, hold, make_layout
from dispatch.core.spool import LANE_DIRS, Lane, Spool
from tests.conftest import Pair
from tests.unit.helpers import (
    cli,
    configure,
    drop,
    envelope,
    lane_in,
    promote_once,
    result_json,
)


def tree_digest(top: Path) -> str:
    """Names, kinds and contents of everything under `top` (links not followed)."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(top)):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            digest.update(str(path.relative_to(top)).encode())
            if path.is_symlink():
                digest.update(b"link:" + os.readlink(path).encode())
            elif path.is_file():
                digest.update(path.read_bytes())
    return digest.hexdigest()


def canary(pair: Pair) -> Path:
    """A local directory next to the share, holding what a receiver might be tricked into
    moving, reading or overwriting."""
    top = pair.root.parent / "canary"
    top.mkdir(exist_ok=True)
    (top / "passwd").write_text("root:x:0:0\n")
    (top / f"{envelope(pair)['id']}.json").write_text("{}")
    (top / "sub").mkdir(exist_ok=True)
    return top


PLANTS = ["symlink-local", "symlink-state", "symlink-other-lane", "symlink-file", "file"]


def plant(pair: Pair, path: Path, how: str, top: Path) -> None:
    real = path.with_name(path.name + ".real")
    os.rename(path, real)
    if how == "symlink-local":
        os.symlink(top, path)
    elif how == "symlink-state":
        os.symlink(pair.receiver.node().cfg.state_dir / "seen", path)
    elif how == "symlink-other-lane":
        os.symlink(Lane(pair.root, "gpubox", "devbox").path / path.name, path)
    elif how == "symlink-file":
        os.symlink(top / "passwd", path)
    else:
        path.write_text("not a directory\n")


@pytest.mark.parametrize("how", PLANTS)
@pytest.mark.parametrize("where", ["lane", *LANE_DIRS])
def test_a_lane_with_a_planted_directory_is_refused_and_nothing_outside_moves(
    pair: Pair, where: str, how: str
) -> None:
    configure(pair.receiver, DISPATCH_PEERS="third,devbox")
    broken = Lane(pair.root, "third", "gpubox")
    broken.ensure()
    top = canary(pair)
    rx = pair.receiver.node()
    # A queued task in the good lane, and one that ran, so the ledger has entries.
    before = envelope(pair)
    drop(lane_in(pair), before)
    promote_once(rx)
    ledger = rx.cfg.state_dir / "seen"
    entry_before, canary_before = (ledger / before["id"]).read_bytes(), tree_digest(top)
    (broken.inbox / "junk.json").write_text("{}")
    plant(pair, broken.path if where == "lane" else broken.path / where, how, top)
    good = envelope(pair)
    drop(lane_in(pair), good)
    report = promote_once(rx)
    # The other lane goes on; the broken one is refused with its reason, for status/doctor.
    assert result_json(lane_in(pair), good["id"])["status"] == "ok"
    assert report.errors >= 1
    (fault,) = [f for f in rx.state.faults.all() if f.key == FAULT_PREFIX + broken.name]
    assert fault.reason == ("dir_not_directory" if how == "file" else "dir_symlink"), fault
    assert tree_digest(top) == canary_before
    # The ledger: the earlier entry as it was, one more for the good task, nothing moved in.
    assert (ledger / before["id"]).read_bytes() == entry_before
    assert sorted(os.listdir(ledger)) == sorted([before["id"], good["id"]])
    # Repaired, the lane is used again and the fault clears.
    victim = broken.path if where == "lane" else broken.path / where
    os.unlink(victim)
    os.rename(victim.with_name(victim.name + ".real"), victim)
    promote_once(rx)
    assert [f.key for f in rx.state.faults.all()] == []
    assert json.loads((broken.rejected / "junk.json.reason.json").read_text())["reason"]


def test_a_directory_owned_by_someone_else_is_refused(pair: Pair) -> None:
    lane = lane_in(pair)
    os.chown(lane.inbox, 54321, 54321)
    with pytest.raises(DirRefused) as caught:
        hold(lane)
    assert caught.value.reason == "dir_owner" and "54321" in str(caught.value)
    drop_path = lane.inbox / "x.json"
    drop_path.write_text("{}")
    promote_once(pair.receiver.node())
    assert drop_path.exists()  # untouched: the lane is refused
    (fault,) = pair.receiver.node().state.faults.all()
    assert fault.reason == "dir_owner"


def test_a_directory_swapped_for_a_link_after_it_was_opened_changes_nothing(
    pair: Pair,
) -> None:
    lane = lane_in(pair)
    top = canary(pair)
    before = tree_digest(top)
    held_lane = hold(lane)
    try:
        os.rename(lane.path / "done", lane.path / "done.real")
        os.symlink(top, lane.path / "done")
        (held_lane.done / "x.result.json").write_text("{}")
        assert held_lane.relative(held_lane.done / "x.log") == f"{lane.name}/done/x.log"
        assert held_lane.dir_name(held_lane.rejected) == "rejected"
    finally:
        held_lane.close()
    assert (lane.path / "done.real" / "x.result.json").exists()
    assert tree_digest(top) == before


def test_status_and_doctor_show_a_refused_lane(pair: Pair) -> None:
    lane = lane_in(pair)
    os.rename(lane.path / "rejected", lane.path / "rejected.real")
    os.symlink(pair.root.parent, lane.path / "rejected")
    promote_once(pair.receiver.node())
    proc = cli(pair.receiver, "status", "--json")
    (fault,) = json.loads(proc.stdout)["faults"]
    assert fault["key"] == FAULT_PREFIX + lane.name and fault["reason"] == "dir_symlink"
    assert "rejected is a symbolic link" in fault["message"]
    proc = cli(pair.receiver, "status")
    assert f"fault {FAULT_PREFIX}{lane.name}" in proc.stdout
    proc = cli(pair.receiver, "doctor")
    assert proc.returncode != 0 and f"lane {lane.name}" in proc.stdout + proc.stderr


def test_init_opens_an_outgoing_lane_to_the_senders_group(tmp_path: Path) -> None:
    """What group `dispatch` members write (tmp/, inbox/, cancel/) becomes the group's,
    setgid; nothing else changes."""
    cfg = Config(root=tmp_path / "root", node="devbox", peers=("gpubox",))
    gid = os.getgid()
    make_layout(Spool.of(cfg), cfg, gid)
    lane = Spool.of(cfg).lane("devbox", "gpubox")
    for sub in ("tmp", "inbox", "cancel"):
        info = os.stat(lane.path / sub)
        assert (info.st_mode & 0o7777, info.st_gid) == (0o2775, gid)
    assert os.stat(lane.done).st_mode & 0o7777 != 0o2775
    incoming = Spool.of(cfg).lane("gpubox", "devbox")
    assert os.stat(incoming.inbox).st_mode & 0o7777 != 0o2775


@pytest.mark.parametrize("planted", ["lane", "stage"])
def test_init_follows_no_link_planted_on_the_share(tmp_path: Path, planted: str) -> None:
    """init runs as root: a lane, or a stage of one, planted as a link to a host directory
    is refused, and that directory keeps its modes and gains nothing."""
    cfg = Config(root=tmp_path / "root", node="devbox", peers=("gpubox",))
    outside = tmp_path / "host-dir"
    outside.mkdir(mode=0o1777)
    os.chmod(outside, 0o1777)
    lane = Spool.of(cfg).lane("devbox", "gpubox")
    if planted == "lane":
        lane.root.mkdir(parents=True)
        os.symlink(outside, lane.path)
    else:
        lane.path.mkdir(parents=True)
        os.symlink(outside, lane.path / "inbox")
    with pytest.raises(DirRefused):
        make_layout(Spool.of(cfg), cfg, os.getgid())
    assert os.stat(outside).st_mode & 0o7777 == 0o1777
    assert os.listdir(outside) == []
