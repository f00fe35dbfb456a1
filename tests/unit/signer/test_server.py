"""The signer over its real socket, with callers the kernel names: child processes run as
other users (so the test needs root to make them), one of them leading a session the
executor recorded as an agent's. What it signs verifies against the node's pin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dispatch.core.config import Config
from dispatch.core.keys import Pins, load_private, write_private
from dispatch.core.model import SCHEMA, Kind, Stage
from dispatch.core.node import Node
from dispatch.core.pids import process_start_time
from dispatch.core.signing import NodeKeys, verify_signed
from dispatch.signer.records import executor_path, forget_agent, mark_agent_ended, record_agent
from dispatch.signer.server import SignerServer, bind_socket

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="callers of other uids and groups can only be made by root"
)
NOBODY = 65534
REPO = Path(__file__).resolve().parents[3]
CHILD = """
import json, sys
from pathlib import Path
from dispatch.signer.client import SocketSigner
sys.stdin.readline()
try:
    print(json.dumps({"signed": SocketSigner(Path(sys.argv[1]), "devbox").sign(
        json.loads(sys.argv[2]))}))
except Exception as exc:
    print(json.dumps({"error": str(exc)}))
"""


class Running:
    def __init__(self, tmp_path: Path) -> None:
        write_private(tmp_path / "keys", "devbox")
        sock_dir = Path(tempfile.mkdtemp(prefix="signer-"))
        sock_dir.chmod(0o755)  # reachable by the callers made below
        self.socket = sock_dir / "signer.sock"
        self.cfg = Config(
            root=tmp_path / "share",
            node="devbox",
            peers=("gpubox", "c"),
            key_dir=tmp_path / "keys",
            state_dir=tmp_path / "state",
            signer_socket=self.socket,
            chain_peers=("gpubox",),
            max_hops=2,
        )
        self.node = Node(self.cfg)
        Pins(self.cfg.peers_dir).add(load_private(self.cfg.key_dir, "devbox").public, "test")
        self.keys = NodeKeys(self.cfg)
        self.stop = threading.Event()
        listener = bind_socket(self.socket)
        server = SignerServer.load(self.node)
        server.group = "users"  # stands in for `dispatch`, which this host need not have
        self.thread = threading.Thread(
            target=server.serve, args=(listener, 0.0, self.stop), daemon=True
        )
        self.thread.start()

    def ask(
        self,
        body: dict[str, Any],
        *,
        uid: int,
        gid: int,
        groups: tuple[int, ...] = (),
        agent_of: str = "",
        executor_of: str = "",
    ) -> dict[str, Any]:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(self.socket), json.dumps(body)],
            user=uid,
            group=gid,
            extra_groups=list(groups),
            start_new_session=True,
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if agent_of:
            record_agent(self.node.state, proc.pid, agent_of)
        if executor_of:
            # What `dispatch exec` records of itself (record_executor), for this process.
            start = process_start_time(proc.pid)
            executor_path(self.node.state, executor_of).parent.mkdir(exist_ok=True)
            executor_path(self.node.state, executor_of).write_text(f"{proc.pid} {start}")
        try:
            out, _ = proc.communicate("go\n", timeout=30)
        finally:
            forget_agent(self.node.state, proc.pid)
        answer: dict[str, Any] = json.loads(out)
        return answer


@pytest.fixture
def signer(tmp_path: Path) -> Iterator[Running]:
    running = Running(tmp_path)
    yield running
    running.stop.set()
    running.thread.join(5)


def task(**kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "schema": SCHEMA,
        "kind": "task",
        "id": str(uuid.uuid4()),
        "from": "devbox",
        "to": "gpubox",
        "created": "2026-12-01T00:00:00Z",
        "request": "x",
        "parent": None,
        "hops": 0,
    }
    body.update(kw)
    return body


def test_a_group_member_gets_a_signature_that_verifies(signer: Running) -> None:
    answer = signer.ask(task(), uid=NOBODY, gid=NOBODY, groups=(100,))
    assert "signed" in answer, answer
    verify_signed(signer.keys, answer["signed"], Kind.TASK, "task")


def test_a_user_outside_the_group_is_refused_with_one_line(signer: Running) -> None:
    answer = signer.ask(task(), uid=NOBODY, gid=NOBODY)
    assert "signed" not in answer
    assert answer["error"].startswith("the signer refused: uid 65534 may not sign as devbox")
    assert "\n" not in answer["error"]


def test_an_agents_session_signs_only_children_of_its_running_execution(
    signer: Running,
) -> None:
    parent = str(uuid.uuid4())
    state = signer.node.state
    state.claim(parent, "0" * 64, "c-to-devbox")
    state.mark_started(parent, {"hops": 1})
    state.mark(parent, Stage.RUNNING)
    child = signer.ask(task(parent=parent, hops=2), uid=NOBODY, gid=NOBODY, agent_of=parent)
    assert "signed" in child, child
    assert (child["signed"]["parent"], child["signed"]["hops"]) == (parent, 2)
    verify_signed(signer.keys, child["signed"], Kind.TASK, "task")
    refusals = {
        "forged parent": task(parent=str(uuid.uuid4()), hops=2),
        "hops of its choosing": task(parent=parent, hops=1),
        "peer outside the chain peers": task(to="c", parent=parent, hops=2),
        "a cancel": {"schema": SCHEMA, "kind": "cancel", "id": parent, "from": "devbox"},
    }
    for what, body in refusals.items():
        answer = signer.ask(body, uid=NOBODY, gid=NOBODY, agent_of=parent)
        assert "signed" not in answer, what
        assert answer["error"].startswith("the signer refused: execution"), (what, answer)
    # Group membership gives an agent's session nothing more.
    answer = signer.ask(task(), uid=NOBODY, gid=NOBODY, groups=(100,), agent_of=parent)
    assert "signed" not in answer
    state.mark(parent, Stage.DONE)
    ended = signer.ask(task(parent=parent, hops=2), uid=NOBODY, gid=NOBODY, agent_of=parent)
    assert "not running" in ended["error"]


def test_nothing_is_signed_once_the_agent_ended_even_before_its_result(
    signer: Running,
) -> None:
    """The executor marks the agent's end before it publishes the result: a process the
    agent left behind gets nothing in that window."""
    parent = str(uuid.uuid4())
    state = signer.node.state
    state.claim(parent, "0" * 64, "c-to-devbox")
    state.mark_started(parent, {"hops": 0, "pid": 1})
    state.mark(parent, Stage.RUNNING)
    assert "signed" in signer.ask(
        task(parent=parent, hops=1), uid=NOBODY, gid=NOBODY, agent_of=parent
    )
    mark_agent_ended(state, parent)
    assert state.started(parent) == {"hops": 0, "pid": 1, "agent_ended": True}
    late = signer.ask(task(parent=parent, hops=1), uid=NOBODY, gid=NOBODY, agent_of=parent)
    assert "is not running here" in late["error"], late


def test_max_hops_bounds_a_chain(signer: Running) -> None:
    parent = str(uuid.uuid4())
    signer.node.state.claim(parent, "0" * 64, "c-to-devbox")
    signer.node.state.mark_started(parent, {"hops": 2})
    answer = signer.ask(task(parent=parent, hops=3), uid=NOBODY, gid=NOBODY, agent_of=parent)
    assert "DISPATCH_MAX_HOPS=2" in answer["error"]


def test_watch_serves_its_executions_on_a_socket_of_its_own(tmp_path: Path) -> None:
    from dispatch.signer.client import SocketSigner
    from dispatch.signer.server import serving_for_watch

    running = Running(tmp_path)
    running.stop.set()
    before = os.environ.get("DISPATCH_SIGNER_SOCKET")
    with serving_for_watch(running.node):
        path = Path(os.environ["DISPATCH_SIGNER_SOCKET"])
        assert path != running.socket and path.is_socket()
        assert path.parent.stat().st_mode & 0o005 == 0o005  # reachable by an agent's user
        assert SocketSigner(path, "devbox").kid == running.keys.own_kid()
    assert not path.exists()
    assert os.environ.get("DISPATCH_SIGNER_SOCKET") == before


def test_an_executions_executor_gets_its_result_signed_and_its_root_agent_does_not(
    signer: Running,
) -> None:
    """Both root, both of the execution (here: the agent's session the executor recorded):
    only the pid `dispatch exec` recorded of itself gets the task's result signed, for the
    lane the ledger admitted it in; any other gets child tasks only."""
    task_id = str(uuid.uuid4())
    state = signer.node.state
    state.claim(task_id, "0" * 64, "c-to-devbox")
    state.mark_started(task_id, {"hops": 0})
    state.mark(task_id, Stage.RUNNING)
    result = {
        "schema": SCHEMA,
        "kind": "result",
        "id": task_id,
        "from": "c",
        "to": "devbox",
        "answered_by": "devbox",
        "status": "ok",
    }
    signed = signer.ask(result, uid=0, gid=0, agent_of=task_id, executor_of=task_id)
    assert "signed" in signed, signed
    verify_signed(signer.keys, signed["signed"], Kind.RESULT, "result")
    other_lane = signer.ask(
        {**result, "from": "gpubox"}, uid=0, gid=0, agent_of=task_id, executor_of=task_id
    )
    assert "signs its result for lane c-to-devbox" in other_lane["error"], other_lane
    # The root agent: the same uid and execution, not the recorded pid.
    agent = signer.ask(result, uid=0, gid=0, agent_of=task_id)
    assert agent["error"].startswith(f"the signer refused: execution {task_id} may sign only")
    child = signer.ask(task(parent=task_id, hops=1), uid=0, gid=0, agent_of=task_id)
    assert child["signed"]["parent"] == task_id


def test_a_running_signer_signs_with_the_rotated_key_from_the_next_request(
    signer: Running,
) -> None:
    # A busy dispatch-signer.service never idles out, and `dispatch watch`'s never does:
    # `dispatch keys rotate` must not leave it signing with the key peers are told to retire.
    from dispatch.ops.rotation import rotate

    before = signer.ask(task(), uid=NOBODY, gid=NOBODY, groups=(100,))["signed"]
    signer.cfg.root.mkdir()  # where the rotation statement is published
    rotated = rotate(Node(signer.cfg))
    assert before["kid"] == rotated.old.kid
    after = signer.ask(task(), uid=NOBODY, gid=NOBODY, groups=(100,))["signed"]
    assert after["kid"] == rotated.new.kid
    verify_signed(NodeKeys(signer.cfg), after, Kind.TASK, "task")
