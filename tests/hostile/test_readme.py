"""README.md lists every case of this directory: each corpus entry and each test."""

from __future__ import annotations

import ast
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.hostile.corpus import Context, build

HERE = Path(__file__).parent
README = (HERE / "README.md").read_text()


def test_every_corpus_entry_is_listed() -> None:
    keys = {n: (f"ed{n}", Ed25519PrivateKey.generate()) for n in ("devbox", "laptop", "gpubox")}
    ctx = Context(keys=keys, secret=b"x" * 32, g1_id="g1", l1_id="l1", p_id="p")
    entries = build(ctx)
    assert len({e.key for e in entries}) == len(entries)
    missing = [e.key for e in entries if f"| `{e.key}` |" not in README]
    assert not missing, f"corpus entries README.md does not list: {missing}"


def test_every_test_is_listed() -> None:
    missing = []
    for module in sorted(HERE.glob("test_*.py")):
        if module.name != "test_readme.py":
            missing += [f"{module.name}::{name}" for name in _tests(module) if name not in README]
    assert not missing, f"tests README.md does not list: {missing}"


def _tests(module: Path) -> list[str]:
    tree = ast.parse(module.read_text())
    return [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    ]
