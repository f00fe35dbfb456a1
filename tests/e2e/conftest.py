"""Fixtures for the end-to-end tests: hosts with their own systemd and network namespace,
sharing a root that a file server exports over sshfs (see cluster.py)."""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path

import pytest

from tests.e2e.cluster import Cluster, SshKeys, machine_snapshot, missing_e2e_prerequisites

ClusterFactory = Callable[..., Cluster]


@pytest.fixture(scope="session", autouse=True)
def e2e_prerequisites() -> None:
    # Fail, never skip: CI runs these tests as root, and a skip would hide that they did not.
    problems = missing_e2e_prerequisites()
    if problems:
        pytest.fail(
            "e2e tests boot systemd hosts in network namespaces that mount a share "
            "with sshfs; missing: " + "; ".join(problems),
            pytrace=False,
        )


@pytest.fixture(scope="session")
def ssh_keys(tmp_path_factory: pytest.TempPathFactory) -> SshKeys:
    """Host and client keys for this test session only."""
    return SshKeys(tmp_path_factory.mktemp("e2e-ssh")).generate()


@pytest.fixture(scope="session", autouse=True)
def machine_untouched(
    tmp_path_factory: pytest.TempPathFactory, e2e_prerequisites: None
) -> Iterator[None]:
    """No veth, mount, sshd or sshfs of this suite may outlive it on the machine."""
    marker = str(tmp_path_factory.getbasetemp())
    before = machine_snapshot(marker)
    yield
    after = machine_snapshot(marker)
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert not changed, f"the e2e suite left the machine changed: {changed}"


FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[FAILED] = report.failed
    return report


@pytest.fixture
def make_cluster(
    request: pytest.FixtureRequest, tmp_path: Path, ssh_keys: SshKeys
) -> Iterator[ClusterFactory]:
    """make_cluster("a", "b", settings={"b": {"DISPATCH_MAX_PARALLEL": "1"}}) boots a file
    server and the hosts; every one of them is torn down after the test, pass or fail."""
    clusters: list[Cluster] = []

    def make(*names: str, settings: Mapping[str, Mapping[str, str]] | None = None) -> Cluster:
        cluster = Cluster(tmp_path / f"cluster{len(clusters)}", ssh_keys, names, settings)
        clusters.append(cluster)
        return cluster.start()

    try:
        yield make
    finally:
        errors = []
        # Kept for a failed test, or for every test with DISPATCH_E2E_JOURNALS=1.
        if request.node.stash.get(FAILED, True) or os.environ.get("DISPATCH_E2E_JOURNALS"):
            for cluster in clusters:
                # Each host's journal, kept beside the test's temp dir, before it powers off.
                saved = cluster.save_journals()
                print(f"\n--- journals of the failed test: {', '.join(map(str, saved))}")
        for cluster in clusters:
            try:
                cluster.stop()
            except Exception as exc:
                errors.append(str(exc))
        if errors:
            pytest.fail("; ".join(errors), pytrace=False)
