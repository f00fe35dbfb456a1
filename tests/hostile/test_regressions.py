"""Fast regression tests (no systemd) for each defect the campaign found, beside the case
that found it (README.md, "Defects found"). Each failed before its fix."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest

from dispatch.core import fsio, spool
from dispatch.core.fsio import atomic_write
from dispatch.core.model import Stage
from dispatch.receive import publish
from tests.conftest import Pair
from tests.unit.helpers import (
    cli,
    configure,
    drain,
    drop,
    envelope,
    lane_in,
    promote_once,
    result_json,
    runs_of,
)


class Died(BaseException):
    """A process dying at this very point (SIGKILL runs no handlers; this one runs only the
    `finally` blocks it passes through, which is all the fixed code relies on either)."""


def fd_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def test_file_name_that_is_not_utf8_is_refused_with_its_reason(pair: Pair) -> None:
    # Found by the corpus (name-not-utf8): the reason record could not be encoded, the pass
    # crashed after moving the file, and the rejected file kept no reason.
    lane = lane_in(pair)
    name = os.fsdecode(b"\xff\xfe-not-utf8.json")
    (lane.inbox / name).write_bytes(b"{}")
    good = envelope(pair)
    drop(lane, good)
    report = promote_once(pair.receiver.node())
    assert report.rejected == 1 and report.admitted == 1
    record = json.loads((lane.rejected / f"{name}.reason.json").read_bytes())
    assert record["name"] == name and record["reason"] == "malformed"
    events = [
        json.loads(line)
        for line in (pair.root / "logs" / "gpubox.jsonl").read_text("utf-8").splitlines()
    ]
    assert any(
        "\\udcff\\udcfe-not-utf8.json" in e["summary"]
        for e in events
        if e["event"] == "task_rejected"
    )


def test_escaped_lone_surrogate_is_refused_not_a_crash(pair: Pair) -> None:
    # Found by the property tests (and kept in the corpus as lone-surrogate): `\ud800` is
    # valid JSON but not text; verifying the signature raised UnicodeEncodeError.
    lane = lane_in(pair)
    obj = envelope(pair, request="x")
    text = json.dumps(obj).replace('"request": "x"', '"request": "\\ud800"')
    drop(lane, text.encode(), name=f"{obj['id']}.json")
    report = promote_once(pair.receiver.node())
    assert report.rejected == 1
    record = json.loads((lane.rejected / f"{obj['id']}.json.reason.json").read_text())
    assert record["reason"] == "malformed" and "surrogate" in record["message"]


def test_nul_in_agent_output_leaves_a_readable_result(pair: Pair, tmp_path: Path) -> None:
    # Found by the property tests (sign then verify of a result quoting a NUL byte): the
    # result was written, but every reader refused it (`dispatch wait` exit 3).
    agent = tmp_path / "nul-agent"
    agent.write_text("#!/bin/sh\nprintf 'before\\000after\\n'\n")
    agent.chmod(0o755)
    configure(pair.receiver, DISPATCH_AGENT_PROFILE="generic", DISPATCH_AGENT_BIN=str(agent))
    obj = envelope(pair)
    drop(lane_in(pair), obj)
    drain(pair.receiver.node())
    proc = cli(pair.sender, "result", obj["id"], "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["final_text"] == "before\x00after"


def test_a_claim_cut_short_does_not_turn_the_task_into_a_replay(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found while aiming the promote SIGKILLs: the ledger entry was created empty, then
    # written; dying in between left an entry the next pass read as a replay, and the
    # verified task never ran and never got a result.
    lane = lane_in(pair)
    obj = envelope(pair)
    drop(lane, obj)
    real_write = os.write

    def dying_write(fd: int, data: Any) -> int:
        if "/seen/" in fd_path(fd):
            raise Died
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", dying_write)
    with pytest.raises(Died):
        promote_once(pair.receiver.node())
    monkeypatch.setattr(os, "write", real_write)
    drain(pair.receiver.node())
    assert result_json(lane, obj["id"])["status"] == "ok"
    assert len(runs_of(pair, obj["id"])) == 1


def test_a_rejection_cut_short_never_leaves_a_file_without_its_reason(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found while aiming the promote SIGKILLs: the entry was moved to rejected/ first and
    # its reason written after; dying in between lost the reason (invariant 3).
    lane = lane_in(pair)
    drop(lane, b"junk", name="junk.json")
    real_move = fsio.rename_new

    def move_then_die(src: Any, dst: Any, **kwargs: Any) -> None:
        # The lane's directories are held open, so the target is /proc/self/fd/N/junk.json:
        # the name tells the move into rejected/ (the reason file has its own name).
        real_move(src, dst, **kwargs)
        if Path(dst).name == "junk.json":
            raise Died

    monkeypatch.setattr(spool, "rename_new", move_then_die)
    with pytest.raises(Died):
        promote_once(pair.receiver.node())
    monkeypatch.setattr(spool, "rename_new", real_move)
    promote_once(pair.receiver.node())
    names = sorted(os.listdir(lane.rejected))
    assert names == ["junk.json", "junk.json.reason.json"], names
    assert os.listdir(lane.inbox) == []


def test_deferred_log_rest_survives_a_failed_publish(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by the share-full case: a pass that could write neither the log's rest nor the
    # result dropped the rest anyway; the result was published later with its log cut.
    lane = lane_in(pair)
    obj = envelope(pair)
    drop(lane, obj)
    node = pair.receiver.node()
    drain(node)
    signed = result_json(lane, obj["id"])
    lane.result_path(obj["id"]).unlink()
    (lane.processing / f"{obj['id']}.json").write_text("{}")
    node.state.mark(obj["id"], Stage.QUEUED)
    node.state.defer_result(obj["id"], lane.name, signed, b"THE END OF THE LOG\n")

    def full(*_args: Any, **_kw: Any) -> bool:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsio, "append", lambda _path, data: data)
    monkeypatch.setattr(publish, "write_signed", full)
    promote_once(node)
    monkeypatch.undo()
    promote_once(node)
    assert result_json(lane, obj["id"]) == signed
    assert lane.log_path(obj["id"]).read_bytes().endswith(b"THE END OF THE LOG\n")
    assert node.state.deferred_results() == []


def test_writes_a_full_share_refuses_leave_no_files_behind(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by the share-full case: every refused result left an empty temp file in done/
    # (one more each pass), and a refused `dispatch send` an empty envelope in tmp/.
    lane = lane_in(pair)
    real_write = os.write

    def enospc(fd: int, data: Any) -> int:
        if str(pair.root) in fd_path(fd):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", enospc)
    with pytest.raises(OSError):
        atomic_write(lane.done / "x.result.json", b"{}")
    with pytest.raises(OSError):
        lane.deliver("8d0c7f8e-3c0a-4b7e-9f0e-2f8f5b0c1a11", b"{}")
    monkeypatch.undo()
    assert os.listdir(lane.done) == [] and os.listdir(lane.tmp) == []
