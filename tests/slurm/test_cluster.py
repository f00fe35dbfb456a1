"""The harness itself: a job runs on the cluster, and nothing of it outlives the test."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.slurm.cluster import SlurmCluster


def _pids_in_namespace(ns: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == ns:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def test_a_batch_job_runs_and_teardown_kills_everything(tmp_path: Path) -> None:
    cluster = SlurmCluster(tmp_path / "slurm")
    cluster.start()
    try:
        out = tmp_path / "job.out"
        submit = cluster.run(
            "sbatch",
            "--parsable",
            "--job-name=smoke",
            "--mem=20M",
            f"--output={out}",
            "--wrap",
            "echo hello from $SLURMD_NODENAME",
        )
        assert submit.returncode == 0, submit.stderr
        job_id = submit.stdout.strip().split(";")[0]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            states = [j["JobState"] for j in cluster.jobs() if j["JobId"] == job_id]
            if states == ["COMPLETED"]:
                break
            time.sleep(0.2)
        assert out.read_text() == "hello from dnode\n"
        (job,) = cluster.jobs_named("smoke")
        assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0")
        # A job left running is killed with the namespace.
        cluster.run(
            "sbatch", "--job-name=stay", "--mem=20M", "--output=/dev/null", "--wrap", "sleep 300"
        )
        pid = cluster.namespace_pid
        assert pid is not None
        child = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()[0]
        ns = os.readlink(f"/proc/{child}/ns/pid")
        assert len(_pids_in_namespace(ns)) >= 4  # init, munged, slurmctld, slurmd
    finally:
        cluster.stop()
    deadline = time.monotonic() + 10
    while _pids_in_namespace(ns) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _pids_in_namespace(ns) == []
    assert not cluster.munge_dir.exists()
