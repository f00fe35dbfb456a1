"""How commands print: JSON for scripts, plain lines for people."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from dispatch.core.errors import ExitCode
from dispatch.core.model import Result, Status


def print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


def result_exit(result: Result) -> int:
    return ExitCode.OK if result.status is Status.OK else ExitCode.TASK_FAILED


def show_result(result: Result, as_json: bool) -> int:
    if as_json:
        print_json(result.to_json())
    else:
        if result.final_text:
            click.echo(result.final_text)
        if result.status is not Status.OK:
            reason = f": {result.reason}" if result.reason else ""
            click.echo(f"dispatch: task {result.id} ended {result.status.value}{reason}", err=True)
    return result_exit(result)


class LiveLine:
    """A one-line progress display on a terminal; silent otherwise."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.enabled = sys.stderr.isatty()
        self.shown = False

    def __call__(self, stage: str, elapsed: float) -> None:
        if not self.enabled:
            return
        sys.stderr.write(f"\r\x1b[2K{self.task_id[:8]} {stage:<12} {elapsed:6.1f}s")
        sys.stderr.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()
