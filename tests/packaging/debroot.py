"""A clean Debian root for the package tests (Debian 12 by default, any release in
`RELEASES`), booted with systemd as PID 1.

The root is made with debootstrap once and kept as a tarball under /var/cache/dispatch-test,
keyed by the release, by what goes into it and by the ISO week (so security and point-release
updates are picked up weekly); each test unpacks a fresh copy. The tarball also holds the apt
lists and the downloaded, not installed, dependencies of the package, so that `apt-get install
./dispatch.deb` resolves them through apt as on a real machine without a download per run.

`DebianRootHost` is tests/integration/sdhost.py's SystemdHost (private PID, mount, UTS and IPC
namespaces; private /run, /sys/fs/cgroup and cgroup subtree; boot units that act on the
machine masked), with one step added before systemd starts: the namespace pivots into the
Debian root, taking the kernel file systems and the private /run with it. Everything systemd
and the package then do lands in the root, never on the machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.integration.sdhost import DEFAULT_ENV, SystemdHost

CACHE_DIR = Path(os.environ.get("DISPATCH_TEST_CACHE", "/var/cache/dispatch-test"))
# The default release, and every release the package tests install on (suite: version).
SUITE = "bookworm"
RELEASES = {"bookworm": "12", "trixie": "13"}
MIRROR = "http://deb.debian.org/debian"
VARIANT = "minbase"
# What booting the root needs; everything else comes from the package's dependencies.
INCLUDE = ("systemd",)
# Downloaded into the root's apt cache, not installed: the package's dependencies.
PREFETCH = (
    "python3",
    "python3-click",
    "python3-cryptography",
    "python3-pyinotify",
    "python3-systemd",
)
# Bump when the way the root is made changes, to invalidate every cached tarball.
RECIPE = 1

_BUILD_TIMEOUT = 1200


def cache_key(week: str | None = None, suite: str = SUITE) -> str:
    recipe = json.dumps([RECIPE, suite, MIRROR, VARIANT, INCLUDE, PREFETCH])
    digest = hashlib.sha256(recipe.encode()).hexdigest()[:12]
    return f"{suite}-{VARIANT}-{digest}-{week or time.strftime('%G-W%V')}"


def _run(argv: list[str], timeout: float = _BUILD_TIMEOUT, **kw: object) -> None:
    proc = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**DEFAULT_ENV, "DEBIAN_FRONTEND": "noninteractive"},
        **kw,
    )  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise AssertionError(
            f"exit status {proc.returncode}: {shlex.join(argv)}\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}"
            f"--- stderr ---\n{proc.stderr[-4000:]}"
        )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def root_tarball(suite: str = SUITE) -> Path:
    """The cached root of `suite` for this week, made first if needed (a few minutes)."""
    if suite not in RELEASES:
        raise AssertionError(f"no recipe for a {suite!r} root: RELEASES has {sorted(RELEASES)}")
    key = cache_key(suite=suite)
    tarball = CACHE_DIR / f"{key}.tar"
    with _locked(CACHE_DIR / ".lock"):
        if tarball.exists():
            return tarball
        # Under the lock no other build runs: what is there was left by a killed one.
        for stale in CACHE_DIR.glob("build-*"):
            shutil.rmtree(stale, ignore_errors=True)
        work = CACHE_DIR / f"build-{os.getpid()}"
        root = work / "root"
        try:
            _run(
                [
                    "debootstrap",
                    f"--variant={VARIANT}",
                    f"--include={','.join(INCLUDE)}",
                    suite,
                    str(root),
                    MIRROR,
                ]
            )
            shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
            _run(["chroot", str(root), "apt-get", "update", "-qq"])
            _run(
                [
                    "chroot",
                    str(root),
                    "apt-get",
                    "install",
                    "-y",
                    "-qq",
                    "--download-only",
                    "--no-install-recommends",
                    *PREFETCH,
                ]
            )
            partial = tarball.with_suffix(".tar.partial")
            _run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(partial), "."])
            partial.rename(tarball)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        # Older roots (another week, another recipe) are not needed any more.
        for old in CACHE_DIR.glob(f"{suite}-*.tar"):
            if old != tarball:
                old.unlink(missing_ok=True)
    return tarball


def unpack_root(dest: Path, suite: str = SUITE) -> Path:
    """A fresh copy of the cached root of `suite` at `dest`, ready to boot."""
    tarball = root_tarball(suite)
    dest.mkdir(parents=True)
    _run(["tar", "--numeric-owner", "-C", str(dest), "-xf", str(tarball)], timeout=300)
    # apt in the booted root may need the mirror for anything not in its cache.
    shutil.copyfile("/etc/resolv.conf", dest / "etc/resolv.conf")
    return dest


# Units of the Debian root that would act on the machine's network or devices, which this
# namespace shares; none is installed or enabled in a minbase root, masked all the same.
ROOT_MASKED_UNITS = (
    "systemd-networkd.service",
    "systemd-networkd.socket",
    "systemd-networkd-wait-online.service",
    "systemd-resolved.service",
    "systemd-udevd.service",
    "systemd-udevd-control.socket",
    "systemd-udevd-kernel.socket",
    "systemd-udev-trigger.service",
    "systemd-udev-settle.service",
)


class DebianRootHost(SystemdHost):
    """A SystemdHost whose namespace runs systemd in `root` (a Debian tree) instead of on
    the machine's own file system."""

    def __init__(
        self, name: str, workdir: Path, root: Path, root_binds: dict[str, Path] | None = None
    ) -> None:
        super().__init__(name, workdir)
        self.root = Path(root).resolve()
        # Path inside the Debian root -> directory on the machine bound there (a share that
        # two roots mount, each at its own path).
        self.root_binds = {t: Path(s).resolve() for t, s in (root_binds or {}).items()}

    def _write_boot_files(self) -> Path:
        boot = super()._write_boot_files()
        lines = boot.read_text().splitlines()
        starts = [
            i for i, line in enumerate(lines) if line.startswith("exec env -i container=unshare")
        ]
        if len(starts) != 1:
            raise AssertionError(
                f"{boot}: no single `exec env -i container=unshare` line to "
                "insert the switch into the Debian root before; has "
                "sdhost.py's boot script changed?"
            )
        at = starts[0]
        boot.write_text("\n".join([*lines[:at], *self._switch_root(), *lines[at:]]) + "\n")
        return boot

    def _switch_root(self) -> list[str]:
        q = shlex.quote
        r = q(str(self.root))
        return [
            "# tests/packaging/debroot.py: pivot into the Debian root. The private /run (with",
            "# the masks and journald settings above), /sys with the private /sys/fs/cgroup,",
            "# and /dev move in with it; /etc/hostname and /etc/machine-id are the root's own.",
            f"mount --bind {r} {r}",
            *(
                f"mkdir -p {r}{q(target)} && mount --bind {q(str(source))} {r}{q(target)}"
                for target, source in sorted(self.root_binds.items())
            ),
            f"mount -t proc proc {r}/proc",
            f"mount --rbind /sys {r}/sys",
            f"mount --rbind /dev {r}/dev",
            f"mount --move /run {r}/run",
            f"for u in {' '.join(ROOT_MASKED_UNITS)}; do",
            f'  ln -sf /dev/null "{r}/run/systemd/system/$u"',
            "done",
            f"cat {q(str(self.workdir / 'machine-id'))} > {r}/etc/machine-id",
            f"cat {q(str(self.workdir / 'hostname'))} > {r}/etc/hostname",
            f"cd {r}",
            "mkdir -p .sdhost-oldroot",
            "pivot_root . .sdhost-oldroot",
            "cd /",
            "umount -l /.sdhost-oldroot",
            "rmdir /.sdhost-oldroot",
            "",
        ]
