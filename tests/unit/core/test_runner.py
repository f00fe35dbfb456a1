"""runner.module_argv: dispatch's own children (`dispatch exec` of the process launcher, the
demo's fake agent) run the install of dispatch their parent was imported from, also from a
directory of its own that no interpreter searches (the rpm's /usr/share/dispatch)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import dispatch


def test_a_child_finds_dispatch_in_a_private_directory(tmp_path: Path) -> None:
    private = tmp_path / "share-dispatch"
    shutil.copytree(
        Path(dispatch.__file__).parent,
        private / "dispatch",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    # Only this copy has it: found through the editable install, the child would fail.
    (private / "dispatch" / "whereami.py").write_text(
        "import sys\nprint(__name__, __file__, sys.argv[1:])\n"
    )
    parent = (
        f"import json, sys; sys.path.insert(0, {str(private)!r}); "
        "from dispatch.core.runner import module_argv; "
        "print(json.dumps(module_argv('dispatch.whereami', 'a b', '--x')))"
    )
    argv = json.loads(
        subprocess.run(
            [sys.executable, "-c", parent], capture_output=True, text=True, check=True
        ).stdout
    )
    assert not any("'" in arg or '"' in arg for arg in argv)  # fits DISPATCH_AGENT_BIN
    child = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=tmp_path)
    name, where, args = child.stdout.strip().split(" ", 2)
    assert name == "__main__"
    assert where == str(private / "dispatch" / "whereami.py")
    assert args == "['a b', '--x']"
