"""dispatch.entry: the unit's command lines (`dispatch promote`, `dispatch exec ID`) run
without importing click, with the same one-line errors and exit codes as through click."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dispatch.entry import hop
from tests.conftest import Pair
from tests.unit.helpers import clean_env, cli, env_for

TASK_ID = "0b7c1f7e-5d1a-4c0e-9a2b-3f4e5d6c7b8a"


@pytest.mark.parametrize(
    "args",
    [["promote", "--json"], ["exec", "--help"], ["exec"], ["--debug", "promote"], ["status"]],
)
def test_anything_but_a_units_command_line_goes_to_click(args: list[str]) -> None:
    assert hop(args) is None


def test_the_units_command_lines_are_hops() -> None:
    assert hop(["promote"]) is not None
    assert hop(["exec", TASK_ID]) is not None


def _python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


def test_a_hop_imports_no_click_and_fails_like_the_cli(pair: Pair) -> None:
    code = (
        "import sys; from dispatch import entry; rc = entry.main(sys.argv[1:]); "
        "print('click' in sys.modules, rc)"
    )
    # An unknown task: the executor refuses it, one line on stderr, its exit code.
    env = env_for(pair.receiver)
    fast = _python(code.replace("sys.argv[1:]", f"['exec', '{TASK_ID}']"), env)
    slow = cli(pair.receiver, "--debug", "exec", TASK_ID)
    assert fast.stdout.split()[0] == "False", fast.stdout + fast.stderr
    assert int(fast.stdout.split()[1]) == slow.returncode
    assert fast.stderr.strip().splitlines()[-1] == slow.stderr.strip().splitlines()[-1]
    # No config at all: the same message either way.
    bad = clean_env(DISPATCH_CONFIG="/nonexistent/dispatch.conf")
    fast = _python(code.replace("sys.argv[1:]", "['promote']"), bad)
    slow = cli(None, "promote", env=bad)
    assert fast.stdout.split() == ["False", str(slow.returncode)]
    assert slow.returncode != 0
    assert fast.stderr == slow.stderr
    assert fast.stderr.startswith("dispatch: DISPATCH_CONFIG names /nonexistent/dispatch.conf")


def test_a_promote_pass_loads_nothing_only_an_execution_needs() -> None:
    # What `dispatch promote` loads under systemd before its pass (a path unit's start pays
    # for each module before the task reaches its agent): none of the executor's supervision,
    # nor the stdlib modules that only starting a program or removing a tree needs.
    code = (
        "import sys; import dispatch.entry; "
        "from dispatch.core import broken_config, config; "
        "from dispatch.receive.promote import run_unit_pass, linger, last_look; "
        "from dispatch.receive.launch import systemd; "
        "from dispatch.receive import exec_plan, sensor, intake; "
        "print(' '.join(sorted(sys.modules)))"
    )
    loaded = set(_python(code, clean_env()).stdout.split())
    assert "dispatch.receive.exec_plan" in loaded  # the probe ran
    for heavy in (
        "click",
        "subprocess",
        "shutil",
        "socket",
        "selectors",
        "dispatch.receive.supervise",
        "dispatch.receive.follow",
        "dispatch.receive.output",
    ):
        assert heavy not in loaded, heavy


def test_a_pass_through_the_hop_does_the_work(pair: Pair) -> None:
    from dispatch.send import task as sender

    tx = pair.sender.node()
    task = sender.deliver(tx, sender.build(tx, to="gpubox", request="through the hop"))
    proc = subprocess.run(
        [sys.executable, "-m", "dispatch", "promote"],
        env=env_for(pair.receiver),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lane = pair.receiver.node().spool.lane("devbox", "gpubox")
    assert not (lane.inbox / f"{task.envelope.id}.json").exists()
