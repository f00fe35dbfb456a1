"""`dispatch ack`: release a task that waits for an ack, on the receiving host only."""

from __future__ import annotations

import click

from dispatch.cli import App, pass_app
from dispatch.commands.complete import complete_ids
from dispatch.commands.output import print_json
from dispatch.receive.promote import acks


@click.command()
@click.argument("task_id", shell_complete=complete_ids)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def ack(app: App, task_id: str, as_json: bool) -> int:
    """Approve a pending task by its id or a unique prefix of it."""
    node = app.node()
    acked = acks.give_ack(node, task_id)
    if as_json:
        print_json({"id": acked.task_id, "lane": acked.lane, "ack": str(acked.path)})
    else:
        click.echo(f"acked: {acked.task_id} ({acked.lane})")
    return 0


COMMANDS = [ack]
