"""Shell completion (click's `shell_complete`): task ids and peer names from this node's
config, record and lanes. Completion runs on every Tab press, so it never raises: a broken
config or an unmounted share offers nothing rather than a traceback in the shell."""

from __future__ import annotations

import click
from click.shell_completion import CompletionItem


def complete_ids(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    try:
        from dispatch.core import config, history, ids
        from dispatch.core.node import Node

        node = Node(config.load())
        requests = {task.id: task.request for task in history.tasks(node)}
        wanted = incomplete.lower()
        return [
            CompletionItem(task_id, help=requests.get(task_id, "")[:60] or None)
            for task_id in sorted(ids.known_ids(node))
            if task_id.startswith(wanted)
        ]
    except Exception:
        return []


def complete_peers(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    try:
        from dispatch.core import config

        return [CompletionItem(p) for p in config.load().peers if p.startswith(incomplete)]
    except Exception:
        return []
