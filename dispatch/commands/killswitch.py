"""`dispatch killswitch on|off|status`."""

from __future__ import annotations

import click

from dispatch.cli import App, pass_app
from dispatch.commands.output import print_json
from dispatch.core.spool import clear_killswitch, set_killswitch


@click.group()
def killswitch() -> None:
    """Stop new executions on every node (and, with --hard, running ones)."""


@killswitch.command("on")
@click.option("--hard", is_flag=True, help="Also stop running executions (result: killed).")
@click.option("--reason", default="", help="Why; shown in status and in killed results.")
@pass_app
def on(app: App, hard: bool, reason: str) -> int:
    spool = app.node().spool
    set_killswitch(spool, hard=hard, reason=reason)
    click.echo(f"killswitch on{' (hard)' if hard else ''}: {spool.killswitch_path}")
    return 0


@killswitch.command("off")
@pass_app
def off(app: App) -> int:
    removed = clear_killswitch(app.node().spool)
    click.echo("killswitch off" if removed else "killswitch was not on")
    return 0


@killswitch.command("status")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def status(app: App, as_json: bool) -> int:
    ks = app.node().spool.killswitch()
    if as_json:
        print_json({"on": ks.on, "hard": ks.hard, "reason": ks.reason})
    else:
        click.echo(("on (hard): " if ks.hard else "on: ") + ks.reason if ks.on else "off")
    return 0


COMMANDS = [killswitch]
