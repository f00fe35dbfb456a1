"""A real single-node Slurm cluster (Debian's slurmctld, slurmd and munge) for tests.

Everything runs inside one `unshare --pid --fork --mount --mount-proc` namespace whose init is
a shell that starts munged, slurmctld and slurmd in the foreground: SIGKILL to `unshare`
(`--kill-child`) kills that init, and the kernel then kills every process of the namespace,
job steps included. Nothing of the cluster outlives a test, even when pytest itself is killed
(the unshare process dies with its parent).

No network namespace: slurmd cannot bind inside one ("Address family not supported"), so the
daemons use free ports of the machine. Clients (sbatch, squeue, the dispatch under test) run
outside the namespace and find the cluster through `SLURM_CONF`; munged listens on a socket
named in the config's `AuthInfo`, so no client needs the namespace's mounts either.

Memory is enforced by the job accounting sampler (`OverMemoryKill`, sampled every second),
not by task/cgroup: the cgroup plugin would create hierarchies in the machine's cgroup tree,
which other tests and engineers share. See ../shared/notes/slurm-facts.md for what each
setting was checked to do.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "slurmstepd")
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "sacct", "sinfo")
NODE = "dnode"
PARTITION = "debug"


def missing_prerequisites() -> list[str]:
    problems = []
    if os.geteuid() != 0:
        problems.append("not root (slurmd starts job steps as their user)")
    for prog in (*DAEMONS, *CLIENTS, "unshare", "setpriv"):
        if shutil.which(prog) is None and not Path("/usr/sbin", prog).exists():
            problems.append(f"{prog} not installed")
    try:
        pwd.getpwnam("munge")
    except KeyError:
        problems.append("no munge user (package munge)")
    return problems


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


class SlurmCluster:
    """One controller and one compute node (`dnode`, 2 CPUs, `real_memory` MB), partition
    `debug`. `env` is what a client needs (SLURM_CONF)."""

    def __init__(
        self,
        workdir: Path,
        *,
        cpus: int = 2,
        real_memory_mb: int = 4000,
        extra_conf: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir
        self.cpus = cpus
        self.real_memory_mb = real_memory_mb
        self.extra_conf = tuple(extra_conf)
        self.conf = workdir / "slurm.conf"
        self.log_dir = workdir / "log"
        self.jobcomp = self.log_dir / "jobcomp.txt"
        # munged checks every directory up to its socket: it must be traversable by all and
        # writable by none but root or munge. pytest's temp dirs are 0700, so munge gets its
        # own directory under /tmp (removed by stop()).
        self.munge_dir = Path(tempfile.mkdtemp(prefix="dispatch-munge-", dir="/tmp"))
        self.munge_socket = self.munge_dir / "sock" / "munge.socket"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def client_env(self) -> dict[str, str]:
        return dict(os.environ, **self.env)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, timeout: float = 30) -> None:
        init = self._write_files()
        out = (self.log_dir / "init.out").open("wb")
        self._proc = subprocess.Popen(
            [
                "unshare",
                "--pid",
                "--fork",
                "--mount",
                "--mount-proc",
                "--kill-child",
                "/bin/sh",
                str(init),
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
            env=self.client_env(),
        )
        out.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            state = self.run("sinfo", "-h", "-n", NODE, "-o", "%t").stdout.strip()
            if state == "idle":
                return
            time.sleep(0.2)
        log = self.diagnostics()
        self.stop()
        raise RuntimeError(f"slurm cluster did not come up within {timeout:g}s:\n{log}")

    def stop(self) -> None:
        """SIGKILL the namespace (unshare ignores SIGTERM while it waits for its child)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(10)
        shutil.rmtree(self.munge_dir, ignore_errors=True)

    def __enter__(self) -> SlurmCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def namespace_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- clients --------------------------------------------------------------------------
    def run(self, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.client_env(),
            check=False,
        )

    def jobs(self) -> list[dict[str, str]]:
        """Jobs slurmctld still knows (pending, running, and ended within MinJobAge)."""
        out = self.run("scontrol", "-o", "show", "job").stdout
        jobs = []
        for line in out.splitlines():
            fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
            if "JobId" in fields:
                jobs.append(fields)
        return jobs

    def jobs_named(self, name: str) -> list[dict[str, str]]:
        return [job for job in self.jobs() if job.get("JobName") == name]

    def completed_jobs(self) -> list[dict[str, str]]:
        """Every job that ended, from the jobcomp/filetxt log (one line per job)."""
        if not self.jobcomp.exists():
            return []
        jobs = []
        for line in self.jobcomp.read_text().splitlines():
            jobs.append(dict(part.split("=", 1) for part in line.split() if "=" in part))
        return jobs

    def submissions_named(self, name: str) -> int:
        """How many jobs of this name slurmctld was ever given (live ones and ended ones)."""
        ids = {job["JobId"] for job in self.jobs_named(name)}
        ids |= {job["JobId"] for job in self.completed_jobs() if job.get("Name") == name}
        return len(ids)

    def diagnostics(self) -> str:
        parts = []
        for path in (
            self.log_dir / "init.out",
            self.log_dir / "slurmctld.log",
            self.log_dir / "slurmd.log",
            self.munge_socket.parent / "munged.log",
        ):
            name = path.name
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-30:]
                parts.append(f"--- {name}\n" + "\n".join(lines))
        return "\n".join(parts)

    # -- files ----------------------------------------------------------------------------
    def _write_files(self) -> Path:
        munge = pwd.getpwnam("munge")
        w = self.workdir
        for sub in ("state", "spool", f"spool/{NODE}", "log"):
            (w / sub).mkdir(parents=True, exist_ok=True)
        self.munge_dir.chmod(0o755)
        key_dir = self.munge_dir / "key"
        sock_dir = self.munge_socket.parent
        for private, mode in ((key_dir, 0o700), (sock_dir, 0o755)):
            private.mkdir(mode=mode)
            os.chown(private, munge.pw_uid, munge.pw_gid)
        key = key_dir / "munge.key"
        subprocess.run(
            ["mungekey", "--create", "--force", f"--keyfile={key}"], check=True, capture_output=True
        )
        os.chown(key, munge.pw_uid, munge.pw_gid)
        key.chmod(0o400)
        host = socket.gethostname()
        lines = [
            "ClusterName=dispatchtest",
            # slurmctld refuses to start unless this names the host it runs on.
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "CredType=cred/munge",
            f"StateSaveLocation={w / 'state'}",
            f"SlurmdSpoolDir={w / 'spool'}/%n",
            f"SlurmctldPidFile={w / 'slurmctld.pid'}",
            f"SlurmdPidFile={w / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.log_dir / 'slurmctld.log'}",
            f"SlurmdLogFile={self.log_dir / 'slurmd.log'}",
            "MailProg=/bin/true",
            "MpiDefault=none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/linux",
            "JobAcctGatherParams=OverMemoryKill",
            "JobAcctGatherFrequency=task=1",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/filetxt",
            f"JobCompLoc={self.jobcomp}",
            # Ended jobs stay visible to `scontrol show job` this long.
            "MinJobAge=300",
            "KillWait=5",
            "ReturnToService=2",
            # The scheduler runs at once on submit and job end; keep its periodic pass short.
            "SchedulerParameters=sched_interval=2",
            f"NodeName={NODE} NodeAddr=127.0.0.1 CPUs={self.cpus} "
            f"RealMemory={self.real_memory_mb} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
            *self.extra_conf,
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        init = w / "init.sh"
        init.write_text(f"""\
set -u
setpriv --reuid=munge --regid=munge --clear-groups munged --foreground \\
  --socket={self.munge_socket} --key-file={key} \\
  --pid-file={sock_dir}/munged.pid --seed-file={key_dir}/seed \\
  --log-file={sock_dir}/munged.log &
i=0
while [ ! -S {self.munge_socket} ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
slurmctld -D -i &
slurmd -D -N {NODE} &
wait
""")
        return init
