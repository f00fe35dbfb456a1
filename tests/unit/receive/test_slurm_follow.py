"""How a followed Slurm job's end becomes a status (slurm_follow.classify_job): a guard that
fired counts only when the job did not end by itself first. The whole follow against a real
cluster: tests/slurm."""

from __future__ import annotations

import signal
import time
import uuid

from dispatch.core.model import TIMEOUT_EXIT, Envelope, Status, parse_envelope
from dispatch.core.node import Node
from dispatch.receive.launch import slurm
from dispatch.receive.slurm_follow import classify_job
from tests.conftest import Pair
from tests.unit.helpers import envelope


def job(state: str, exit_code: str = "0:0") -> slurm.JobInfo:
    (info,) = slurm.parse_scontrol(
        f"JobId=7 JobName=dispatch-t JobState={state} ExitCode={exit_code} NodeList=dnode"
    )
    return info


def verdict(
    node: Node,
    task: Envelope,
    info: slurm.JobInfo | None,
    *,
    known: bool = True,
    timed_out: bool = False,
    signum: int = 0,
) -> tuple[Status, int, str]:
    return classify_job(node, task.id, info, known, timed_out, signum, task, b"", time.monotonic())


def an_envelope(pair: Pair) -> tuple[Node, Envelope]:
    return pair.receiver.node(), parse_envelope(envelope(pair, timeout_s=600))


def test_a_guard_counts_only_when_the_job_did_not_end_by_itself(pair: Pair) -> None:
    node, task = an_envelope(pair)
    # Timed out, and the job ended by our scancel (or never confirmed its end): timeout.
    for ended in (job("CANCELLED", "0:15"), job("RUNNING"), None):
        status, code, reason = verdict(node, task, ended, timed_out=True)
        assert (status, code, reason) == (
            Status.TIMEOUT,
            TIMEOUT_EXIT,
            "exceeded timeout_s=600",
        )
    # Timed out as it finished by itself: how it finished.
    assert verdict(node, task, job("COMPLETED"), timed_out=True)[0] is Status.OK
    assert verdict(node, task, job("FAILED", "3:0"), signum=signal.SIGTERM)[:2] == (
        Status.ERROR,
        3,
    )
    # Stopped by a signal while it ran: the stop's reason.
    status, _, reason = verdict(node, task, job("CANCELLED", "0:15"), signum=signal.SIGTERM)
    assert status is Status.KILLED and reason == "execution stopped by SIGTERM"


def test_a_vanished_job_is_interrupted_and_a_recorded_cancel_named(pair: Pair) -> None:
    node, task = an_envelope(pair)
    status, _, reason = verdict(node, task, None, known=False, timed_out=True)
    assert status is Status.INTERRUPTED and "not run again" in reason
    # Cancelled by us on a recorded request: the request's reason.
    node.state.request_cancel(task.id, "cancelled by devbox: wrong branch")
    assert verdict(node, task, job("CANCELLED", "0:15")) == (
        Status.CANCELLED,
        -15,
        "cancelled by devbox: wrong branch",
    )


def test_a_job_that_never_confirmed_its_end_is_killed_unconfirmed(pair: Pair) -> None:
    node, task = an_envelope(pair)
    status, code, reason = verdict(node, task, job("RUNNING"))
    assert (status, code) == (Status.KILLED, -1)
    assert reason == "Slurm job 7 did not confirm its end after scancel (RUNNING)"


def test_another_tasks_cancel_is_not_this_ones(pair: Pair) -> None:
    node, task = an_envelope(pair)
    node.state.request_cancel(str(uuid.uuid4()), "another task's cancel")
    # Cancelled, with no request of its own on record: cancelled outside dispatch.
    assert verdict(node, task, job("CANCELLED", "0:15"))[0] is Status.KILLED
