"""`dispatch signer`: the local signer (dispatch-signer.service, socket-activated)."""

from __future__ import annotations

import click

from dispatch.cli import App, pass_app


@click.command()
@click.option(
    "--idle",
    "idle_s",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Socket-activated: exit after this many seconds without a request (0: never).",
)
@pass_app
def signer(app: App, idle_s: float) -> int:
    """Sign for local callers over DISPATCH_SIGNER_SOCKET: the one process that reads the key."""
    from dispatch.signer.server import run

    run(app.node(), idle_s)
    return 0


COMMANDS = [signer]
