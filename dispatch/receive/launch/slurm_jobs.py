"""What a dispatch job is to Slurm, as pure functions of text: its name and options (limits
mapped from the node's config and the task), and the parsers of what sbatch, scontrol,
squeue and sacct print, down to the table that maps a job's end to a result status
(tests/unit/receive/test_slurm.py). The commands themselves run in `launch/slurm`."""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dispatch.core.config import Config
from dispatch.core.model import TIMEOUT_EXIT, Status

JOB_PREFIX = "dispatch-"
# Base states (the first word of JobState) after which the job holds nothing any more.
TERMINAL = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "BOOT_FAIL",
        "DEADLINE",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
    }
)
# Lost to the cluster rather than to the agent: never requeued (--no-requeue), not rerun.
LOST = frozenset({"NODE_FAIL", "BOOT_FAIL", "PREEMPTED", "REVOKED"})
# What slurmstepd writes into the job's output when JobAcctGatherParams=OverMemoryKill ends
# it (state FAILED, ExitCode 0:9): the only sign that tells it from any SIGKILL.
OVER_MEMORY_MARKS = (b"exceeded memory limit", b"Exceeded job memory limit")


def job_name(task_id: str) -> str:
    return JOB_PREFIX + task_id


def job_comment(node_name: str) -> str:
    """Marks this gateway's jobs: another gateway on the same cluster has its own."""
    return f"dispatch:{node_name}"


# -- limits ----------------------------------------------------------------------------
def mem_option(memory_max: str) -> str:
    """DISPATCH_MEMORY_MAX as --mem: Slurm reads K/M/G/T the same way; a bare number is
    bytes for dispatch but megabytes for Slurm, so it is converted (rounded up)."""
    if memory_max[-1:].isdigit():
        return f"{max(1, math.ceil(int(memory_max) / 2**20))}M"
    return memory_max


def cpus_option(cpu_quota: str) -> int:
    """DISPATCH_CPU_QUOTA (200% = two CPUs' worth) as whole CPUs, rounded up."""
    return max(1, math.ceil(int(cpu_quota.rstrip("%")) / 100))


def time_option(timeout_s: int) -> int:
    """Slurm's time limit in minutes (its smallest unit), rounded up. The executor stops the
    job at timeout_s itself; this limit ends it even if the gateway is gone meanwhile."""
    return max(1, math.ceil(timeout_s / 60))


def sbatch_argv(
    cfg: Config,
    task_id: str,
    agent_argv: Sequence[str],
    *,
    timeout_s: int,
    output: Path,
    stdin: Path | None,
    user: str | None = None,
) -> list[str]:
    argv = [
        "sbatch",
        "--parsable",
        f"--job-name={job_name(task_id)}",
        f"--comment={job_comment(cfg.node)}",
        f"--mem={mem_option(cfg.memory_max)}",
        f"--cpus-per-task={cpus_option(cfg.cpu_quota)}",
        f"--time={time_option(timeout_s)}",
        # At most once: a job that loses its node is answered `interrupted`, never rerun.
        "--no-requeue",
        f"--output={output}",
        "--open-mode=append",
        f"--input={stdin or '/dev/null'}",
        f"--chdir={output.parent}",
        # The environment sbatch is started with is the agent's (agent_env).
        "--export=ALL",
    ]
    if cfg.slurm_partition:
        argv.append(f"--partition={cfg.slurm_partition}")
    if cfg.slurm_account:
        argv.append(f"--account={cfg.slurm_account}")
    if user:
        argv.append(f"--uid={user}")
    argv.extend(cfg.slurm_args)
    # exec: the agent is the batch step's process, so Slurm's signals reach it directly.
    argv.extend(["--wrap", "exec " + shlex.join(agent_argv)])
    return argv


def parse_sbatch(stdout: str) -> str | None:
    """`sbatch --parsable` prints `<job id>[;<cluster>]`."""
    first = stdout.strip().split(";")[0]
    return first if first.isdigit() else None


def refusal(stderr: str, returncode: int) -> str:
    """The line of sbatch's complaint that says why (`Invalid partition name specified`)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in reversed(lines):
        if "submission failed" in line or "error" in line:
            return line.removeprefix("sbatch: ")
    return lines[-1] if lines else f"sbatch exit status {returncode}"


# sbatch's words when it cannot tell whether slurmctld took the job.
AMBIGUOUS = ("timed out", "Socket timed out", "Unable to contact", "Zero Bytes were transmitted")


def ambiguous(stderr: str) -> bool:
    """A failed sbatch after which the job may exist all the same (the request went out
    and its answer was lost), as opposed to a refusal (bad partition, account, limits)."""
    return any(words in stderr for words in AMBIGUOUS)


# -- job state -------------------------------------------------------------------------
@dataclass(frozen=True)
class JobInfo:
    job_id: str
    name: str
    state: str  # the base state: "CANCELLED by 0" is CANCELLED
    exit_code: int
    signal: int
    reason: str = ""
    node: str = ""
    comment: str = ""
    time_limit: str = ""

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


def _exit_pair(text: str) -> tuple[int, int]:
    code, _, sig = text.partition(":")
    return (int(code) if code.isdigit() else 0, int(sig) if sig.isdigit() else 0)


def _none(value: str) -> str:
    return "" if value in ("(null)", "None", "N/A") else value


def parse_scontrol(text: str) -> list[JobInfo]:
    """`scontrol -o show job [id]`: one line of Key=Value words per job."""
    jobs = []
    for line in text.splitlines():
        fields = dict(re.findall(r"(?:^|\s)([A-Za-z/:]+)=(\S*)", line))
        if "JobId" not in fields:
            continue
        code, sig = _exit_pair(fields.get("ExitCode", "0:0"))
        jobs.append(
            JobInfo(
                job_id=fields["JobId"],
                name=fields.get("JobName", ""),
                state=fields.get("JobState", "").split()[0] if fields.get("JobState") else "",
                exit_code=code,
                signal=sig,
                reason=_none(fields.get("Reason", "")),
                node=_none(fields.get("NodeList", "")),
                comment=_none(fields.get("Comment", "")),
                time_limit=fields.get("TimeLimit", ""),
            )
        )
    return jobs


SQUEUE_FORMAT = "%i|%j|%T|%k|%N|%r"
SACCT_FIELDS = "jobid,jobname,state,exitcode,nodelist"


def parse_squeue(text: str) -> list[JobInfo]:
    """`squeue -h -o '%i|%j|%T|%k|%N|%r'` (id, name, state, comment, nodes, reason)."""
    jobs = []
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) != 6 or not parts[0].isdigit():
            continue
        job_id, name, state, comment, nodes, reason = parts
        jobs.append(JobInfo(job_id, name, state, 0, 0, _none(reason), nodes, _none(comment)))
    return jobs


def parse_sacct(text: str) -> list[JobInfo]:
    """`sacct -n -P -o jobid,jobname,state,exitcode,nodelist` (with `-c`: the jobcomp log).
    Step lines (`12.batch`) are left out: the job line carries the job's end."""
    jobs = []
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) != 5 or not parts[0].isdigit():
            continue
        job_id, name, state, exit_code, nodes = parts
        code, sig = _exit_pair(exit_code)
        jobs.append(
            JobInfo(job_id, name, state.split()[0] if state else "", code, sig, node=_none(nodes))
        )
    return jobs


def outcome(job: JobInfo, *, memory_max: str, output_tail: bytes) -> tuple[Status, int, str]:
    """The result status of a job that ended by itself (not stopped by dispatch).

    ExitCode is `<exit status>:<signal>` of the batch script, which `exec`s the agent."""
    where = f"Slurm job {job.job_id}" + (f" on {job.node}" if job.node else "")
    state = job.state
    if state == "COMPLETED" and job.exit_code == 0 and job.signal == 0:
        return Status.OK, 0, ""
    if state == "OUT_OF_MEMORY" or (
        state == "FAILED" and job.signal == 9 and any(m in output_tail for m in OVER_MEMORY_MARKS)
    ):
        return (
            Status.KILLED,
            -9,
            f"out of memory: over --mem={mem_option(memory_max)} "
            f"({where} {state} {job.exit_code}:{job.signal})",
        )
    if state in ("TIMEOUT", "DEADLINE"):
        return (
            Status.TIMEOUT,
            TIMEOUT_EXIT,
            f"Slurm time limit {job.time_limit or '(--time)'} reached ({where} {state})",
        )
    if state in LOST:
        return (
            Status.INTERRUPTED,
            -1,
            f"{where} ended {state} ({job.reason or 'no reason given'}); not requeued, "
            "not run again",
        )
    if state == "CANCELLED":
        return Status.KILLED, -job.signal or -15, f"{where} cancelled outside dispatch (scancel)"
    if job.signal:
        name = _signal_name(job.signal)
        return Status.KILLED, -job.signal, f"agent killed by {name} ({where} {state})"
    if job.exit_code:
        return Status.ERROR, job.exit_code, f"agent exited with status {job.exit_code}"
    # FAILED 0:0 is a launch failure (the script could not start: chdir, input file).
    return (
        Status.ERROR,
        1,
        f"{where} ended {state} ({job.reason or 'no reason given'}) before the agent ran",
    )


def _signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


# -- queries ---------------------------------------------------------------------------
