"""Fixtures for tests against a real single-node Slurm cluster (see cluster.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.slurm.cluster import SlurmCluster, missing_prerequisites


@pytest.fixture(scope="session", autouse=True)
def slurm_prerequisites() -> None:
    # Fail, never skip: CI installs Slurm (scripts/setup-dev) and runs as root; a skip would
    # hide that these tests did not run.
    problems = missing_prerequisites()
    if problems:
        pytest.fail(
            "tests/slurm start a Slurm cluster in a namespace and need root and the "
            "slurmctld, slurmd, slurm-client and munge packages: " + "; ".join(problems),
            pytrace=False,
        )


@pytest.fixture
def slurm(tmp_path: Path) -> Iterator[SlurmCluster]:
    cluster = SlurmCluster(tmp_path / "slurm")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
