"""`dispatch peers add|list|remove`: the public keys pinned on this host. Only a pinned key
verifies a node's tasks, results and cancels; the share's copy is compared, never trusted."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from dispatch.cli import App, pass_app
from dispatch.commands.output import print_json
from dispatch.core.errors import DispatchError, UsageError
from dispatch.core.keys import parse_line, published_mismatch
from dispatch.core.knobs import valid_node
from dispatch.core.node import Node


@click.group()
def peers() -> None:
    """Pin, list and remove peers' public keys (DISPATCH_PEERS_DIR)."""


@peers.command("add")
@click.argument("node_name", metavar="NODE")
@click.argument("keyfile", metavar="KEYFILE|-")
@pass_app
def add(app: App, node_name: str, keyfile: str) -> int:
    """Pin NODE's public key: the line `dispatch init` (or `dispatch keys show`) printed on
    NODE, from a file or `-` (stdin); or the rotation statement NODE's old key signed."""
    from dispatch.ops import rotation

    if not valid_node(node_name):
        raise UsageError(f"not a valid node name: {node_name!r}")
    node = Node(app.config(need_root=False))
    if keyfile == "-":
        text, source = sys.stdin.read(64 * 1024), "stdin"
    else:
        path = Path(keyfile).absolute()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {path}: {exc}") from None
        source = str(path)
    if rotation.is_statement(text):
        try:
            statement = json.loads(text)
        except ValueError:
            raise UsageError(f"{source}: not JSON, and not a key line") from None
        key = rotation.key_from_statement(node.keys, node_name, statement)
        source = f"rotation statement signed by {statement['kid']} ({source})"
    else:
        key = parse_line(text, node=node_name)
    if node.keys.pins.add(key, source):
        click.echo(f"pinned {node_name}'s key {key.kid} {key.fingerprint}")
    else:
        click.echo(f"{node_name}'s key {key.kid} {key.fingerprint} was pinned already")
    if node_name != node.cfg.node and node_name not in node.cfg.peers:
        click.echo(f"note: {node_name} is not in DISPATCH_PEERS: no lane to or from it", err=True)
    return 0


@peers.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def list_(app: App, as_json: bool) -> int:
    """Every pinned key with its fingerprint and where it was pinned from; a peer in
    DISPATCH_PEERS with no pin, and a published key that differs from the pin, flagged."""
    node = Node(app.config(need_root=False))
    pins = node.keys.pins
    rows: list[dict[str, object]] = []
    for name in sorted(set(pins.nodes()) | set(node.cfg.peers)):
        try:
            refused = published_mismatch(pins, node.cfg.root, name)
            keys = pins.keys_of(name)
        except DispatchError as exc:
            rows.append({"node": name, "kid": None, "problem": str(exc)})
            continue
        if not keys:
            rows.append({"node": name, "kid": None, "problem": "no key pinned"})
        for key in keys:
            rows.append(
                {
                    "node": name,
                    "kid": key.kid,
                    "fingerprint": key.fingerprint,
                    "pinned_at": key.pinned_at,
                    "source": key.source,
                    "problem": refused,
                }
            )
    if as_json:
        print_json(rows)
        return 0
    for row in rows:
        if row["kid"] is None:
            click.echo(f"{row['node']:16} -  {row['problem']}")
            continue
        click.echo(
            f"{row['node']:16} {row['kid']}  {row['fingerprint']}  "
            f"pinned {row['pinned_at']} from {row['source']}"
        )
        if row["problem"]:
            click.echo(f"{'':16} {row['problem']}")
    return 0


@peers.command("remove")
@click.argument("node_name", metavar="NODE")
@click.option("--kid", default="", help="Only this key (a retired one after a rotation).")
@pass_app
def remove(app: App, node_name: str, kid: str) -> int:
    """Unpin NODE's keys (or one of them): what they signed is refused from now on."""
    node = Node(app.config(need_root=False))
    gone = node.keys.pins.remove(node_name, kid)
    if not gone:
        raise UsageError(f"no key{' ' + kid if kid else ''} pinned for {node_name}")
    for key in gone:
        click.echo(f"removed {node_name}'s key {key.kid} {key.fingerprint}")
    return 0


COMMANDS = [peers]
