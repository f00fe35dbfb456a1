"""`dispatch list` (alias `ls`): this node's tasks as sender and receiver."""

from __future__ import annotations

import click

from dispatch.cli import App, pass_app
from dispatch.commands.complete import complete_peers
from dispatch.commands.output import print_json
from dispatch.core.errors import UsageError
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


@click.command()
@click.option(
    "--older-than",
    default=None,
    help="Only tasks that ended longer ago than this (90s, 15m, 2h, 3d, 1w; default "
    "DISPATCH_RETAIN_DAYS days).",
)
@click.option(
    "--status",
    "states",
    multiple=True,
    help="Only tasks with this status; repeat or comma-separate.",
)
@click.option("--peer", default=None, shell_complete=complete_peers, help="Only this peer's lanes.")
@click.option("--dry-run", is_flag=True, help="Say what would go; remove nothing.")
@click.option(
    "--force",
    is_flag=True,
    help="Also results their sender may not have seen (incoming lanes) and results that "
    "do not verify.",
)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def clean(
    app: App,
    older_than: str | None,
    states: tuple[str, ...],
    peer: str | None,
    dry_run: bool,
    force: bool,
    as_json: bool,
) -> int:
    """Take finished tasks' results and logs off the share. Each lane is cleaned by its
    sender, which records each task's end in its own history first (`dispatch list` keeps
    it); incoming lanes' results stay unless --force; the receiver's old rejected/ entries go."""
    from dispatch.ops import clean as clean_mod

    node = app.node()
    if older_than is None:
        if node.cfg.retain_days <= 0:
            raise UsageError("DISPATCH_RETAIN_DAYS is 0 (keep everything): give --older-than")
        age = node.cfg.retain_days * 86400.0
    else:
        age = tasklist.parse_duration(older_than)
    wanted = tuple(s.strip() for item in states for s in item.split(",") if s.strip())
    done = clean_mod.clean(
        node, older_than_s=age, statuses=wanted, peer=peer, dry_run=dry_run, force=force
    )
    if as_json:
        print_json([item.to_json() for item in done])
        return 0
    verb = "would remove" if dry_run else "removed"
    for item in done:
        label = item.task_id[:8] if item.task_id else "(entry)"
        head = f"{label:<9} {item.lane:<24} {item.status:<10} {tasklist.short(item.age_s):>5}"
        if item.kept:
            click.echo(f"kept         {head}  {item.kept}")
        else:
            names = [n.removeprefix(item.task_id) for n in item.removed] if item.task_id else []
            click.echo(f"{verb:<12} {head}  {', '.join(names or item.removed) or '-'}")
    gone = sum(1 for item in done if not item.kept)
    kept = len(done) - gone
    click.echo(
        f"{verb} the files of {gone} task{'s' if gone != 1 else ''}"
        + (f"; kept {kept}" if kept else ""),
        err=True,
    )
    return 0


COMMANDS.append(clean)
