"""`dispatch demo`: a whole signed round trip in a temporary root."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from tests.unit.helpers import cli


def test_demo_round_trip() -> None:
    proc = cli(None, "demo", "--request", "demo please", timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[-1] == "final_text: fake agent (acceptEdits) did: demo please"
    assert any(line.startswith("wait  devbox: result signature verified") for line in lines)


def test_demo_json_and_keep() -> None:
    proc = cli(None, "demo", "--json", "--keep", timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["status"] == "ok" and result["answered_by"] == "gpubox"
    assert len(result["sig"]) == 128
    kept = re.search(
        r"send  devbox -> gpubox: task \S+ signed with \S+, dropped in (\S+)", proc.stderr
    )
    assert kept is not None
    base = Path(proc.stderr.split("config ")[1].split("/devbox/")[0])
    try:
        assert (
            base / "share" / "devbox-to-gpubox" / "done" / f"{result['id']}.result.json"
        ).exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)
