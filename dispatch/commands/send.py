"""`dispatch send`: sign a task and drop it into a peer's inbox."""

from __future__ import annotations

import sys
from typing import BinaryIO

import click

from dispatch.cli import App, pass_app
from dispatch.commands.complete import complete_peers
from dispatch.commands.output import await_result, print_json, result_exit, show_result
from dispatch.core.errors import UsageError
from dispatch.core.model import Callback, Priority
from dispatch.core.wire import MAX_FILE_BYTES
from dispatch.send import task as sender


@click.command()
@click.option(
    "--to", "to", required=True, shell_complete=complete_peers, help="Receiving node (a peer)."
)
@click.option(
    "--request",
    default=None,
    help="What the agent on the peer should do; `-` reads it from stdin.",
)
@click.option(
    "--request-file",
    type=click.File("rb"),
    default=None,
    help="Read the request from this file (`-`: stdin), for requests of any size up to the "
    "1 MiB envelope.",
)
@click.option("--from", "from_", default=None, help="Sending node (default: this node).")
@click.option(
    "--priority",
    type=click.Choice([p.value for p in Priority]),
    default="normal",
    show_default=True,
)
@click.option("--require-ack", is_flag=True, help="Hold until `dispatch ack` on the receiver.")
@click.option(
    "--dangerous",
    is_flag=True,
    help="Ask for bypassPermissions (the receiver's DISPATCH_DANGEROUS decides).",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.IntRange(min=1),
    default=None,
    help="Seconds the agent may run on the peer (the task's own clock; default "
    "DISPATCH_DEFAULT_TIMEOUT_S). How long this command waits is --wait-timeout.",
)
@click.option(
    "--max-output-bytes",
    type=click.IntRange(min=1),
    default=None,
    help="Cap on the agent's logged output.",
)
@click.option(
    "--callback", type=click.Choice([c.value for c in Callback]), default="file", show_default=True
)
@click.option("--wait", "wait_", is_flag=True, help="Block until the verified result arrives.")
@click.option(
    "--wait-timeout",
    type=click.FloatRange(min=0),
    default=None,
    help="With --wait: stop waiting after this many seconds (exit 4; the waiting clock "
    "only, the task goes on).",
)
@click.option(
    "--progress",
    is_flag=True,
    help="With --wait, off a terminal too: a line on stderr each time the stage changes "
    "(on a terminal a live line shows the stage, the time and the agent's latest output).",
)
@click.option("--json", "as_json", is_flag=True, help="Print {id, path} (and result) as JSON.")
@pass_app
def send(
    app: App,
    to: str,
    request: str | None,
    request_file: BinaryIO | None,
    from_: str | None,
    priority: str,
    require_ack: bool,
    dangerous: bool,
    timeout_s: int | None,
    max_output_bytes: int | None,
    callback: str,
    wait_: bool,
    wait_timeout: float | None,
    progress: bool,
    as_json: bool,
) -> int:
    """Send a signed task to a peer."""
    node = app.node()
    envelope = sender.build(
        node,
        to=to,
        request=_request_text(request, request_file),
        from_=from_,
        priority=Priority(priority),
        require_ack=require_ack,
        dangerous=dangerous,
        timeout_s=timeout_s,
        max_output_bytes=max_output_bytes,
        callback=Callback(callback),
    )
    sent = sender.deliver(node, envelope)
    if not wait_:
        if as_json:
            print_json({"id": envelope.id, "path": str(sent.path)})
        else:
            # The id alone on stdout: ID=$(dispatch send ...) is what scripts do.
            click.echo(envelope.id)
            click.echo(f"sent to {envelope.to}: {sent.path}", err=True)
        return 0
    result = await_result(node, envelope.id, timeout=wait_timeout, progress=progress)
    if as_json:
        print_json({"id": envelope.id, "path": str(sent.path), "result": result.to_json()})
        return result_exit(result)
    return show_result(result, as_json=False, root=node.cfg.root)


COMMANDS = [send]


def _request_text(request: str | None, request_file: BinaryIO | None) -> str:
    if (request is None) == (request_file is None):
        raise UsageError("give the request: --request TEXT, or --request-file PATH (- for stdin)")
    if request_file is None:
        if request != "-":
            return str(request)
        request_file = sys.stdin.buffer
    data = request_file.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise UsageError(
            f"the request is over {MAX_FILE_BYTES} bytes, the limit of a whole task envelope "
            "(1 MiB): put the material on the share and send its path"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"the request is not UTF-8 text (byte {exc.start})") from None
