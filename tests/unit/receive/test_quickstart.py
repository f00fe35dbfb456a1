"""The executor's quick start: the agent started from the promoter's plan, and every doubt
left to the full executor with nothing claimed. Real plans (receive/exec_plan.py), real
agents, a real share directory."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dispatch.core.fsio import DirRefused
from dispatch.core.model import Stage, Status
from dispatch.core.pids import process_start_time
from dispatch.core.spool import Lane
from dispatch.receive import exec_plan, quickstart
from dispatch.receive.executor import execute
from dispatch.signer.records import executor_path
from tests.conftest import Pair
from tests.unit.helpers import (
    configure,
    env_for,
    events_of,
    result_json,
    runs_of,
    wait_for,
)
from tests.unit.receive.test_executor import queued

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="the quick start trusts only root's plans, and only root writes them: run as root "
    "(CI does)",
)


@pytest.fixture(autouse=True)
def plan_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    plans = tmp_path / "plans"
    monkeypatch.setattr(quickstart, "PLAN_DIR", plans)
    return plans


def planned(pair: Pair, **overrides: Any) -> tuple[dict[str, Any], Lane]:
    obj, lane = queued(pair, **overrides)
    assert exec_plan.write(pair.receiver.node(), obj["id"])
    return obj, lane


def receiver_env(pair: Pair) -> dict[str, str]:
    return {**env_for(pair.receiver), "DISPATCH_UNIT": "dispatch-exec@test.service"}


def test_a_planned_task_runs_once_from_its_quick_start(pair: Pair) -> None:
    obj, lane = planned(pair, request="hello quick", hops=1)
    node = pair.receiver.node()
    quick = quickstart.start(obj["id"], receiver_env(pair))
    assert quick is not None and quick.proc is not None and quick.error is None
    marker = node.state.started(obj["id"])
    assert marker is not None
    assert marker["pid"] == os.getpid() and marker["pid_start"] == process_start_time(os.getpid())
    assert marker["hops"] == 1 and marker["unit"] == "dispatch-exec@test.service"
    assert marker["started_at"] == quick.started_at
    res = execute(node, obj["id"], "dispatch-exec@test.service", quick)
    assert res is not None and res.status is Status.OK, res
    assert res.final_text == "fake agent (acceptEdits) did: hello quick"
    assert result_json(lane, obj["id"])["status"] == "ok"
    assert len(runs_of(pair, obj["id"])) == 1
    assert node.state.entry(obj["id"]).stage is Stage.DONE  # type: ignore[union-attr]
    assert not executor_path(node.state, obj["id"]).exists()
    assert not (lane.processing / f"{obj['id']}.json").exists()


def test_the_agent_gets_the_environment_the_full_executor_gives(pair: Pair, tmp_path: Path) -> None:
    agent = tmp_path / "env-agent"
    agent.write_text("#!/bin/sh\nenv | sort\n")
    agent.chmod(0o755)
    configure(pair.receiver, DISPATCH_AGENT_PROFILE="generic", DISPATCH_AGENT_BIN=str(agent))
    env = {**receiver_env(pair), "DISPATCH_WEBHOOK_URL": "https://hooks.example/s3cr3t"}
    seen = []
    for quick_start in (True, False):
        obj, _ = planned(pair) if quick_start else queued(pair)
        quick = quickstart.start(obj["id"], env) if quick_start else None
        assert (quick is not None) is quick_start
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)
        try:
            res = execute(pair.receiver.node(), obj["id"], "", quick)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        assert res is not None and res.status is Status.OK, res
        seen.append(res.output_tail.replace(obj["id"], "<id>"))
    assert seen[0] == seen[1]
    assert "DISPATCH_TASK_ID=<id>" in seen[0] and "s3cr3t" not in seen[0]


def test_a_stdin_request_reaches_a_quick_started_agent(pair: Pair) -> None:
    configure(
        pair.receiver,
        DISPATCH_AGENT_PROFILE="generic",
        DISPATCH_AGENT_BIN="/bin/sh -c 'read line; echo \"got $line\"'",
    )
    obj, _ = planned(pair, request="on stdin")
    quick = quickstart.start(obj["id"], receiver_env(pair))
    assert quick is not None
    res = execute(pair.receiver.node(), obj["id"], "", quick)
    assert res is not None and res.final_text == "got on stdin", res


def test_no_plan_no_quick_start(pair: Pair) -> None:
    obj, _ = queued(pair)
    assert quickstart.start(obj["id"], receiver_env(pair)) is None
    assert pair.receiver.node().state.started(obj["id"]) is None


def _unclaimed(pair: Pair, task_id: str) -> None:
    """Nothing claimed, nothing started: the full executor decides all of it."""
    assert quickstart.start(task_id, receiver_env(pair)) is None
    assert pair.receiver.node().state.started(task_id) is None
    assert runs_of(pair, task_id) == []


@pytest.mark.parametrize("how", ["other owner", "group writable", "symlink", "other task"])
def test_a_plan_that_is_not_roots_own_is_no_plan(pair: Pair, plan_dir: Path, how: str) -> None:
    obj, _ = planned(pair)
    path = plan_dir / f"{obj['id']}.json"
    if how == "other owner":
        os.chown(path, 65534, 65534)
    elif how == "group writable":
        path.chmod(0o620)
    elif how == "symlink":
        real = plan_dir / "elsewhere.json"
        path.rename(real)
        path.symlink_to(real)
    else:
        plan = json.loads(path.read_text())
        plan["task_id"] = "00000000-0000-4000-8000-000000000000"
        path.write_text(json.dumps(plan))
    _unclaimed(pair, obj["id"])


@pytest.mark.parametrize("change", ["killswitch", "cancel", "ledger", "swapped", "started"])
def test_anything_changed_since_the_plan_leaves_it_to_the_full_executor(
    pair: Pair, change: str
) -> None:
    obj, lane = planned(pair, request="planned")
    node = pair.receiver.node()
    task_file = lane.processing / f"{obj['id']}.json"
    if change == "killswitch":
        (pair.root / "KILLSWITCH").write_text("stop\n")
    elif change == "cancel":
        node.state.request_cancel(obj["id"], "cancelled by the test")
    elif change == "ledger":
        node.state.mark(obj["id"], Stage.DONE)
    elif change == "swapped":
        task_file.write_bytes(task_file.read_bytes().replace(b"planned", b"swapped"))
    else:
        assert node.state.mark_started(obj["id"], {"pid": 1})
        assert quickstart.start(obj["id"], receiver_env(pair)) is None
        assert node.state.started(obj["id"]) == {"pid": 1}
        return
    _unclaimed(pair, obj["id"])
    if change == "swapped":
        # ... and the full executor refuses it, as before there were plans.
        assert execute(node, obj["id"]) is None
        assert result_json(lane, obj["id"])["status"] == "rejected"
        assert runs_of(pair, obj["id"]) == []


def test_a_link_on_the_way_to_the_task_file_is_not_followed(pair: Pair, tmp_path: Path) -> None:
    obj, lane = planned(pair)
    elsewhere = tmp_path / "elsewhere"
    lane.processing.rename(elsewhere)
    lane.processing.symlink_to(elsewhere)
    _unclaimed(pair, obj["id"])


def test_an_agent_that_cannot_start_is_an_error_result_not_a_second_claim(pair: Pair) -> None:
    configure(pair.receiver, DISPATCH_AGENT_BIN="/nonexistent/agent")
    obj, lane = planned(pair)
    quick = quickstart.start(obj["id"], receiver_env(pair))
    assert quick is not None and quick.proc is None and quick.error
    res = execute(pair.receiver.node(), obj["id"], "", quick)
    assert res is not None and res.status is Status.ERROR and res.exit_code == 127, res
    assert "/nonexistent/agent" in res.reason
    assert result_json(lane, obj["id"])["status"] == "error"


def test_a_task_refused_after_its_quick_start_has_its_agent_ended(pair: Pair) -> None:
    obj, lane = planned(pair, request="long hang=30", timeout_s=600)
    quick = quickstart.start(obj["id"], receiver_env(pair))
    assert quick is not None and quick.proc is not None
    # The policy changed between admission and execution: the full check refuses it.
    configure(pair.receiver, DISPATCH_TIMEOUT_MAX_S=60)
    assert execute(pair.receiver.node(), obj["id"], "", quick) is None
    assert quick.proc.returncode == -signal.SIGKILL
    assert result_json(lane, obj["id"])["status"] == "rejected"
    # Never started again: the marker stays, and says the agent ended (nothing of it signed).
    marker = pair.receiver.node().state.started(obj["id"])
    assert marker is not None and marker.get("agent_ended") is True


def test_a_share_gone_after_the_quick_start_is_waited_for_while_the_agent_runs(
    pair: Pair,
) -> None:
    """The quick start reads the share before the agent starts; the take-over holds the lane
    after. A share that stops answering in between (here its mount gone: the lane is not
    there) is waited for, and the agent that did not need it is followed to its result."""
    obj, lane = planned(pair, request="through the gap sleep=0.5", timeout_s=60)
    quick = quickstart.start(obj["id"], receiver_env(pair))
    assert quick is not None and quick.proc is not None
    away = lane.path.with_name(lane.path.name + ".away")
    lane.path.rename(away)
    back = threading.Timer(1.5, away.rename, (lane.path,))
    back.start()
    try:
        res = execute(pair.receiver.node(), obj["id"], "", quick)
    finally:
        back.join()
    assert res is not None and res.status is Status.OK, res
    assert result_json(lane, obj["id"])["status"] == "ok"
    assert len(runs_of(pair, obj["id"])) == 1
    [waited] = events_of(pair, "share_waited")
    assert "does not exist" in waited, waited
    assert len(events_of(pair, "share_back")) == 1


def test_a_share_still_gone_at_the_deadline_ends_the_agent(pair: Pair) -> None:
    obj, lane = planned(pair, request="long hang=30", timeout_s=2)
    quick = quickstart.start(obj["id"], receiver_env(pair))
    assert quick is not None and quick.proc is not None
    assert quick.timeout_s == 2  # the admitted envelope's, from the plan
    lane.path.rename(lane.path.with_name(lane.path.name + ".away"))
    with pytest.raises(DirRefused, match="is the share mounted"):
        execute(pair.receiver.node(), obj["id"], "", quick)
    # Never left running unwatched past its deadline; the marker stays (never rerun).
    assert quick.proc.returncode == -signal.SIGKILL
    assert time.time() - quick.spawned_at >= 2
    assert pair.receiver.node().state.started(obj["id"]) is not None


def test_a_look_at_the_share_that_hangs_past_the_deadline_still_ends_the_agent(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hard NFS mount can hold a look for as long as the server is away: the agent is
    ended at its deadline all the same, and nothing is published for it once the look
    returns (the marker stays: answered interrupted, never run again)."""
    from dispatch.receive import executor

    obj, lane = planned(pair, request="long hang=30", timeout_s=1)
    quick = quickstart.start(obj["id"], receiver_env(pair))
    assert quick is not None and quick.proc is not None
    real_locate = executor.locate
    ended_while_hung: list[int | None] = []

    def hung_locate(node: Any, task_id: str) -> Any:
        time.sleep(2.5)  # the look is held past the 1 s deadline
        ended_while_hung.append(quick.proc.poll() if quick.proc else None)
        return real_locate(node, task_id)

    monkeypatch.setattr(executor, "locate", hung_locate)
    with pytest.raises(DirRefused, match="did not answer before the task's deadline"):
        execute(pair.receiver.node(), obj["id"], "", quick)
    assert ended_while_hung == [-signal.SIGKILL]
    assert not lane.result_path(obj["id"]).exists()
    assert pair.receiver.node().state.started(obj["id"]) is not None


def test_a_lane_refused_for_what_it_is_is_not_waited_for(pair: Pair) -> None:
    obj, lane = planned(pair, request="long hang=30", timeout_s=600)
    quick = quickstart.start(obj["id"], receiver_env(pair))
    assert quick is not None and quick.proc is not None
    # A link planted in the lane's place is refused at once: the share answers, wrongly.
    away = lane.path.with_name(lane.path.name + ".away")
    lane.path.rename(away)
    lane.path.symlink_to(away)
    began = time.monotonic()
    with pytest.raises(DirRefused, match="symbolic link"):
        execute(pair.receiver.node(), obj["id"], "", quick)
    assert time.monotonic() - began < 5
    assert quick.proc.returncode == -signal.SIGKILL
    assert not events_of(pair, "share_waited")


def test_the_plan_names_the_chain_box_of_an_agent_run_as_another_user(pair: Pair) -> None:
    configure(pair.receiver, DISPATCH_RUN_AS="nobody")
    obj, _ = queued(pair)
    plan = exec_plan.build(pair.receiver.node(), obj["id"])
    assert plan is not None and plan["user"] == "nobody"
    box = plan["box"]
    assert isinstance(box, dict) and box["uid"] == 65534
    env = plan["env"]
    assert isinstance(env, dict)
    assert (
        env["DISPATCH_OUTBOX"] == f"{box['base']}/outbox" and env["DISPATCH_CONFIG"] == "/dev/null"
    )


def test_make_box_gives_the_agent_its_outbox_and_state_only(tmp_path: Path) -> None:
    base = tmp_path / "exec" / "t1"
    quickstart.make_box(base, [base / "verdict"], [base / "outbox", base / "state"], 65534, 65534)
    assert base.stat().st_uid == 0 and (base / "verdict").stat().st_uid == 0
    assert (base / "outbox").stat().st_uid == 65534 and (
        base / "state"
    ).stat().st_mode & 0o777 == 0o700
    with pytest.raises(FileExistsError):
        quickstart.make_box(base, [], [], 0, 0)


def test_no_plan_for_a_task_that_is_not_plainly_queued(pair: Pair) -> None:
    obj, lane = queued(pair)
    node = pair.receiver.node()
    task_file = lane.processing / f"{obj['id']}.json"
    task_file.write_bytes(task_file.read_bytes() + b" ")
    assert exec_plan.build(node, obj["id"]) is None  # not the admitted bytes
    assert not exec_plan.write(node, "00000000-0000-4000-8000-000000000000")  # never seen


def test_the_quick_start_imports_no_heavy_module() -> None:
    import subprocess

    code = (
        "import sys; import dispatch.receive.quickstart; "
        "print(' '.join(sorted(m for m in sys.modules)))"
    )
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    # What costs the full executor its ~50 ms: none of it before the agent starts.
    for heavy in (
        "dataclasses",
        "hashlib",
        "socket",
        "cryptography",
        "dispatch.core.config",
        "dispatch.core.state",
        "dispatch.core.model",
    ):
        assert heavy not in loaded, heavy


def test_a_quick_start_in_a_real_exec_process(pair: Pair, plan_dir: Path) -> None:
    """`dispatch exec ID` as the unit runs it, with the plan directory of this test."""
    import subprocess

    obj, lane = planned(pair, request="as a process")
    code = (
        "import sys; from pathlib import Path; from dispatch.receive import quickstart; "
        f"quickstart.PLAN_DIR = Path({str(plan_dir)!r}); "
        "from dispatch.entry import main; sys.exit(main(['exec', sys.argv[1]]))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, obj["id"]],
        env=receiver_env(pair),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    wait_for(lambda: (lane.done / f"{obj['id']}.result.json").exists(), what="the result")
    assert result_json(lane, obj["id"])["status"] == "ok"
    assert len(runs_of(pair, obj["id"])) == 1
    audit = pair.root / "logs" / "gpubox.jsonl"
    starts = [
        row
        for line in audit.read_text().splitlines()
        if (row := json.loads(line)).get("event") == "exec_start" and row["task_id"] == obj["id"]
    ]
    assert len(starts) == 1 and starts[0]["quick_start"] == "yes", starts
    assert float(starts[0]["spawned_at"]) > 0
