"""`dispatch init`: set up a node."""

from __future__ import annotations

import os
from pathlib import Path

import click

from dispatch.cli import App, pass_app
from dispatch.core.config import DEFAULT_AGENT_USER, DEFAULT_CONFIG, systemd_is_pid1
from dispatch.core.errors import UsageError
from dispatch.ops.bootstrap import InitReport, Made, init_node, reload_systemd


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
@click.option(
    "--key-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Import this node's existing private key (PEM Ed25519, e.g. a backup of "
    "/etc/dispatch/keys/NODE.ed25519 from the host it moves from) instead of making one: "
    "the peers' pins of it stay valid.",
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
    key_file: Path | None,
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
        key_file=key_file,
    )
    reloaded = report.config_written and reload_systemd(report.config_path)
    for line in report_lines(report, reloaded=reloaded):
        click.echo(line)
    if enable:
        _enable()
    for line in next_steps(report, enabled=enable):
        click.echo(line)
    return 0


def report_lines(report: InitReport, *, reloaded: bool) -> list[str]:
    """What init did, thing by thing, and where each came from."""
    config_why = {
        Made.CREATED: "created",
        Made.FILLED: "filled in the package's template",
        Made.OVERWRITTEN: "overwritten (--force)",
        Made.KEPT: "kept: it already configures this node",
    }[report.config_made]
    key_why = {
        Made.CREATED: "created",
        Made.IMPORTED: f"imported from {report.key_source}",
        Made.KEPT: "kept: already there"
        + (f", the same key as {report.key_source}" if report.key_source else ""),
    }[report.key_made]
    created = set(report.lanes_created)
    lanes_why = (
        "created"
        if created == set(report.lanes)
        else "already there"
        if not created
        else f"created {', '.join(report.lanes_created)}; the rest already there"
    )
    pinned, unpinned = report.peers_pinned, report.peers_unpinned()
    peers_why = "; ".join(
        part
        for part in (
            f"{', '.join(pinned)} pinned here already" if pinned else "",
            f"{', '.join(unpinned)} not pinned yet (see below)" if unpinned else "",
        )
        if part
    )
    lines = [
        f"config {report.config_path} ({config_why})",
        f"key {report.key.kid} ({key_why}): {report.key_path}",
        f"peers: {peers_why}",
        f"lanes: {', '.join(report.lanes)} ({lanes_why})",
    ]
    if reloaded:
        lines.append("systemctl daemon-reload: units now watch these lanes")
    lines += [f"public key: {report.key.line()}", f"fingerprint: {report.key.fingerprint}"]
    return lines


def next_steps(report: InitReport, *, enabled: bool) -> list[str]:
    """The exact commands left to run, on each peer and here, in order."""
    lines = [
        "",
        f"on each peer ({', '.join(report.peers)}), pin it (then compare the fingerprint):",
        f"  {report.peer_command()}",
    ]
    here = [
        f"  echo '<the public key line {peer}'s init printed>' | dispatch peers add {peer} -"
        for peer in report.peers_unpinned()
    ]
    if enabled:
        pass
    elif systemd_is_pid1():
        here.append("  systemctl enable --now dispatch.target   # (or init --enable)")
    else:
        here.append("  dispatch watch   # no systemd here: the same passes, in the foreground")
    here.append("  dispatch doctor   # every line pass once each peer is set up too")
    lines += ["then on this host:", *here]
    return lines


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
