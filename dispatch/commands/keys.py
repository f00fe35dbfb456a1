"""`dispatch keys show|new|rotate|publish|list|import`: this node's key pair (and the HMAC
keys of older peers, for schema 2 and 3 only)."""

from __future__ import annotations

from pathlib import Path

import click

from dispatch.cli import App, pass_app
from dispatch.commands.output import print_json
from dispatch.core.errors import UsageError
from dispatch.core.keys import load_private, publish, published_path, write_private
from dispatch.core.legacy_hmac import Keyring, fingerprint, read_key, write_key
from dispatch.core.node import Node


@click.group()
def keys() -> None:
    """This node's Ed25519 key pair (DISPATCH_KEY_DIR) and its pinned public key."""


def _publish_own(node: Node) -> bool:
    """Pin this node's key as its own; publish it when the share is there."""
    key = load_private(node.cfg.key_dir, node.name)
    node.keys.pins.add(key.public, f"this node's own key {key.path}")
    if not node.cfg.root.is_dir():
        return False
    publish(node.cfg.root, key.public)
    return True


@keys.command("show")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def show(app: App, as_json: bool) -> int:
    """Print this node's public key line and fingerprint (safe to copy anywhere)."""
    node = Node(app.config(need_root=False))
    key = load_private(node.cfg.key_dir, node.name)
    public = key.public
    if as_json:
        print_json(
            {
                "node": public.node,
                "kid": public.kid,
                "fingerprint": public.fingerprint,
                "line": public.line(),
                "path": str(key.path),
            }
        )
    else:
        click.echo(public.line())
        click.echo(f"{public.kid} {public.fingerprint}")
    return 0


@keys.command("new")
@pass_app
def new(app: App) -> int:
    """Create this node's key pair (when it has none); pin and publish it. Prints its id."""
    node = Node(app.config(need_root=False))
    key = write_private(node.cfg.key_dir, node.name)
    if not _publish_own(node):
        click.echo(f"not published: no shared root at {node.cfg.root}", err=True)
    click.echo(key.public.kid)
    return 0


@keys.command("rotate")
@pass_app
def rotate(app: App) -> int:
    """Replace this node's key pair. The old key keeps verifying wherever it stays pinned;
    peers pin the new one from the rotation statement the old key signs."""
    from dispatch.ops.rotation import rotate as rotate_key

    node = app.node()
    done = rotate_key(node)
    click.echo(f"new key {done.new.kid} {done.new.fingerprint} (old {done.old.kid})")
    click.echo(f"public key: {done.new.line()}")
    click.echo(f"on each peer ({', '.join(node.cfg.peers)}), pin it:")
    click.echo(f"  dispatch peers add {node.name} {done.statement}")
    click.echo(
        f"once every peer has it, retire the old key here and there: "
        f"dispatch peers remove {node.name} --kid {done.old.kid}"
    )
    return 0


@keys.command("publish")
@pass_app
def publish_(app: App) -> int:
    """Pin this node's public key here and publish it at <root>/nodes/<node>.pub."""
    node = app.node()
    if not _publish_own(node):
        raise UsageError(f"no shared root at {node.cfg.root}: is the share mounted?")
    click.echo(f"published {published_path(node.cfg.root, node.name)}")
    return 0


@keys.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--kid", default="", help="Key id (default: the file's name, or derived).")
@pass_app
def import_(app: App, path: Path, kid: str) -> int:
    """Add an original (HMAC) peer's key, read only for schema 2 (DISPATCH_ACCEPT_V2) and
    schema 3 (DISPATCH_ACCEPT_V3)."""
    cfg = app.config(need_root=False)
    secret = read_key(path)
    if not kid:
        kid = path.name[:-4] if path.name.endswith(".key") else fingerprint(secret)
    key = write_key(cfg.key_dir, secret, kid)
    click.echo(key.kid)
    return 0


@keys.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def list_(app: App, as_json: bool) -> int:
    """This node's keys: `*` signs; `pinned` still verify; `hmac` for schema 2/3 only."""
    node = Node(app.config(need_root=False))
    signing = load_private(node.cfg.key_dir, node.name).public.kid
    rows: list[dict[str, object]] = [
        {
            "kid": k.kid,
            "kind": "ed25519",
            "fingerprint": k.fingerprint,
            "signing": k.kid == signing,
            "pinned_at": k.pinned_at,
        }
        for k in node.keys.pins.keys_of(node.name)
    ]
    if signing and not any(r["signing"] for r in rows):
        rows.append({"kid": signing, "kind": "ed25519", "signing": True, "pinned_at": ""})
    rows += [
        {"kid": k.kid, "kind": "hmac", "path": str(k.path), "signing": False}
        for k in Keyring.load(node.cfg)
    ]
    if as_json:
        print_json(rows)
        return 0
    for row in rows:
        mark = "*" if row["signing"] else " "
        detail = row.get("fingerprint") or row.get("path", "")
        click.echo(f"{mark} {row['kid']}  {row['kind']:8} {detail}")
    if not rows:
        click.echo(f"no keys in {node.cfg.key_dir}: dispatch init", err=True)
    return 0


COMMANDS = [keys]
