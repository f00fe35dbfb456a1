"""The root command group. Commands live in `dispatch.commands`, logic outside click."""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from dataclasses import dataclass, field

import click

from dispatch import __version__
from dispatch.core import config as config_mod
from dispatch.core.config import Config
from dispatch.core.errors import ExitCode
from dispatch.core.node import Node
from dispatch.entry import guarded


@dataclass
class App:
    debug: bool = False
    _node: Node | None = field(default=None, repr=False)

    def config(self, *, need_root: bool = True) -> Config:
        return config_mod.load(need_root=need_root)

    def node(self) -> Node:
        if self._node is None:
            self._node = Node(self.config())
        return self._node


pass_app = click.make_pass_decorator(App)


# command -> the module of dispatch.commands that defines it. Loaded on use: every hop of a
# task (path unit -> promote -> dispatch-exec@) starts a new Python, which should not import
# what it does not run (each command module pulls in its own part of dispatch).
COMMAND_MODULES = {
    "init": "init",
    "send": "send",
    "ack": "ack",
    "cancel": "cancel",
    "status": "tasks",
    "result": "tasks",
    "wait": "tasks",
    "logs": "tasks",
    "killswitch": "killswitch",
    "keys": "keys",
    "peers": "peers",
    "doctor": "doctor",
    "audit": "audit",
    "promote": "runtime",
    "exec": "runtime",
    "watch": "runtime",
    "heartbeat": "runtime",
    "notify": "runtime",
    "demo": "demo",
    "mcp": "mcp",
    "signer": "signer",
    "list": "listing",
    "clean": "listing",
}
ALIASES = {"ls": "list"}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        cmd_name = ALIASES.get(cmd_name, cmd_name)
        module_name = COMMAND_MODULES.get(cmd_name)
        if module_name is None:
            return None
        module = importlib.import_module(f"dispatch.commands.{module_name}")
        commands: list[click.Command] = module.COMMANDS
        return next((c for c in commands if c.name == cmd_name), None)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            close = difflib.get_close_matches(name, [*COMMAND_MODULES, *ALIASES], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            ctx.fail(f"No such command {name!r}.{hint} (dispatch --help lists them)")
        return super().resolve_command(ctx, args)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, envvar="DISPATCH_DEBUG", help="Show tracebacks for errors.")
@click.option(
    "--color",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="Colour in output: auto (on a terminal, unless NO_COLOR is set), always, never.",
)
@click.version_option(__version__, prog_name="dispatch")
@click.pass_context
def root(ctx: click.Context, debug: bool, color: str) -> None:
    """Signed, filesystem-mediated job dispatch between hosts, run by systemd."""
    ctx.obj = App(debug=debug)
    # https://no-color.org: a non-empty NO_COLOR turns colour off unless asked for.
    if color == "always":
        ctx.color = True
    elif color == "never" or os.environ.get("NO_COLOR"):
        ctx.color = False


def all_commands() -> dict[str, click.Command]:
    """Every command, loaded (for the man page and completion checks)."""
    with click.Context(root) as ctx:
        found = {name: root.get_command(ctx, name) for name in root.list_commands(ctx)}
    return {name: command for name, command in found.items() if command is not None}


def run_command(command: click.Command, argv: list[str] | None, debug: bool) -> int:
    """Run a click command and turn every error into one line and an exit code."""

    def invoke() -> int:
        try:
            rv = command.main(
                args=argv,
                prog_name=os.path.basename(sys.argv[0]) or "dispatch",
                standalone_mode=False,
            )
        except click.exceptions.Exit as exc:
            return int(exc.exit_code)
        except click.exceptions.Abort:
            print("dispatch: aborted", file=sys.stderr)
            return 130
        except click.ClickException as exc:
            exc.show()
            return ExitCode.USAGE
        return int(rv or 0)

    return guarded(invoke, debug)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("DISPATCH_DEBUG", "") not in ("", "0")
    return run_command(root, args, debug)
