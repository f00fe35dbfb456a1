"""Fixtures for the hostile-input, fault and load campaign (README.md lists every case).

Each module boots one systemd host and runs many cases against it. The largest cases carry
the `long` marker: plain `pytest` (and `make test`) deselects them, `make test-long` runs
them; each kind of case has a smaller representative that always runs."""

from __future__ import annotations

import pytest

from tests.hostile.harness import fail_without_prerequisites


@pytest.fixture(scope="session", autouse=True)
def hostile_prerequisites() -> None:
    # Fail, never skip: CI runs these tests as root, and a skip would hide that they did not.
    fail_without_prerequisites()
