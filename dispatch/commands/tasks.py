"""Read commands: `status`, `result`, `wait`."""

from __future__ import annotations

from typing import Any

import click

from dispatch.cli import App, pass_app
from dispatch.commands.complete import complete_ids
from dispatch.commands.output import await_result, print_json, show_result
from dispatch.core import ids
from dispatch.core.errors import ExitCode
from dispatch.ops import overview
from dispatch.send import results


def _task_id(app: App, text: str) -> str:
    return ids.resolve(text, node=app.node())


@click.command()
@click.option("--json", "as_json", is_flag=True)
@pass_app
def status(app: App, as_json: bool) -> int:
    """Lanes, executions, killswitch and peers of this node; exit 1 when the shared root
    is unreachable (not mounted, or not answering), which it says."""
    data = overview.overview(app.node())
    if as_json:
        print_json(data)
    else:
        _print_status(data)
    if data["root_problem"]:
        click.echo(f"dispatch: the shared root is unreachable: {data['root_problem']}", err=True)
        return ExitCode.TASK_FAILED
    return 0


def _print_status(data: dict[str, Any]) -> None:
    ks = data["killswitch"]
    state = (("HARD " if ks["hard"] else "on: ") + ks["reason"]) if ks["on"] else "off"
    # click.echo strips the colour when stdout is not a terminal.
    shown = click.style(state, fg="red" if ks["on"] else "green", bold=bool(ks["on"]))
    click.echo(f"node {data['node']}  root {data['root']}  killswitch {shown}")
    cols = ("inbox", "pending_ack", "queued", "running", "done", "rejected")
    click.echo(f"{'lane':<28}" + "".join(f"{c:>12}" for c in cols))
    for lane in data["lanes"]:
        label = f"{lane['lane']} ({lane['direction']})"
        click.echo(f"{label:<28}" + "".join(f"{lane[c]:>12}" for c in cols))
    runs = data.get("executions", [])
    click.echo(f"running: {len(runs) or 'none'}")
    for run in runs:
        elapsed = "-" if run["elapsed_s"] is None else f"{run['elapsed_s']:.0f}s"
        if "slurm_state" in run:
            where = f"  on {run['slurm_node']}" if run["slurm_node"] else ""
            what = f"slurm job {run['slurm_job'] or '-'} {run['slurm_state']}{where}"
        else:
            what = f"memory {_size(run['memory_bytes'])}"
        click.echo(
            f"  {run['id']}  {run['unit'] or '(process)'}  {run['lane']}  elapsed {elapsed}  {what}"
        )
    for peer in data["peers"]:
        age = peer["heartbeat_age_s"]
        text = "no heartbeat" if age is None else f"heartbeat {age:.0f}s ago"
        flag = " STALE" if peer["stale"] else ""
        if peer["config_problem"]:
            # What the peer says of itself: shown, not trusted for anything.
            flag += click.style(" FAIL", fg="red") + f" config broken: {peer['config_problem']}"
        click.echo(f"peer {peer['node']}: {text}{flag}")
        if peer["key_problem"]:
            click.echo(f"  key: {peer['key_problem']}")
    for fault in data.get("faults", []):
        click.echo(
            click.style(f"fault {fault['key']}", fg="red")
            + f": {fault['message']} (since {fault['since']}, {fault['count']} passes)"
        )


def _size(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "K", "M", "G"):
        if size < 1024 or unit == "G":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}G"


@click.command()
@click.argument("task_id", shell_complete=complete_ids)
@click.option("--json", "as_json", is_flag=True, help="Print the verified result object.")
@pass_app
def result(app: App, task_id: str, as_json: bool) -> int:
    """Show a task's verified result (exit 3 if its signature fails). TASK_ID: the id or a
    unique prefix of it."""
    node = app.node()
    return show_result(results.get(node, _task_id(app, task_id)), as_json, node.cfg.root)


@click.command()
@click.argument("task_id", shell_complete=complete_ids)
@click.option(
    "--timeout",
    "--wait-timeout",
    "timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="Stop waiting after this many seconds (exit 4). The waiting clock only: the "
    "agent's own run time is `send --timeout`.",
)
@click.option(
    "--progress",
    is_flag=True,
    help="Off a terminal too: a line on stderr each time the stage changes (on a terminal "
    "a live line shows the stage, the time and the agent's latest output anyway).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the verified result object.")
@pass_app
def wait(app: App, task_id: str, timeout: float | None, progress: bool, as_json: bool) -> int:
    """Block until a task's result arrives; verify it and print its final text. TASK_ID:
    the id or a unique prefix of it."""
    task_id = _task_id(app, task_id)
    node = app.node()
    res = await_result(node, task_id, timeout=timeout, progress=progress)
    return show_result(res, as_json, node.cfg.root)


COMMANDS = [status, result, wait]


@click.command()
@click.argument("task_id", shell_complete=complete_ids)
@click.option(
    "-f", "--follow", is_flag=True, help="Keep printing as output arrives, until the task ends."
)
@pass_app
def logs(app: App, task_id: str, follow: bool) -> int:
    """On the sender: the agent's output from done/<id>.log on the share (-f: until the
    result, then its status line). On the receiver: the task's story from the journal."""
    from dispatch.ops.logs import story

    for line in story(app.node(), _task_id(app, task_id), follow):
        click.echo(line)
    return 0


COMMANDS.append(logs)
