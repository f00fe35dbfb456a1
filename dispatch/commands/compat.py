"""`dispatch-send` and `dispatch-ack`: the original project's command lines, on dispatch."""

from __future__ import annotations

import os
import sys

import click

from dispatch.cli import run_command
from dispatch.core import config
from dispatch.core.model import Callback, Priority
from dispatch.core.node import Node
from dispatch.receive.promote import acks
from dispatch.send import task as sender


@click.command()
@click.option("--to", "to", required=True, help="recipient node id")
@click.option(
    "--from",
    "from_",
    default=lambda: os.environ.get("DISPATCH_FROM"),
    help="sender node id (or set DISPATCH_FROM)",
)
@click.option("--request", required=True)
@click.option("--priority", type=click.Choice(["low", "normal", "high"]), default="normal")
@click.option("--callback", type=click.Choice(["file", "discord", "none"]), default="file")
def send_cmd(to: str, from_: str | None, request: str, priority: str, callback: str) -> int:
    """Enqueue a signed task to the other node's inbox (prints: id TAB path)."""
    node = Node(config.load())
    if not from_ and not node.cfg.node:
        raise click.UsageError("--from required (or set DISPATCH_FROM)")
    if from_ and not node.cfg.node:
        # The original named its node with --from alone; that node's own key signs.
        node = Node(config.load({**os.environ, "DISPATCH_NODE": from_}))
    envelope = sender.build(
        node,
        to=to,
        request=request,
        from_=from_ or node.cfg.node,
        priority=Priority(priority),
        callback=Callback(callback),
    )
    sent = sender.deliver(node, envelope)
    click.echo(f"{envelope.id}\t{sent.path}")
    return 0


@click.command()
@click.argument("task_id")
@click.option(
    "--side",
    default=lambda: os.environ.get("DISPATCH_SIDE"),
    help="this node's id (or set DISPATCH_SIDE)",
)
def ack_cmd(task_id: str, side: str | None) -> int:
    """Approve a pending-ack task on this (the receiving) host."""
    env = dict(os.environ)
    if side:
        env["DISPATCH_NODE"] = side
    node = Node(config.load(env))
    if not node.cfg.node:
        raise click.UsageError("--side required (or set DISPATCH_SIDE)")
    acked = acks.give_ack(node, task_id)
    click.echo(f"acked: {acked.task_id}.json")
    return 0


def _debug() -> bool:
    return os.environ.get("DISPATCH_DEBUG", "") not in ("", "0")


def send_main() -> int:
    return run_command(send_cmd, sys.argv[1:], _debug())


def ack_main() -> int:
    return run_command(ack_cmd, sys.argv[1:], _debug())
