"""The packaged config template lists every knob dispatch reads, and sets none of them."""

from __future__ import annotations

from pathlib import Path

from dispatch.core.config import KNOBS, parse_env_file

TEMPLATE = Path(__file__).resolve().parent.parent / "packaging" / "dispatch.conf"


def test_template_documents_every_knob() -> None:
    text = TEMPLATE.read_text()
    missing = [
        knob for knob in [*KNOBS, "DISPATCH_NODE", "DISPATCH_PEERS"] if f"#{knob}=" not in text
    ]
    assert not missing


def test_template_sets_nothing() -> None:
    assert parse_env_file(TEMPLATE) == {}
