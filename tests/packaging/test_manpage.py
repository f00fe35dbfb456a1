"""dispatch(1) documents the CLI as it is: every command, subcommand and long option of
`dispatch` has its place in packaging/man/dispatch.1, and the page renders without warnings.
A command added to the CLI fails here until the man page describes it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from dispatch.cli import all_commands
from dispatch.commands.compat import ack_cmd, send_cmd
from tests.packaging.conftest import PACKAGING, SYSTEM_PATH

MAN = PACKAGING / "man/dispatch.1"


def _plain(roff: str) -> str:
    """Roff source as text: escaped hyphens as hyphens, font changes and quotes dropped."""
    text = roff.replace("\\-", "-").replace("\\(aq", "'").replace("\\e", "\\")
    text = re.sub(r"\\f[BIRPC]", "", text)
    return text.replace('"', "")


def _sections() -> dict[str, str]:
    """Command path ("dispatch keys new") -> the text of its .SS section."""
    sections: dict[str, str] = {}
    current: str | None = None
    for line in MAN.read_text().splitlines():
        if line.startswith((".SS", ".SH")):
            current = None
        if line.startswith(".SS"):
            words = []
            for word in _plain(line[3:]).split():
                if not re.fullmatch(r"[a-z][a-z-]*", word):
                    break
                words.append(word)
            current = " ".join(words)
            sections[current] = ""
        elif current is not None:
            sections[current] += _plain(line) + "\n"
    return sections


def _commands() -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []

    def walk(path: str, command: click.Command) -> None:
        if isinstance(command, click.Group):
            for name, sub in sorted(command.commands.items()):
                found.append((f"{path} {name}", sub))
                walk(f"{path} {name}", sub)

    for name, command in sorted(all_commands().items()):
        found.append((f"dispatch {name}", command))
        walk(f"dispatch {name}", command)
    found += [("dispatch-send", send_cmd), ("dispatch-ack", ack_cmd)]
    return found


def _long_options(command: click.Command) -> list[str]:
    return sorted(
        {
            opt
            for param in command.params
            if isinstance(param, click.Option)
            for opt in [*param.opts, *param.secondary_opts]
            if opt.startswith("--")
        }
    )


COMMANDS = _commands()


def test_cli_has_the_commands_of_the_design() -> None:
    # The man page test below walks whatever the CLI has; make sure it sees the real thing.
    assert {"init", "send", "ack", "status", "result", "wait", "promote", "exec", "watch"} <= set(
        all_commands()
    )


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[p for p, _ in COMMANDS])
def test_every_command_and_option_is_in_the_man_page(path: str, command: click.Command) -> None:
    sections = _sections()
    assert path in sections, (
        f'`{path}` exists in the CLI but has no `.SS "{path} ..."` section in '
        f"packaging/man/dispatch.1"
    )
    text = sections[path]
    missing = [
        opt
        for opt in _long_options(command)
        if opt != "--help" and not re.search(rf"{re.escape(opt)}(?![a-z-])", text)
    ]
    assert not missing, f"`{path}`: options missing from its man page section: {missing}"


def test_man_page_has_no_stale_commands() -> None:
    known = {path for path, _ in COMMANDS}
    stale = [path for path in _sections() if path.startswith("dispatch") and path not in known]
    assert not stale, f"man page sections for commands the CLI does not have: {stale}"


def test_man_page_renders_without_warnings() -> None:
    proc = subprocess.run(
        ["groff", "-man", "-ww", "-z", "-Tutf8", str(MAN)],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"},
    )
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    for alias in ("dispatch-send.1", "dispatch-ack.1", "dispatch-sensor.1"):
        assert (PACKAGING / "man" / alias).read_text() == ".so man1/dispatch.1\n"


def test_completion_generation_works_with_this_click() -> None:
    for shell, marker in (
        ("bash", "complete -o nosort -F _dispatch_completion dispatch"),
        ("zsh", "#compdef dispatch"),
    ):
        proc = subprocess.run(
            [str(PACKAGING / "gen-completion"), shell],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            env={**os.environ, "PYTHON": sys.executable},
        )
        assert proc.returncode == 0 and marker in proc.stdout, proc.stdout + proc.stderr


def test_every_unit_points_at_the_man_page() -> None:
    for unit in sorted((Path(PACKAGING).parent / "units").iterdir()):
        assert "Documentation=man:dispatch(1)" in unit.read_text(), unit.name
