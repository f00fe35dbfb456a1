"""Key rotation: a new key pair for this node, announced by a statement its old key signs.

Peers learn the new key by pinning it (`dispatch peers add NODE KEYFILE`), or from the
statement (`dispatch peers add NODE <root>/nodes/NODE.rotation.json`), which they accept
only when it verifies against a key they already pin for NODE. The old key keeps verifying
wherever it stays pinned, so tasks and results it signed before stay valid until an
operator removes it (`dispatch peers remove NODE --kid OLD`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dispatch.core.errors import Rejection, UsageError
from dispatch.core.fsio import atomic_write, dump_json
from dispatch.core.keys import (
    NodeKey,
    PublicKey,
    load_private,
    parse_line,
    publish,
    write_private,
)
from dispatch.core.model import SCHEMA, Kind
from dispatch.core.node import Node
from dispatch.core.signing import LocalSigner, NodeKeys, verify_signed
from dispatch.core.wire import now_utc, rfc3339

STATEMENT_FIELDS = {"schema", "kind", "node", "key", "created", "kid", "sig"}


@dataclass(frozen=True)
class Rotated:
    old: PublicKey
    new: PublicKey
    statement: Path


def statement_path(root: Path, node: str) -> Path:
    return root / "nodes" / f"{node}.rotation.json"


def rotate(node: Node) -> Rotated:
    cfg = node.cfg
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    old = load_private(cfg.key_dir, node.name)
    new = NodeKey(node.name, old.path, Ed25519PrivateKey.generate())
    statement = LocalSigner(old).sign(
        {
            "schema": SCHEMA,
            "kind": Kind.ROTATE.value,
            "node": node.name,
            "key": new.public.line(),
            "created": rfc3339(now_utc()),
        }
    )
    # Pinned before it signs anything: results this node signs with the new key must verify
    # here too, whatever crashes in between.
    node.keys.pins.add(new.public, f"this node's own key (rotated from {old.public.kid})")
    write_private(cfg.key_dir, node.name, new.private, replace=True)
    path = statement_path(cfg.root, node.name)
    path.parent.mkdir(exist_ok=True)
    atomic_write(path, dump_json(statement))
    publish(cfg.root, new.public)
    return Rotated(old.public, new.public, path)


def is_statement(text: str) -> bool:
    return text.lstrip().startswith("{")


def key_from_statement(keys: NodeKeys, node: str, obj: Any) -> PublicKey:
    """The new key a rotation statement announces, if a key pinned for `node` signed it."""
    if not isinstance(obj, dict) or set(obj) != STATEMENT_FIELDS:
        raise UsageError("not a rotation statement (dispatch keys rotate writes one)")
    if obj.get("node") != node:
        raise UsageError(f"the statement rotates {str(obj.get('node'))[:64]!r}'s key, not {node}'s")
    try:
        verify_signed(keys, obj, Kind.ROTATE, "rotation statement")
    except Rejection as exc:
        raise Rejection(exc.reason, f"{exc}: pin {node}'s new key by hand instead") from None
    if not isinstance(obj.get("key"), str):
        raise UsageError("the statement's key is not a key line")
    return parse_line(obj["key"], node=node)
