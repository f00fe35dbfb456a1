"""The Slurm backend's pure parts: what sbatch is given, how Slurm's answers are read, and how
a job's end becomes a result status. The texts are copied from Slurm 22.05.8 (Debian 12) runs
on a single-node cluster (tests/slurm runs the same against the real thing)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from dispatch.core import config as config_mod
from dispatch.core.errors import ConfigError
from dispatch.core.model import Status
from dispatch.receive.launch import slurm

SCONTROL_FAILED = (
    "JobId=1 JobName=dispatch-x UserId=root(0) GroupId=root(0) MCS_label=N/A "
    "Priority=4294901759 Nice=0 Account=(null) QOS=(null) JobState=FAILED "
    "Reason=NonZeroExitCode Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 "
    "ExitCode=2:0 RunTime=00:00:00 TimeLimit=00:01:00 TimeMin=N/A "
    "SubmitTime=2026-12-01T22:12:10 Partition=debug AllocNode:Sid=localhost:5352 "
    "ReqNodeList=(null) ExcNodeList=(null) NodeList=dnode BatchHost=dnode NumNodes=1 "
    "NumCPUs=1 NumTasks=1 CPUs/Task=1 ReqB:S:C:T=0:0:*:* TRES=cpu=1,mem=20M,node=1,billing=1 "
    "Command=(null) WorkDir=/work/wt-slurm Comment=dispatch:gw  StdErr=/tmp/x.out "
    "StdIn=/dev/null StdOut=/tmp/x.out Power= \n"
)
OOM_TAIL = (
    b"working...\nslurmstepd-dnode: error: StepId=2.batch exceeded memory limit "
    b"(99090432 > 52428800), being killed\nslurmstepd-dnode: error: Exceeded job memory limit\n"
)


def job(state: str, exit_code: str = "0:0", **fields: str) -> slurm.JobInfo:
    line = f"JobId=7 JobName=dispatch-t JobState={state} ExitCode={exit_code} NodeList=dnode"
    line += "".join(f" {key}={value}" for key, value in fields.items())
    (info,) = slurm.parse_scontrol(line)
    return info


def test_scontrol_line_is_read() -> None:
    (info,) = slurm.parse_scontrol(SCONTROL_FAILED)
    assert info == slurm.JobInfo(
        job_id="1",
        name="dispatch-x",
        state="FAILED",
        exit_code=2,
        signal=0,
        reason="NonZeroExitCode",
        node="dnode",
        comment="dispatch:gw",
        time_limit="00:01:00",
    )
    assert info.terminal


def test_state_with_a_suffix_is_its_base_state() -> None:
    # scontrol writes "JobState=CANCELLED" but squeue/sacct may say "CANCELLED by 0".
    (info,) = slurm.parse_sacct("12|dispatch-t|CANCELLED by 0|0:15|dnode\n12.batch|batch|X|0:15|")
    assert (info.job_id, info.state, info.signal) == ("12", "CANCELLED", 15)


def test_squeue_lines() -> None:
    out = "5|dispatch-a|PENDING|dispatch:gpubox||BeginTime\n6|other|RUNNING|(null)|dnode|None\n"
    pending, other = slurm.parse_squeue(out)
    assert (pending.state, pending.comment, pending.node, pending.reason) == (
        "PENDING",
        "dispatch:gpubox",
        "",
        "BeginTime",
    )
    assert not pending.terminal
    assert other.comment == ""


@pytest.mark.parametrize(
    ("info", "tail", "status", "exit_code", "words"),
    [
        (job("COMPLETED"), b"", Status.OK, 0, ""),
        (job("FAILED", "3:0"), b"", Status.ERROR, 3, "exited with status 3"),
        # task/cgroup memory enforcement
        (job("OUT_OF_MEMORY", "0:125"), b"", Status.KILLED, -9, "out of memory: over --mem=4G"),
        # JobAcctGatherParams=OverMemoryKill: FAILED 0:9 and slurmstepd's words in the output
        (job("FAILED", "0:9"), OOM_TAIL, Status.KILLED, -9, "out of memory"),
        (job("FAILED", "0:9"), b"bye\n", Status.KILLED, -9, "killed by SIGKILL"),
        (
            job("TIMEOUT", "0:15", TimeLimit="00:01:00"),
            b"",
            Status.TIMEOUT,
            124,
            "Slurm time limit 00:01:00",
        ),
        (job("NODE_FAIL", "0:0"), b"", Status.INTERRUPTED, -1, "not requeued, not run again"),
        (job("CANCELLED", "0:15"), b"", Status.KILLED, -15, "cancelled outside dispatch"),
        (job("FAILED", "0:0", Reason="JobLaunchFailure"), b"", Status.ERROR, 1, "JobLaunchFailure"),
    ],
)
def test_how_a_job_ended_becomes_a_status(
    info: slurm.JobInfo, tail: bytes, status: Status, exit_code: int, words: str
) -> None:
    got = slurm.outcome(info, memory_max="4G", output_tail=tail)
    assert got[:2] == (status, exit_code)
    assert words in got[2]


def test_limits_map_to_sbatch_units() -> None:
    assert slurm.mem_option("4G") == "4G"
    assert slurm.mem_option("512M") == "512M"
    # dispatch's bare number is bytes, Slurm's is megabytes.
    assert slurm.mem_option("1000000") == "1M"
    assert slurm.mem_option("3145729") == "4M"
    assert slurm.cpus_option("200%") == 2
    assert slurm.cpus_option("150%") == 2
    assert slurm.cpus_option("50%") == 1
    assert slurm.time_option(5) == 1
    assert slurm.time_option(60) == 1
    assert slurm.time_option(61) == 2


def _cfg(tmp_path: Path, **env: str) -> config_mod.Config:
    base = {
        "DISPATCH_ROOT": str(tmp_path),
        "DISPATCH_NODE": "gpubox",
        "DISPATCH_PEERS": "devbox",
        "DISPATCH_CONFIG": "",
        "DISPATCH_LAUNCHER": "slurm",
    }
    base.update(env)
    return config_mod.load({k: v for k, v in base.items() if v})


def test_sbatch_argv(tmp_path: Path) -> None:
    cfg = _cfg(
        tmp_path,
        DISPATCH_MEMORY_MAX="2G",
        DISPATCH_CPU_QUOTA="400%",
        DISPATCH_SLURM_PARTITION="gpu",
        DISPATCH_SLURM_ACCOUNT="agents",
        DISPATCH_SLURM_ARGS="--gres=gpu:1 '--qos=low prio'",
    )
    out = tmp_path / "t.out"
    argv = slurm.sbatch_argv(
        cfg, "abc", ["claude", "-p", "it's $HOME"], timeout_s=600, output=out, stdin=None
    )
    assert argv[:2] == ["sbatch", "--parsable"]
    for option in (
        "--job-name=dispatch-abc",
        "--comment=dispatch:gpubox",
        "--mem=2G",
        "--cpus-per-task=4",
        "--time=10",
        "--no-requeue",
        f"--output={out}",
        "--input=/dev/null",
        "--partition=gpu",
        "--account=agents",
        "--gres=gpu:1",
        "--qos=low prio",
    ):
        assert option in argv
    assert argv[-2] == "--wrap"
    # The batch script execs the agent with its arguments intact (no shell expansion).
    assert shlex.split(argv[-1]) == ["exec", "claude", "-p", "it's $HOME"]


def test_sbatch_refusal_line() -> None:
    err = (
        "sbatch: error: invalid partition specified: nosuch\n"
        "sbatch: error: Batch job submission failed: Invalid partition name specified\n"
    )
    assert (
        slurm.refusal(err, 1)
        == "error: Batch job submission failed: Invalid partition name specified"
    )
    assert not slurm.ambiguous(err)
    assert slurm.ambiguous(
        "sbatch: error: Batch job submission failed: Socket timed out on send/recv"
    )
    assert slurm.parse_sbatch("42\n") == "42"
    assert slurm.parse_sbatch("42;cluster\n") == "42"
    assert slurm.parse_sbatch("") is None


def test_slurm_knobs_are_checked_at_load_all_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        _cfg(
            tmp_path,
            DISPATCH_SLURM_PARTITION="gpu; rm -rf /",
            DISPATCH_SLURM_ARGS="--requeue --gres=gpu:1 oops",
            DISPATCH_MEMORY_MAX="50%",
        )
    text = str(err.value)
    assert "DISPATCH_SLURM_PARTITION: not a Slurm partition/account name" in text
    assert "DISPATCH_SLURM_ARGS:" in text
    assert "DISPATCH_MEMORY_MAX: Slurm's --mem needs a size" in text
    with pytest.raises(ConfigError, match="--time is set by dispatch"):
        _cfg(tmp_path, DISPATCH_SLURM_ARGS="--time=5")
    with pytest.raises(ConfigError, match="--output is set by dispatch"):
        _cfg(tmp_path, DISPATCH_SLURM_ARGS="--output=/tmp/x")
    cfg = _cfg(tmp_path, DISPATCH_SLURM_ARGS="--gres=gpu:1 --qos=agents")
    assert cfg.slurm_args == ("--gres=gpu:1", "--qos=agents")
    assert cfg.slurm_spool() == cfg.state_dir / "slurm"
    # A percentage is fine for systemd's MemoryMax=, only Slurm needs a size.
    assert (
        _cfg(tmp_path, DISPATCH_LAUNCHER="process", DISPATCH_MEMORY_MAX="50%").memory_max == "50%"
    )
