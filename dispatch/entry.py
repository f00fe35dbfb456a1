"""The `dispatch` command's entry point, and the one place that turns an error into one
line and an exit code.

Two commands run once per task hop, started by units with fixed arguments: `dispatch
promote` (dispatch-watch.service) and `dispatch exec ID` (dispatch-exec@.service). They run
here without importing click, which is the largest import of the command line (bench/RESULTS.md
has the hop table); every other command line goes to the click group in dispatch.cli."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

INTERNAL_ERROR = 70  # EX_SOFTWARE: a bug in dispatch, not in its input


def _traceback() -> None:
    import traceback  # only for --debug: 5 ms of every hop otherwise

    traceback.print_exc()


def guarded(call: Callable[[], int], debug: bool) -> int:
    """Run `call`, turning whatever it raises into one line on stderr and an exit code."""
    from dispatch.core.errors import DispatchError, ExitCode

    try:
        return call()
    except DispatchError as exc:
        if debug:
            _traceback()
        print(f"dispatch: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:
        if debug:
            _traceback()
        where = f" {exc.filename}" if exc.filename else ""
        print(f"dispatch: error:{where}: {exc.strerror or exc}", file=sys.stderr)
        return ExitCode.USAGE
    except Exception as exc:
        if debug:
            _traceback()
        print(
            f"dispatch: internal error: {type(exc).__name__}: {exc} "
            "(run with --debug for a traceback)",
            file=sys.stderr,
        )
        return INTERNAL_ERROR


def _promote() -> int:
    from dispatch.core import broken_config, config
    from dispatch.core.errors import ConfigError
    from dispatch.core.node import Node
    from dispatch.receive.promote import run_unit_pass

    try:
        try:
            cfg = config.load()
        except ConfigError as exc:
            broken_config.record(str(exc))  # for the heartbeats: peers see why nothing moves
            raise
        broken_config.clear(cfg.state_dir)
        run_unit_pass(Node(cfg))
    except BaseException:
        # dispatch-watch.path starts the service again at once while /run/dispatch/kick
        # exists (PathExists=): a pass that fails before taking the kick must not leave it,
        # or it would start again without end. The timer tries again later. (On a local
        # root, an inbox that holds something does the same: see main.)
        from dispatch.receive.sensor import consume_kick

        consume_kick()
        raise
    return 0


def _exec(task_id: str) -> int:
    # First, before the imports below (~50 ms): the agent of a task the promoter planned.
    from dispatch.receive import quickstart

    quick = quickstart.start(task_id)
    from dispatch.core import config
    from dispatch.core.node import Node
    from dispatch.receive.executor import execute

    try:
        node = Node(config.load())
    except BaseException:
        if quick is not None:
            quickstart.abandon(quick)
        raise
    execute(node, task_id, os.environ.get("DISPATCH_UNIT", ""), quick)
    # The task's outcome is in its result; a non-zero exit here would only mark the unit failed.
    return 0


def hop(args: list[str]) -> Callable[[], int] | None:
    """The hop a unit's command line names, or None for anything else (options, --help, …)."""
    if args == ["promote"]:
        return _promote
    if len(args) == 2 and args[0] == "exec" and not args[1].startswith("-"):
        task_id = args[1]
        return lambda: _exec(task_id)
    return None


def _exit_at_once(rc: int) -> None:
    """End a hop without the interpreter's teardown (15 ms with what a hop imports, against
    2 ms). dispatch-watch.path watches nothing while its service runs and only
    watches again once the promoter is gone: a task that lands after the pass's last look
    and before then waits for the next sweep. An execution's slot is free only once its
    executor is gone. Both write through raw descriptors (core/fsio.py) and close what they
    wrote before they return; only stdio is buffered."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("DISPATCH_DEBUG", "") not in ("", "0")
    fast = hop(args)
    if fast is not None:
        rc = guarded(fast, debug)
        if fast is _promote and rc not in (0, 130):
            # Its one line is out: the unit's journal says why while it waits.
            sys.stderr.flush()
            from dispatch.receive.promote.linger import hold_off_failed_pass

            hold_off_failed_pass()
        if argv is None:  # the process's own command line, not a caller's
            _exit_at_once(rc)
        return rc
    from dispatch.cli import main as cli_main

    return cli_main(args)
