"""`dispatch cancel`: on the sender, ask the receiver to cancel a task."""

from __future__ import annotations

import click

from dispatch.cli import App, pass_app
from dispatch.commands.complete import complete_ids
from dispatch.commands.output import await_result, print_json, result_exit
from dispatch.core import ids
from dispatch.send import cancel as cancel_mod


@click.command()
@click.argument("task_id", shell_complete=complete_ids)
@click.option("--wait", "wait_", is_flag=True, help="Block until the task's result arrives.")
@click.option(
    "--timeout",
    "--wait-timeout",
    "timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="With --wait: stop waiting after this many seconds (exit 4); the task goes on.",
)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def cancel(app: App, task_id: str, wait_: bool, timeout: float | None, as_json: bool) -> int:
    """Cancel a task this node sent: queued, it never runs; running, it is stopped."""
    node = app.node()
    task_id = ids.resolve(task_id, node=node)
    requested = cancel_mod.request(node, task_id)
    # One shape for every answer (the MCP server's dispatch_cancel returns it too).
    shape = {
        "id": task_id,
        "requested": not requested.finished,
        "lane": requested.lane,
        "path": None if requested.path is None else str(requested.path),
        "finished": requested.finished or None,
    }
    if requested.finished:
        message = f"task {task_id} already finished ({requested.finished}); left alone"
        if as_json:
            print_json(shape)
        else:
            click.echo(message)
        return 0
    if not wait_:
        if as_json:
            print_json(shape)
        else:
            click.echo(f"cancel requested: {task_id} ({requested.lane})")
        return 0
    result = await_result(node, task_id, timeout=timeout, what="waiting for the cancel")
    if as_json:
        print_json({**shape, "result": result.to_json()})
    else:
        click.echo(
            f"{task_id}: {result.status.value}" + (f" ({result.reason})" if result.reason else "")
        )
    return 0 if result.status.value == "cancelled" else result_exit(result)


COMMANDS = [cancel]
