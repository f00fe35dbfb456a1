"""How each knob's value is read: the parsers the knob table in `config` names, each taking
the text of a `KEY=VALUE` line and returning a value or raising `ValueError` with what the
value must look like."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

NODE_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")


def valid_node(name: str) -> bool:
    return NODE_RE.fullmatch(name) is not None


def boolean(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "yes", "true", "on"):
        return True
    if low in ("0", "no", "false", "off", ""):
        return False
    raise ValueError(f"expected a boolean (1/0, yes/no), got {text!r}")


def whole(text: str, shape: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"must be a whole number {shape} (no unit), got {text!r}") from None


def int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = whole(text, f"of at least {minimum}")
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def int_between(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = whole(text, f"from {low} to {high}")
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def positive_float(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(
            f"must be a number of seconds such as 3 or 0.5 (no unit), got {text!r}"
        ) from None
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError(f"must be a positive number, got {text!r}")
    return value


def abs_path(text: str) -> Path:
    path = Path(text.strip())
    if not path.is_absolute():
        raise ValueError(f"must be an absolute path, got {text!r}")
    return path


def node_name(text: str) -> str:
    if not valid_node(text.strip()):
        raise ValueError(f"not a valid node name ([a-z0-9][a-z0-9_.-]{{0,62}}): {text!r}")
    return text.strip()


def enum_of(kind: type[StrEnum]) -> Callable[[str], StrEnum]:
    def parse(text: str) -> StrEnum:
        try:
            return kind(text.strip())
        except ValueError:
            choices = ", ".join(m.value for m in kind)
            raise ValueError(f"must be one of {choices}, got {text!r}") from None

    return parse


def memory(text: str) -> str:
    if not re.fullmatch(r"(\d+[KMGT]?|\d+%|infinity)", text.strip()):
        raise ValueError(f"expected bytes with K/M/G/T suffix, a percentage or infinity: {text!r}")
    return text.strip()


def percent(text: str) -> str:
    if not re.fullmatch(r"\d+%", text.strip()):
        raise ValueError(f"expected a percentage such as 200%: {text!r}")
    return text.strip()


def url(text: str) -> str:
    text = text.strip()
    if text and not re.fullmatch(r"https?://[^\s]+", text):
        raise ValueError(f"expected an http(s) URL, got {text[:80]!r}")
    return text


def text_value(text: str) -> str:
    return text.strip()


def node_list(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for name in names:
        node_name(name)
    return names


def slurm_name(text: str) -> str:
    # Partition and account names reach sbatch as one argument each; keep them to names.
    if text.strip() and not re.fullmatch(r"[A-Za-z0-9_.,-]{1,128}", text.strip()):
        raise ValueError(f"not a Slurm partition/account name: {text[:80]!r}")
    return text.strip()


# Options dispatch sets itself from the task and the other knobs: a site cannot override them
# through DISPATCH_SLURM_ARGS (--requeue would break at-most-once, --output the log).
SLURM_OWNED_OPTIONS = frozenset(
    {
        "--job-name",
        "-J",
        "--comment",
        "--output",
        "-o",
        "--error",
        "-e",
        "--input",
        "-i",
        "--time",
        "-t",
        "--mem",
        "--mem-per-cpu",
        "--mem-per-gpu",
        "--cpus-per-task",
        "-c",
        "--requeue",
        "--no-requeue",
        "--export",
        "--export-file",
        "--wrap",
        "--parsable",
        "--uid",
        "--gid",
        "--chdir",
        "-D",
        "--open-mode",
        "--partition",
        "-p",
        "--account",
        "-A",
        "--array",
        "-a",
        "--wait",
        "-W",
        "--hold",
        "-H",
    }
)


def slurm_args(text: str) -> tuple[str, ...]:

    try:
        args = tuple(shlex.split(text))
    except ValueError as exc:
        raise ValueError(f"cannot split into arguments: {exc}") from None
    for arg in args:
        if not arg.startswith("-"):
            raise ValueError(f"{arg!r} is not an option (write --opt=value as one word)")
        if arg.split("=", 1)[0] in SLURM_OWNED_OPTIONS:
            raise ValueError(f"{arg.split('=', 1)[0]} is set by dispatch and cannot be given")
    return args


# knob -> (field, parser). Knob names keep the original project's spelling.
