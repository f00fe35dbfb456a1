"""`dispatch audit`: check the invariants over a shared root and the nodes' state."""

from __future__ import annotations

from pathlib import Path

import click

from dispatch.cli import App, pass_app
from dispatch.commands.output import print_json
from dispatch.core.errors import ConfigError, UsageError
from dispatch.core.signing import NodeKeys
from dispatch.ops.audit import audit as run_audit
from dispatch.ops.audit_scan import pins_from_dir

_DIR = click.Path(file_okay=False, path_type=Path)


@click.command()
@click.option(
    "--root",
    type=_DIR,
    default=None,
    help="The shared root (default: DISPATCH_ROOT of the configuration).",
)
@click.option(
    "--state-dir",
    "state_dirs",
    type=_DIR,
    multiple=True,
    help="A node's local state (repeatable; default: this node's, when it exists).",
)
@click.option(
    "--agent-log",
    "agent_logs",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="A log of agent runs, one JSON line with `task_id` per run (repeatable).",
)
@click.option(
    "--peers-dir",
    type=_DIR,
    default=None,
    help="Pinned public keys to verify results with (default: the configuration's).",
)
@click.option(
    "--settled",
    is_flag=True,
    help="Expect the root at rest: nothing in inbox/ or processing/, no result "
    "waiting to be published.",
)
@click.option("--json", "as_json", is_flag=True)
@pass_app
def audit(
    app: App,
    root: Path | None,
    state_dirs: tuple[Path, ...],
    agent_logs: tuple[Path, ...],
    peers_dir: Path | None,
    settled: bool,
    as_json: bool,
) -> int:
    """Check the invariants: every task in one place, none run twice, none run that was
    refused, every verified task with a result, nothing lost. Exit 1 with one line per
    violation."""
    try:
        cfg = app.config(need_root=root is None)
    except ConfigError:
        if root is None:
            raise
        cfg = None
    root = root if root is not None else cfg.root if cfg is not None else None
    if root is None or not root.is_dir():
        raise UsageError(f"no shared root at {root}")
    states = list(state_dirs)
    if not states and cfg is not None and (cfg.state_dir / "seen").is_dir():
        states = [cfg.state_dir]
    ring: NodeKeys | None
    if peers_dir is not None:
        ring = pins_from_dir(root, peers_dir)
        if ring is None:
            raise UsageError(f"no pinned key in {peers_dir}")
    elif cfg is not None:
        try:
            ring = pins_from_dir(root, cfg.peers_dir)
        except ConfigError:
            ring = None
    else:
        ring = None
    report = run_audit(
        root, state_dirs=states, agent_logs=list(agent_logs), ring=ring, settled=settled
    )
    if as_json:
        print_json(report.to_json())
    else:
        for violation in report.violations:
            click.echo(violation.line())
        click.echo(
            ("audit: ok: " if report.ok else f"audit: {len(report.violations)} violations: ")
            + report.summary(),
            err=not report.ok,
        )
    return 0 if report.ok else 1


COMMANDS = [audit]
