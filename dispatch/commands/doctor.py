"""`dispatch doctor`."""

from __future__ import annotations

import click

from dispatch.cli import App, pass_app
from dispatch.commands.output import print_json
from dispatch.core.errors import ExitCode
from dispatch.ops.doctor import run_checks


@click.command()
@click.option("--json", "as_json", is_flag=True)
@pass_app
def doctor(app: App, as_json: bool) -> int:
    """Check config, key, share, filesystem, peers, units and killswitch."""
    checks = run_checks()
    if as_json:
        print_json(
            [{"check": c.name, "ok": c.ok, "detail": c.detail, "hint": c.hint} for c in checks]
        )
    else:
        for c in checks:
            mark = click.style("pass", fg="green") if c.ok else click.style("FAIL", fg="red")
            click.echo(f"{mark}  {c.name:<22} {c.detail}")
            if not c.ok and c.hint:
                click.echo(f"      {'':<22} hint: {c.hint}")
    return ExitCode.OK if all(c.ok for c in checks) else ExitCode.TASK_FAILED


COMMANDS = [doctor]
