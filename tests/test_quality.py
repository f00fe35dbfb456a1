"""Static checks are tests too: ruff (lint and format) and mypy --strict on the package, the
tests and bench/, and systemd-analyze verify on every unit (tests/integration has the
behavioural unit tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), cwd=TOP, capture_output=True, text=True, check=False)


def test_ruff_clean() -> None:
    proc = _run(str(BIN / "ruff"), "check", "dispatch", "tests", "bench")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_formatted() -> None:
    proc = _run(str(BIN / "ruff"), "format", "--check", "dispatch", "tests", "bench")
    assert proc.returncode == 0, "run `ruff format dispatch tests bench`:\n" + proc.stdout


def test_mypy_strict_clean() -> None:
    proc = _run(str(BIN / "mypy"), "dispatch", "tests")
    assert proc.returncode == 0, proc.stdout + proc.stderr
