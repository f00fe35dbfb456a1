"""Static checks are tests too: ruff (lint and format) and mypy --strict on the package, the
tests and bench/, and systemd-analyze verify on every unit (tests/integration has the
behavioural unit tests)."""

from __future__ import annotations

import re
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


# What the documentation and the shipped files may not point at: the workplace this project
# grew in. A checkout must stand alone.
OUTSIDE = ("../shared", "/work/")


def test_docs_and_shipped_files_name_no_path_outside_the_repository() -> None:
    files = [
        *TOP.glob("*.md"),
        *TOP.glob("docs/**/*.md"),
        TOP / "bench" / "README.md",  # not RESULTS.md: the record of one run, on one machine
        *TOP.glob("tests/**/*.md"),
        *TOP.glob("dispatch/**/*.py"),
        *(p for p in TOP.glob("units/*") if p.is_file()),
        *(p for p in TOP.glob("packaging/**/*") if p.is_file() and p.suffix != ".pyc"),
    ]
    found = [
        f"{path.relative_to(TOP)}:{n}: {line.strip()}"
        for path in files
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if any(word in line for word in OUTSIDE)
    ]
    assert not found, "paths outside the repository:\n" + "\n".join(found)


def test_every_invariant_the_code_cites_is_written_out() -> None:
    design = (TOP / "docs" / "design.md").read_text()
    section = design.split("## Invariants", 1)[1].split("\n## ", 1)[0]
    written = {int(n) for n in re.findall(r"^(\d+)\. ", section, re.MULTILINE)}
    assert written == set(range(1, max(written) + 1)), f"invariants not numbered 1..n: {written}"
    cited: dict[int, str] = {}
    for path in [
        *TOP.glob("dispatch/**/*.py"),
        *TOP.glob("tests/**/*.py"),
        *TOP.glob("tests/**/*.md"),
    ]:
        text = path.read_text(errors="replace")
        for match in re.finditer(r"[Ii]nvariants? (\d+(?:(?:, | and | or )\d+)*)", text):
            for n in re.findall(r"\d+", match.group(1)):
                cited.setdefault(int(n), str(path.relative_to(TOP)))
    unknown = {n: where for n, where in cited.items() if n not in written}
    assert not unknown, f"invariants cited but not in docs/design.md: {unknown}"
