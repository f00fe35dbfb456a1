"""The .rpm installed with the machine's rpm (`rpm --root`) into each Debian root of
tests/packaging/debroot.py: no Fedora root can be made here, but those roots have the two
Pythons the package must run on without a rebuild (3.11 on Debian 12, 3.13 on Debian 13),
with click, cryptography, pyinotify and systemd-python from the distribution. Not booted: the
root is entered with chroot (and a /proc of its own), as rpm itself runs scriptlets.

What it shows: the scriptlets run; %post byte-compiles the modules for the root's own Python;
the launchers, the generator and `dispatch demo` (a whole round trip, executions started as
`python3 -m dispatch exec` by the process launcher) work from /usr/share/dispatch; the units
pass that root's `systemd-analyze verify`; `rpm -e` leaves no module directory behind."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.packaging.conftest import SYSTEM_PATH, VERSION
from tests.packaging.debroot import PREFETCH, RELEASES, unpack_root

ENV = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}


def _run(argv: list[str], timeout: float = 300) -> str:
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, env=ENV
    )
    assert proc.returncode == 0, f"{argv}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _isolated(root: Path, *argv: str) -> list[str]:
    """`argv` in a mount and PID namespace with the root's own /proc mounted."""
    return ["unshare", "--mount", "--pid", "--fork", f"--mount-proc={root}/proc", *argv]


def _chroot(root: Path, *argv: str, timeout: float = 300) -> str:
    return _run(_isolated(root, "chroot", str(root), *argv), timeout=timeout)


@pytest.fixture(params=sorted(RELEASES))
def rpm_root(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    root = unpack_root(tmp_path / "root", request.param)
    try:
        # The package's dependencies, from the root's apt cache (no download).
        _chroot(root, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *PREFETCH)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_rpm_installs_and_runs_on_the_roots_python(rpm_root: Path, rpm: Path) -> None:
    root = rpm_root
    python = _chroot(root, "python3", "-c", "import sys; print(*sys.version_info[:2], sep='')")
    _run(["rpm", "--root", str(root), "--initdb"])
    # --nodeps: the root's rpm database is empty (its packages are dpkg's).
    _run(_isolated(root, "rpm", "--root", str(root), "-i", "--nodeps", str(rpm)))

    pycache = root / "usr/share/dispatch/dispatch/__pycache__"
    assert (pycache / f"cli.cpython-{python.strip()}.pyc").is_file(), sorted(
        p.name for p in pycache.iterdir()
    )
    assert _chroot(root, "dispatch", "--version").strip() == f"dispatch, version {VERSION}"
    assert "Usage: dispatch-send" in _chroot(root, "dispatch-send", "--help")
    (root / "tmp/gen").mkdir()
    _chroot(root, "/usr/lib/systemd/system-generators/dispatch-generator", *["/tmp/gen"] * 3)
    demo = _chroot(root, "dispatch", "demo", timeout=120)
    assert "result signature verified" in demo and "status ok" in demo, demo
    units = sorted(p.name for p in (root / "usr/lib/systemd/system").glob("dispatch*"))
    assert "dispatch-watch.service" in units
    checked = [u.replace("@.", "@check.") for u in units]
    _chroot(root, "systemd-analyze", "verify", "--man=no", *checked)
    # %post's systemctl preset enabled the triggers.
    enabled = _chroot(root, "systemctl", "is-enabled", "dispatch-watch.path")
    assert enabled.strip() == "enabled"

    _run(_isolated(root, "rpm", "--root", str(root), "-e", "dispatch"))
    assert not (root / "usr/share/dispatch").exists()
    assert not (root / "usr/bin/dispatch").exists()
