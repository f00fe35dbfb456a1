"""`dispatch list` (alias `ls`): this node's tasks as sender and receiver."""

from __future__ import annotations

import click

from dispatch.cli import App, pass_app
from dispatch.commands.complete import complete_peers
from dispatch.commands.output import print_json
from dispatch.ops import tasklist

STATES = "inbox, pending-ack, queued, running, done, rejected, or a status: ok, error, ..."


@click.command("list")
@click.option("--peer", default=None, shell_complete=complete_peers, help="Only this peer's.")
@click.option(
    "--status",
    "states",
    multiple=True,
    help=f"Only tasks in this stage or status ({STATES}); repeat or comma-separate.",
)
@click.option("--since", default=None, help="Only tasks created since: 2h, 3d, or a date/time.")
@click.option("--running", is_flag=True, help="Only running tasks.")
@click.option("--waiting-ack", is_flag=True, help="Only tasks that wait for `dispatch ack`.")
@click.option("--json", "as_json", is_flag=True, help="A JSON list, one object per task.")
@pass_app
def list_(
    app: App,
    peer: str | None,
    states: tuple[str, ...],
    since: str | None,
    running: bool,
    waiting_ack: bool,
    as_json: bool,
) -> int:
    """This node's tasks, sent (out) and received (in), newest first: id, peer, direction,
    stage or status, age, elapsed time, request. History comes from this node's own record,
    so it outlives the share being cleaned."""
    wanted = tuple(s.strip() for item in states for s in item.split(",") if s.strip())
    wanted += ("running",) if running else ()
    wanted += ("pending-ack",) if waiting_ack else ()
    found = tasklist.select(
        tasklist.rows(app.node()),
        peer=peer,
        states=wanted,
        since=tasklist.parse_since(since) if since else None,
    )
    if as_json:
        print_json([row.to_json() for row in found])
        return 0
    if not found:
        click.echo("no tasks", err=True)
        return 0
    click.echo(
        f"{'ID':<9} {'PEER':<12} {'DIR':<4} {'STATE':<12} {'AGE':>5} {'ELAPSED':>8}  REQUEST"
    )
    for row in found:
        request = " ".join(row.request.split())
        click.echo(
            f"{row.id[:8]:<9} {row.peer[:12]:<12} {row.direction:<4} {row.state:<12} "
            f"{tasklist.short(row.age_s):>5} {tasklist.short(row.elapsed_s):>8}  {request[:60]}"
        )
    asking = [row for row in found if row.asks is not None]
    if asking:
        click.echo("\nwaiting for an ack here (`dispatch ack ID` releases one):")
        for row in asking:
            asks = row.asks or {}
            mode = "bypassPermissions" if asks.get("dangerous") else "acceptEdits"
            click.echo(
                f"  {row.id[:8]} from {row.peer}, {mode}, timeout {asks.get('timeout_s')}s: "
                f"{' '.join(row.request.split())[:200]}"
            )
    return 0


COMMANDS = [list_]
