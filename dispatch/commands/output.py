"""How commands print: JSON for scripts, plain lines for people."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any, TextIO

import click

from dispatch.core.errors import DispatchError, ExitCode, Interrupted
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
    """Where a task is while we wait. On a terminal: one line, rewritten in place, with the
    stage, the time so far and the latest line of the agent's output (from the log on the
    share), ending on a line that keeps the whole task id in view. Off a terminal: silent,
    or with `progress` one line per change of stage."""

    def __init__(
        self,
        task_id: str,
        stream: TextIO | None = None,
        *,
        log: Path | None = None,
        progress: bool = False,
    ) -> None:
        self.task_id = task_id
        self.stream = sys.stderr if stream is None else stream
        self.enabled = self.stream.isatty()
        self.progress = progress and not self.enabled
        self.log = log
        self.shown = False
        self.stage = ""
        self.elapsed = 0.0

    def __call__(self, stage: str, elapsed: float) -> None:
        changed = stage != self.stage
        self.stage, self.elapsed = stage, elapsed
        if self.progress and changed:
            self.stream.write(f"{self.task_id[:8]} {stage} {elapsed:.1f}s\n")
            self.stream.flush()
        if not self.enabled:
            return
        line = f"{self.task_id[:8]} {stage:<12} {elapsed:6.1f}s"
        latest = latest_output(self.log) if self.log is not None and stage == "running" else ""
        width = shutil.get_terminal_size((80, 24)).columns - 1
        if latest and width > len(line) + 10:
            line += "  " + latest[: width - len(line) - 2]
        self.stream.write(f"\r\x1b[2K{line}")
        self.stream.flush()
        self.shown = True

    def close(self, final: str = "") -> None:
        """Clear the live line; leave `final` (when given) in its place."""
        if self.progress and final:
            self.stream.write(final + "\n")
        if not self.enabled:
            return
        if self.shown:
            self.stream.write("\r\x1b[2K")
        if final:
            self.stream.write(final + "\n")
        self.stream.flush()


def latest_output(log: Path) -> str:
    """The agent's latest line of output, as text to show: from stream-json its text (or
    the kind of message), control characters (a terminal's escapes) made spaces."""
    from dispatch.ops.logs import last_line

    try:
        raw = last_line(log)
    except (OSError, DispatchError):
        return ""
    text = raw
    try:
        msg = json.loads(raw)
    except ValueError:
        msg = None
    if isinstance(msg, dict):
        event = msg.get("event")
        delta = event.get("delta") if isinstance(event, dict) else None
        if isinstance(delta, dict) and isinstance(delta.get("text"), str):
            text = delta["text"]
        elif isinstance(msg.get("result"), str):
            text = msg["result"]
        else:
            text = f"[{msg.get('type', 'output')}]"
    return " ".join("".join(" " if ord(c) < 32 or ord(c) == 127 else c for c in text).split())


def await_result(
    node: Node,
    task_id: str,
    *,
    timeout: float | None,
    what: str = "waiting",
    progress: bool = False,
) -> Result:
    """Wait for a task's verified result with the live line, the way every command that
    waits does it. Ctrl-C stops the waiting, not the task, and says how to come back."""
    lane = results.find_task_lane(node, task_id)
    live = LiveLine(
        task_id, log=None if lane is None else lane.log_path(task_id), progress=progress
    )
    try:
        result = waiting.wait(node, task_id, timeout=timeout, tick=live)
    except KeyboardInterrupt:
        live.close()
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
