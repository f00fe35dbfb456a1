"""Fixtures for integration tests that need a real systemd (see sdhost.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.sdhost import SystemdHost, missing_prerequisites


@pytest.fixture(scope="session", autouse=True)
def systemd_prerequisites() -> None:
    # Fail, never skip: CI runs these tests as root and a skip would hide that they did not run.
    problems = missing_prerequisites()
    if problems:
        pytest.fail(
            "integration tests boot systemd in a namespace and need root, unshare, nsenter"
            " and systemd 252: " + "; ".join(problems),
            pytrace=False,
        )


@pytest.fixture
def sd_host(tmp_path: Path) -> Iterator[SystemdHost]:
    """A booted host "host-a" with fresh directories bound over /etc/dispatch, /var/lib/dispatch."""
    host = SystemdHost(
        "host-a",
        tmp_path / "sdhost",
        binds={
            "/etc/dispatch": tmp_path / "etc-dispatch",
            "/var/lib/dispatch": tmp_path / "var-lib-dispatch",
        },
    )
    try:
        host.start()
        yield host
    finally:
        host.poweroff()


@pytest.fixture
def node_host(tmp_path: Path) -> Iterator[SystemdHost]:
    """A booted host with the directories a dispatch node needs bound fresh: config, state
    and a local stand-in for the share at /mnt/dispatch (outside /tmp, which the units make
    private)."""
    host = SystemdHost(
        "gpubox",
        tmp_path / "sdhost",
        binds={
            "/etc/dispatch": tmp_path / "etc-dispatch",
            "/var/lib/dispatch": tmp_path / "var-lib-dispatch",
            "/mnt/dispatch": tmp_path / "mnt-dispatch",
        },
    )
    (tmp_path / "mnt-dispatch").mkdir(mode=0o755)
    try:
        host.start()
        yield host
    finally:
        host.poweroff()
