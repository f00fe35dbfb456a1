"""Executions whose agent runs as a Slurm job: this node is a gateway (typically a login node)
that verifies, admits, gates and records every task as any node does, then hands the agent to
Slurm. The executor (`dispatch exec`, holding the key) stays here; the compute node gets a
batch script that runs the agent CLI and nothing of dispatch.

Why sbatch and a followed output file, not `srun` inside `dispatch exec`: an `srun` allocation
lives as long as the srun process, so a gateway that crashes or reboots takes its jobs' output
stream with it and leaves allocations that Slurm only reclaims at their time limit (or never,
with `InactiveLimit=0`, the default). A batch job ends when its script ends, whoever watches
it, and its output file can be picked up again by the next executor: the gateway can restart
in the middle of a job and still publish the one signed result.

What the job needs from the site: DISPATCH_SLURM_DIR (default `<state dir>/slurm`) visible
at the same path on the gateway and the compute nodes, holding each job's `<id>.out` (and
`<id>.in` when the agent reads its prompt from stdin).

Every Slurm command goes through `dispatch.core.runner.slurm`. The parsers below are pure
functions of the commands' text (tests/unit/test_slurm.py).
"""

from __future__ import annotations

import math
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dispatch.core import events
from dispatch.core.config import Config
from dispatch.core.errors import DispatchError
from dispatch.core.model import Status
from dispatch.core.node import Node
from dispatch.core.runner import slurm

JOB_PREFIX = "dispatch-"
TIMEOUT_EXIT = 124
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


class SlurmUnavailable(DispatchError):
    """Slurm did not answer (controller down, client missing): nothing can be concluded."""


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
def _call(command: str, *args: str, env: Mapping[str, str] | None = None) -> str:
    try:
        proc = slurm(command, *args, env=env)
    except DispatchError as exc:
        raise SlurmUnavailable(str(exc)) from None
    if proc.returncode != 0:
        raise SlurmUnavailable(f"{command}: {refusal(proc.stderr, proc.returncode)}")
    return proc.stdout


def show_job(job_id: str) -> JobInfo | None:
    """The job as slurmctld knows it, or from the accounting/jobcomp records once
    slurmctld has forgotten it (MinJobAge). None: no trace anywhere."""
    try:
        proc = slurm("scontrol", "-o", "show", "job", job_id)
    except DispatchError as exc:
        raise SlurmUnavailable(str(exc)) from None
    if proc.returncode == 0:
        jobs = [job for job in parse_scontrol(proc.stdout) if job.job_id == job_id]
        if jobs:
            return jobs[0]
    elif "Invalid job id" not in proc.stderr:
        raise SlurmUnavailable(f"scontrol: {refusal(proc.stderr, proc.returncode)}")
    return _accounted(["-j", job_id], lambda job: job.job_id == job_id)


def _accounted(select: list[str], keep: object) -> JobInfo | None:
    """The job from slurmdbd accounting, else from the jobcomp log (`sacct -c`); either may
    be disabled on a site, which only means no answer from it."""
    assert callable(keep)
    for extra in ([], ["-c"]):
        try:
            proc = slurm("sacct", *extra, "-n", "-P", "-o", SACCT_FIELDS, *select)
        except DispatchError:
            continue
        if proc.returncode != 0:
            continue
        jobs = [job for job in parse_sacct(proc.stdout) if keep(job)]
        if jobs:
            return max(jobs, key=lambda job: int(job.job_id))
    return None


def find_jobs(node_name: str, task_id: str) -> list[JobInfo]:
    """This gateway's jobs for a task (pending, running, or ended and still remembered)."""
    name = job_name(task_id)
    out = _call("squeue", "-h", "-t", "all", f"--name={name}", "-o", SQUEUE_FORMAT)
    mine = [job for job in parse_squeue(out) if job.comment == job_comment(node_name)]
    if mine:
        return mine
    # slurmctld forgot it (MinJobAge): the records keep no comment, only the name.
    found = _accounted([f"--name={name}"], lambda job: job.name == name)
    return [found] if found else []


def submit_user(cfg: Config) -> str:
    """Who the jobs run as: DISPATCH_RUN_AS when the gateway runs as root (sbatch --uid),
    else the gateway's own user."""
    import pwd

    if cfg.run_as and os.geteuid() == 0:
        return cfg.run_as
    return pwd.getpwuid(os.geteuid()).pw_name


def node_jobs(cfg: Config) -> list[JobInfo]:
    """This gateway's dispatch jobs that are pending or running (squeue's default states):
    its submitting user's jobs (one squeue, however busy the cluster), recognised by name
    prefix and this node's comment."""
    out = _call("squeue", "-h", f"--user={submit_user(cfg)}", "-o", SQUEUE_FORMAT)
    return [
        job
        for job in parse_squeue(out)
        if job.name.startswith(JOB_PREFIX) and job.comment == job_comment(cfg.node)
    ]


def cancel(job_ids: Sequence[str]) -> None:
    if job_ids:
        _call("scancel", *job_ids)


# -- the launcher ----------------------------------------------------------------------
class SlurmLauncher:
    """The Launcher for DISPATCH_LAUNCHER=slurm. The executor (`dispatch exec`) is started
    here as the local launcher would (a systemd unit, or a child process); it submits the
    job and follows it. `running()` counts this node's jobs in Slurm (pending ones hold a
    slot too) plus executors still before their submission or after the job's end."""

    def __init__(self, node: Node) -> None:
        from dispatch.core.config import systemd_is_pid1
        from dispatch.receive.launch import Launcher
        from dispatch.receive.launch.process import ProcessLauncher, execution_alive

        self.node = node
        self._alive = execution_alive
        self.local: Launcher
        if systemd_is_pid1():
            from dispatch.receive.launch.systemd import SystemdLauncher

            self.local = SystemdLauncher(node)
        else:
            self.local = ProcessLauncher(node)
        self.reachable = True

    def running(self) -> set[str]:
        ids = self.local.running()
        try:
            jobs = node_jobs(self.node.cfg)
            self.reachable = True
        except SlurmUnavailable as exc:
            if self.reachable:
                self.node.emit(
                    "slurm_unreachable",
                    f"cannot list jobs: {exc}; no job is submitted until Slurm answers",
                    level=events.ERR,
                )
            self.reachable = False
            return ids
        for job in jobs:
            task_id = job.name[len(JOB_PREFIX) :]
            marker = self.node.state.started(task_id)
            # A job whose executor is gone is left out: the pass resumes it (resume()).
            if marker is not None and self._alive(marker):
                ids.add(task_id)
        return ids

    def start(self, task_id: str) -> None:
        if not self.reachable:
            # The pass keeps the task queued: an executor now would only see sbatch fail.
            raise SlurmUnavailable("Slurm did not answer squeue in this pass")
        self.local.start(task_id)

    def stop(self, task_id: str) -> None:
        marker = self.node.state.started(task_id) or {}
        job_id = marker.get("slurm_job")
        try:
            if isinstance(job_id, str) and job_id:
                cancel([job_id])
            else:
                cancel(
                    [job.job_id for job in find_jobs(self.node.name, task_id) if not job.terminal]
                )
        except SlurmUnavailable as exc:
            self.node.emit(
                "slurm_cancel_failed", f"scancel: {exc}", task_id=task_id, level=events.ERR
            )
        # The executor, if alive, sees the job end and writes the cancelled/killed result.
        self.local.stop(task_id)

    def resume(self, task_id: str, marker: Mapping[str, object]) -> bool:
        """The executor died (gateway crash, reboot) but the job may run on: start a new
        executor, which follows the job to its end, or answers `interrupted` if Slurm has
        no trace of it. Never a second submission: the marker says it was started."""
        if marker.get("launcher") != "slurm":
            return False
        if not self.reachable:
            return True  # hold the task: only Slurm can say whether its job still runs
        self.local.start(task_id)
        return True

    def unit(self, task_id: str) -> str:
        return self.local.unit(task_id)


def spool_paths(cfg: Config, task_id: str) -> tuple[Path, Path]:
    """(output, stdin) files of a task's job in DISPATCH_SLURM_DIR."""
    spool = cfg.slurm_spool()
    return spool / f"{task_id}.out", spool / f"{task_id}.in"


def ensure_spool(cfg: Config) -> Path:
    spool = cfg.slurm_spool()
    spool.mkdir(mode=0o700, parents=True, exist_ok=True)
    return spool


def doctor_checks(cfg: Config) -> list[tuple[bool, str]]:
    """(ok, line) for `dispatch doctor`: the controller answers, the partition exists and is
    up, the spool directory is there."""
    checks: list[tuple[bool, str]] = []
    try:
        _call("squeue", "-h", "-o", "%i")
        checks.append((True, "squeue answers"))
    except SlurmUnavailable as exc:
        checks.append((False, f"squeue does not answer: {exc}"))
        return checks
    args = ["-h", "-o", "%P|%a|%D"]
    if cfg.slurm_partition:
        args += ["-p", cfg.slurm_partition]
    try:
        rows = [line.split("|") for line in _call("sinfo", *args).splitlines() if line]
    except SlurmUnavailable as exc:
        checks.append((False, f"sinfo does not answer: {exc}"))
        return checks
    if cfg.slurm_partition:
        if not rows:
            checks.append((False, f"partition {cfg.slurm_partition!r} does not exist"))
        elif rows[0][1] != "up":
            checks.append((False, f"partition {cfg.slurm_partition} is {rows[0][1]}"))
        else:
            checks.append((True, f"partition {cfg.slurm_partition} up, {rows[0][2]} node(s)"))
    else:
        default = [row for row in rows if row[0].endswith("*")]
        checks.append(
            (
                bool(default),
                "default partition " + (default[0][0].rstrip("*") if default else "missing"),
            )
        )
    spool = cfg.slurm_spool()
    checks.append(
        (
            spool.is_dir() or not spool.exists(),
            f"job files in {spool} (must be visible to the compute nodes)",
        )
    )
    return checks
