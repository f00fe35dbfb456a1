"""`dispatch init`: set up a node."""

from __future__ import annotations

import os
from pathlib import Path

import click

from dispatch.cli import App, pass_app
from dispatch.core.config import DEFAULT_AGENT_USER, DEFAULT_CONFIG, systemd_is_pid1
from dispatch.core.errors import UsageError
from dispatch.ops.bootstrap import init_node, reload_systemd


@click.command()
@click.option(
    "--root",
    type=click.Path(path_type=Path),
    required=True,
    help="The shared root (mounted on every node).",
)
@click.option("--node", required=True, help="This node's id.")
@click.option("--peers", required=True, help="Comma-separated peer ids.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=lambda: os.environ.get("DISPATCH_CONFIG", str(DEFAULT_CONFIG)),
    show_default="DISPATCH_CONFIG or /etc/dispatch/dispatch.conf",
)
@click.option(
    "--key-dir",
    type=click.Path(path_type=Path),
    default=lambda: os.environ.get("DISPATCH_KEY_DIR", "/etc/dispatch/keys"),
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=lambda: os.environ.get("DISPATCH_STATE_DIR", "/var/lib/dispatch"),
)
@click.option(
    "--peers-dir",
    type=click.Path(path_type=Path),
    default=lambda: os.environ.get("DISPATCH_PEERS_DIR"),
    help="Where peers' public keys are pinned (default: peers/ beside the key directory).",
)
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help="Extra config line, e.g. --set DISPATCH_MAX_PARALLEL=4.",
)
@click.option(
    "--run-as",
    default=DEFAULT_AGENT_USER,
    show_default=True,
    metavar="USER",
    help="The unprivileged user the agent runs as (DISPATCH_RUN_AS); `root` only if you mean it.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing config file.")
@click.option(
    "--enable",
    is_flag=True,
    help="Also enable and start everything the node runs: systemctl enable --now "
    "dispatch.target (under systemd).",
)
@click.option(
    "--local",
    is_flag=True,
    help="The root is on this host's own disk (one host, tests): without it, a root on the "
    "same filesystem as / is refused, since that is what an unmounted share looks like.",
)
@pass_app
def init(
    app: App,
    root: Path,
    node: str,
    peers: str,
    config_path: Path,
    key_dir: Path,
    state_dir: Path,
    peers_dir: Path | None,
    settings: tuple[str, ...],
    run_as: str,
    force: bool,
    enable: bool,
    local: bool,
) -> int:
    """Create the shared layout, this node's key pair, local state and the config file;
    print the command that pins this node's public key on each peer."""
    if not local:
        refuse_local_root(root.absolute())
    extra = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("DISPATCH_"):
            raise click.BadParameter(
                f"expected DISPATCH_KEY=VALUE, got {item!r}", param_hint="--set"
            )
        extra[key] = value
    report = init_node(
        root=root.absolute(),
        node=node,
        peers=[p.strip() for p in peers.split(",") if p.strip()],
        config_path=config_path,
        key_dir=key_dir.absolute(),
        state_dir=state_dir.absolute(),
        peers_dir=peers_dir.absolute() if peers_dir else None,
        force=force,
        run_as=run_as,
        extra=extra,
    )
    verb = "wrote" if report.config_written else "kept"
    click.echo(f"{verb} {report.config_path}")
    click.echo(
        f"key {report.key.kid} ({'created' if report.key_created else 'kept'}): {report.key_path}"
    )
    click.echo(f"lanes: {', '.join(report.lanes)}")
    if report.config_written and reload_systemd(report.config_path):
        click.echo("systemctl daemon-reload: units now watch these lanes")
    click.echo(f"public key: {report.key.line()}")
    click.echo(f"fingerprint: {report.key.fingerprint}")
    click.echo(f"on each peer ({', '.join(report.peers)}), pin it (then compare the fingerprint):")
    click.echo(f"  {report.peer_command()}")
    if enable:
        _enable()
    else:
        click.echo("then start the node: systemctl enable --now dispatch.target (or init --enable)")
    return 0


def _enable() -> None:
    if not systemd_is_pid1():
        raise UsageError(
            "--enable: systemd is not running here; run `dispatch watch` instead "
            "(the node is set up)"
        )
    from dispatch.core.runner import systemctl

    systemctl("enable", "--now", "dispatch.target", timeout=120)
    click.echo("systemctl enable --now dispatch.target: watch path and timer, heartbeat, sensor")


def refuse_local_root(root: Path) -> None:
    """A share that is not mounted leaves its mount point on the root filesystem: a tree
    created there would be this host's alone, and every task sent to it lost to the peer."""
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        same = os.stat(probe).st_dev == os.stat("/").st_dev
    except OSError:
        return  # nothing to compare; creating the tree will say what is wrong
    if same:
        raise UsageError(
            f"--root {root} is on the same filesystem as / ({probe} is not a mount): is the "
            "share mounted there? Mount it first, or give --local for a root on this host's "
            "own disk"
        )


COMMANDS = [init]
