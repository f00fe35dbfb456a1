"""What systemd units (and `dispatch watch`) run: `promote`, `exec`, `watch`, `heartbeat`."""

from __future__ import annotations

import click

from dispatch.cli import App, pass_app
from dispatch.commands.output import print_json

# Each command imports what it runs, inside it: these run once per task hop.


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print what the pass did.")
@pass_app
def promote(app: App, as_json: bool) -> int:
    """Verify inboxes, release acks, recover, start executions up to the cap; repeat while
    anything changed meanwhile."""
    # Without --json, dispatch.entry runs the same without click (the unit's command line).
    from dispatch.receive.promote import run_unit_pass, summary

    report = run_unit_pass(app.node())
    if as_json:
        click.echo(summary(report))
    return 0


@click.command("exec")
@click.argument("task_id")
@click.option(
    "--unit", default="", envvar="DISPATCH_UNIT", help="Unit name to record in the result."
)
@pass_app
def exec_(app: App, task_id: str, unit: str) -> int:
    """Run one queued task and write its signed result."""
    # `dispatch exec ID` (the unit's command line) runs in dispatch.entry, without click.
    from dispatch.receive.executor import execute

    execute(app.node(), task_id, unit)
    # The task's outcome is in its result; a non-zero exit here would only mark the unit failed.
    return 0


@click.command()
@click.option("--once", is_flag=True, help="Drain what is there, then return.")
@click.option("--quiet", is_flag=True, help="Do not print events on stderr.")
@pass_app
def watch(app: App, once: bool, quiet: bool) -> int:
    """Promote and execute in a loop without systemd (inotify plus a rescan)."""
    from dispatch.core import events
    from dispatch.receive.watch import watch as watch_loop

    events.set_echo(not quiet)
    watch_loop(app.node(), once=once)
    return 0


@click.command()
@click.option("--json", "as_json", is_flag=True)
@pass_app
def heartbeat(app: App, as_json: bool) -> int:
    """Write heartbeats/<node>.json on the share."""
    from dispatch.core import broken_config
    from dispatch.core.errors import ConfigError
    from dispatch.ops import overview

    try:
        node = app.node()
    except ConfigError as exc:
        # The beat still goes out, saying why: peers show it instead of "no heartbeat".
        broken_config.record(str(exc))
        raise
    beat = overview.heartbeat(node)
    if as_json:
        print_json(beat)
    return 0


COMMANDS = [promote, exec_, watch, heartbeat]


@click.command()
@click.option("--max-seconds", type=click.FloatRange(min=1), default=600, show_default=True)
@pass_app
def notify(app: App, max_seconds: float) -> int:
    """Deliver queued webhook notifications, with retries (run by dispatch-notify.service)."""
    from dispatch.receive.notify import drain

    drain(app.node(), max_seconds)
    return 0


COMMANDS.append(notify)
