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

Every Slurm command goes through `dispatch.core.runner.slurm`. What a job is to Slurm (options, the
parsers, the outcome table) is in `slurm_jobs`, re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from dispatch.core import events
from dispatch.core.config import Config
from dispatch.core.errors import DispatchError
from dispatch.core.node import Node
from dispatch.core.runner import slurm
from dispatch.receive.launch.slurm_jobs import (
    AMBIGUOUS,
    JOB_PREFIX,
    LOST,
    OVER_MEMORY_MARKS,
    SACCT_FIELDS,
    SQUEUE_FORMAT,
    TERMINAL,
    JobInfo,
    ambiguous,
    cpus_option,
    job_comment,
    job_name,
    mem_option,
    outcome,
    parse_sacct,
    parse_sbatch,
    parse_scontrol,
    parse_squeue,
    refusal,
    sbatch_argv,
    time_option,
)

__all__ = [
    "AMBIGUOUS",
    "JOB_PREFIX",
    "LOST",
    "OVER_MEMORY_MARKS",
    "SACCT_FIELDS",
    "SQUEUE_FORMAT",
    "TERMINAL",
    "JobInfo",
    "SlurmLauncher",
    "SlurmUnavailable",
    "ambiguous",
    "cancel",
    "cpus_option",
    "doctor_checks",
    "ensure_spool",
    "find_jobs",
    "job_comment",
    "job_name",
    "mem_option",
    "node_jobs",
    "outcome",
    "parse_sacct",
    "parse_sbatch",
    "parse_scontrol",
    "parse_squeue",
    "refusal",
    "sbatch_argv",
    "show_job",
    "spool_paths",
    "submit_user",
    "time_option",
]


class SlurmUnavailable(DispatchError):
    """Slurm did not answer (controller down, client missing): nothing can be concluded."""


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
        from dispatch.core.pids import execution_alive
        from dispatch.receive.launch import Launcher
        from dispatch.receive.launch.process import ProcessLauncher

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

    def stopping(self) -> set[str]:
        return self.local.stopping()

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
