"""The one place that starts other programs: `systemctl`, executions, agents."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn

from dispatch.core.errors import DispatchError

if TYPE_CHECKING:
    import subprocess

# subprocess (with signal, selectors, threading and locale) is imported where a program is
# started: `dispatch promote` loads this module for systemctl, a fallback it rarely takes,
# and every task waits for that process's imports.

# Where this dispatch was imported from. The rpm keeps it in a directory of its own that no
# interpreter searches by default (/usr/share/dispatch: packaging/rpm/install-wheel), so a
# child `python3 -m dispatch` would not find it there.
PACKAGE_TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def module_argv(module: str, *args: str, python: str = sys.executable) -> list[str]:
    """`python3 -m MODULE ARGS` with this interpreter (or `python`) and this install of
    dispatch. No quote in the code: it also goes into DISPATCH_AGENT_BIN (the demo's agent),
    which holds none."""
    code = (
        "import runpy, sys; top = sys.argv.pop(1); top in sys.path or sys.path.insert(0, top); "
        "runpy.run_module(sys.argv.pop(1), run_name=__name__, alter_sys=True)"
    )
    return [python, "-c", code, PACKAGE_TOP, module, *args]


def dispatch_argv(*args: str) -> list[str]:
    """Run this same dispatch, whichever interpreter and install it came from."""
    return module_argv("dispatch", *args)


def run(
    argv: Sequence[str],
    *,
    timeout: float = 30,
    check: bool = False,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    import subprocess

    try:
        proc = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=None if env is None else dict(env),
            check=False,
        )
    except FileNotFoundError:
        raise DispatchError(f"{argv[0]}: command not found") from None
    except subprocess.TimeoutExpired:
        raise DispatchError(f"{' '.join(argv[:3])}: no answer within {timeout:g}s") from None
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        last = detail[-1] if detail else f"exit status {proc.returncode}"
        raise DispatchError(f"{' '.join(argv[:4])} failed: {last}")
    return proc


def systemctl(
    *args: str, timeout: float = 30, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return run(["systemctl", *args], timeout=timeout, check=check)


def slurm(
    command: str,
    *args: str,
    timeout: float = 30,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """One Slurm client call (sbatch, squeue, scontrol, scancel, sacct, sinfo). Never
    `check`: the callers read Slurm's refusals from stderr."""
    return run([command, *args], timeout=timeout, env=env)


def replace_with(argv: Sequence[str]) -> NoReturn:
    """This process becomes `argv` (same pid, stdin and stdout: an MCP client's pipes)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], list(argv))


def spawn_detached(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdout: int | IO[Any] | None = None,
) -> subprocess.Popen[bytes]:
    """A child in its own session, so one signal to its process group reaches all of it.
    Its stderr (events) stays ours; its stdout (the agent's echo) goes where we say
    (nowhere by default)."""
    import subprocess

    return subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL if stdout is None else stdout,
        stderr=None,
        start_new_session=True,
        env=None if env is None else dict(env),
        close_fds=True,
    )


def spawn_agent(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None,
    user: str | None,
    with_stdin: bool,
) -> subprocess.Popen[bytes]:
    import subprocess

    kwargs: dict[str, Any] = {}
    if user and os.geteuid() == 0:
        kwargs.update(user=user, group=_primary_group(user), extra_groups=[])
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.PIPE if with_stdin else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=dict(env),
        cwd=cwd,
        close_fds=True,
        **kwargs,
    )


def _primary_group(user: str) -> int:
    import pwd

    return pwd.getpwnam(user).pw_gid
