"""Fixtures for the package tests: the tools they need (missing ones fail the tests, never
skip them: CI runs as root with scripts/setup-dev), and the .deb and .rpm built once per
session with `packaging/build` (what `make deb` / `make rpm` run), into dist/."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.integration.sdhost import missing_prerequisites

TOP = Path(__file__).resolve().parents[2]
PACKAGING = TOP / "packaging"
VERSION: str = tomllib.loads((TOP / "pyproject.toml").read_text())["project"]["version"]
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
UNITS = sorted(p.name for p in (TOP / "units").iterdir())
# Enabled (and, on Debian, started) by the packages: they start everything else. The sensor
# is resident, not a oneshot, so it is enabled the same way (it exits at once in timer mode);
# the signer's socket too (it starts the signer on the first request).
TRIGGERS = sorted(
    u for u in UNITS if u.endswith((".path", ".timer", ".socket")) or u == "dispatch-sensor.service"
)

BUILD_TOOLS = {
    "dpkg-buildpackage": "dpkg-dev",
    "dh": "debhelper",
    "dh_python3": "dh-python",
    "rpmbuild": "rpm",
    "lintian": "lintian",
    "rpmlint": "rpmlint",
    "debootstrap": "debootstrap",
}


def _missing_tools() -> list[str]:
    problems = [
        f"{tool} (apt package {pkg})"
        for tool, pkg in BUILD_TOOLS.items()
        if shutil.which(tool, path=SYSTEM_PATH) is None
    ]
    if not Path("/usr/share/dh-python/dhpython/build/plugin_pyproject.py").exists():
        problems.append("pybuild's pyproject plugin (apt package pybuild-plugin-pyproject)")
    return problems


@pytest.fixture(scope="session")
def packaging_tools() -> None:
    problems = _missing_tools()
    if problems:
        pytest.fail(
            "package tests need: " + "; ".join(problems) + " (run scripts/setup-dev test as root)",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def systemd_host_prerequisites() -> None:
    problems = missing_prerequisites()
    if problems:
        pytest.fail(
            "the .deb install test boots systemd in a namespace and needs root,"
            " unshare, nsenter and systemd 252: " + "; ".join(problems),
            pytrace=False,
        )


def _build(kind: str) -> Path:
    proc = subprocess.run(
        [str(PACKAGING / "build"), kind],
        cwd=TOP,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        env={**os.environ, "PATH": SYSTEM_PATH},
    )
    assert proc.returncode == 0, (
        f"packaging/build {kind} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    )
    pattern = (
        f"dispatch_{VERSION}-*_all.deb" if kind == "deb" else f"dispatch-{VERSION}-*.noarch.rpm"
    )
    found = sorted((TOP / "dist").glob(pattern))
    assert len(found) == 1, f"expected one {pattern} in dist/, found {found}"
    return found[0]


@pytest.fixture(scope="session")
def deb(packaging_tools: None) -> Path:
    return _build("deb")


@pytest.fixture(scope="session")
def rpm(packaging_tools: None) -> Path:
    return _build("rpm")
