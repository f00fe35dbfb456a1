"""`dispatch demo`."""

from __future__ import annotations

import click

from dispatch.cli import App, pass_app
from dispatch.commands.output import print_json, result_exit
from dispatch.ops.demo import run_demo


@click.command()
@click.option(
    "--request", default="run the test suite on branch demo and report", show_default=True
)
@click.option("--keep", is_flag=True, help="Keep the temporary root to look around.")
@click.option("--json", "as_json", is_flag=True, help="Print the verified result object.")
@pass_app
def demo(app: App, request: str, keep: bool, as_json: bool) -> int:
    """A signed round trip between two nodes in a temporary root; no systemd needed."""
    run = run_demo(
        request, say=(lambda line: click.echo(line, err=True)) if as_json else click.echo, keep=keep
    )
    if as_json:
        print_json(run.result.to_json())
    else:
        click.echo(f"final_text: {run.result.final_text}")
        if keep:
            click.echo(f"kept: {run.base}")
    return result_exit(run.result)


COMMANDS = [demo]
