"""`dispatch keys new|list|import`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from dispatch.cli import App, pass_app
from dispatch.commands.output import print_json
from dispatch.core.signing import Keyring, fingerprint, new_secret, read_key, write_key


@click.group()
def keys() -> None:
    """Manage this host's signing keys (DISPATCH_KEY_DIR)."""


@keys.command("new")
@click.option("--kid", default="", help="Key id (default: derived from the key).")
@pass_app
def new(app: App, kid: str) -> int:
    """Create a key; it signs from now on. Prints its key id."""
    cfg = app.config(need_root=False)
    key = write_key(cfg.key_dir, new_secret(), kid)
    click.echo(key.kid)
    return 0


@keys.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--kid", default="", help="Key id (default: the file's name, or derived).")
@pass_app
def import_(app: App, path: Path, kid: str) -> int:
    """Copy a peer's key file into this host's key ring."""
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
    """List key ids; the one marked * signs."""
    cfg = app.config(need_root=False)
    ring = Keyring.load(cfg, required=False)
    signing = ring.signing_key().kid if ring.keys else ""
    rows = [
        {
            "kid": k.kid,
            "path": str(k.path),
            "signing": k.kid == signing,
            "created": datetime.fromtimestamp(k.mtime, UTC).isoformat(timespec="seconds"),
            "fallback": ring.fallback,
        }
        for k in ring
    ]
    if as_json:
        print_json(rows)
    else:
        for row in rows:
            mark = "*" if row["signing"] else " "
            click.echo(f"{mark} {row['kid']}  {row['created']}  {row['path']}")
        if not rows:
            click.echo(f"no keys in {cfg.key_dir}", err=True)
    return 0


COMMANDS = [keys]
