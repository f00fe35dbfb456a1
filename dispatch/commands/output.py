"""How commands print: JSON for scripts, plain lines for people."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

import click

from dispatch.core.errors import ExitCode, Interrupted
from dispatch.core.model import Result, Status
from dispatch.core.node import Node
from dispatch.send import results, waiting


def print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


def result_exit(result: Result) -> int:
    return ExitCode.OK if result.status is Status.OK else ExitCode.TASK_FAILED


def show_result(result: Result, as_json: bool, root: Path | None = None) -> int:
    if as_json:
        print_json(result.to_json())
    else:
        if result.final_text:
            click.echo(result.final_text)
        if result.truncated:
            where = f"{root / result.log_path}, " if root and result.log_path else ""
            click.echo(
                f"dispatch: output truncated; the whole output (up to the task's "
                f"max_output_bytes) is in the log: {where}dispatch logs {result.id[:8]}",
                err=True,
            )
        if result.status is not Status.OK:
            reason = f": {result.reason}" if result.reason else ""
            click.echo(f"dispatch: task {result.id} ended {result.status.value}{reason}", err=True)
    return result_exit(result)


class LiveLine:
    """A one-line progress display on a terminal; silent otherwise. It ends on a line that
    keeps the whole task id in view (the live line only has room for its head)."""

    def __init__(self, task_id: str, stream: TextIO | None = None) -> None:
        self.task_id = task_id
        self.stream = sys.stderr if stream is None else stream
        self.enabled = self.stream.isatty()
        self.shown = False
        self.stage = ""
        self.elapsed = 0.0

    def __call__(self, stage: str, elapsed: float) -> None:
        self.stage, self.elapsed = stage, elapsed
        if not self.enabled:
            return
        self.stream.write(f"\r\x1b[2K{self.task_id[:8]} {stage:<12} {elapsed:6.1f}s")
        self.stream.flush()
        self.shown = True

    def close(self, final: str = "") -> None:
        """Clear the live line; on a terminal leave `final` (when given) in its place."""
        if not self.enabled:
            return
        if self.shown:
            self.stream.write("\r\x1b[2K")
        if final:
            self.stream.write(final + "\n")
        self.stream.flush()


def await_result(
    node: Node, task_id: str, *, timeout: float | None, what: str = "waiting"
) -> Result:
    """Wait for a task's verified result with the live line, the way every command that
    waits does it. Ctrl-C stops the waiting, not the task, and says how to come back."""
    live = LiveLine(task_id)
    try:
        result = waiting.wait(node, task_id, timeout=timeout, tick=live)
    except KeyboardInterrupt:
        live.close()
        lane = results.find_task_lane(node, task_id)
        where = "" if lane is None else f" on {lane.to if lane.from_ == node.name else lane.from_}"
        raise Interrupted(
            f"stopped {what}; task {task_id} keeps running{where}"
            + (f" (last seen: {live.stage})" if live.stage else "")
            + ". "
            f"Wait for it: dispatch wait {task_id}   cancel it: dispatch cancel {task_id}"
        ) from None
    except BaseException:
        live.close(f"{task_id} {live.stage or 'waiting'} {live.elapsed:.1f}s")
        raise
    live.close(f"{task_id} {result.status.value} {result.elapsed_s:.1f}s on {result.answered_by}")
    return result
