"""`dispatch doctor`'s checks of what the share and the agent are trusted with: every lane
opened as the receiver opens it (nothing followed, owners checked), the faults the passes
recorded, and the user the agent runs as (never root unless told so)."""

from __future__ import annotations

import os
import pwd
from typing import NamedTuple

from dispatch.core.errors import DispatchError
from dispatch.core.node import Node


class Finding(NamedTuple):
    name: str
    ok: bool
    detail: str
    hint: str = ""


def lanes_held(node: Node) -> list[Finding]:
    """Every lane opened as a receiver or sender opens it (nothing followed, owners
    checked), and the faults the passes recorded."""
    from dispatch.core.fsio import DirRefused
    from dispatch.core.lanedirs import FAULT_PREFIX, hold

    out = []
    for lane in node.spool.lanes_in(node.cfg) + node.spool.lanes_out(node.cfg):
        try:
            hold(lane).close()
        except DirRefused as exc:
            out.append(
                Finding(
                    f"lane {lane.name}",
                    False,
                    f"refused: {exc}",
                    "put the lane's directories back as `dispatch init` makes them "
                    "(real directories, owned by root or the share's owner)",
                )
            )
        except OSError:
            continue  # an unreachable share: the root check says so
    try:
        faults = node.state.faults.all()
    except (DispatchError, OSError):
        faults = []
    for fault in faults:
        if fault.key.startswith(FAULT_PREFIX) and any(
            c.name == f"lane {fault.key[5:]}" for c in out
        ):
            continue
        out.append(
            Finding(
                f"fault {fault.key}",
                False,
                f"{fault.reason}: {fault.message} ({fault.count} passes)",
                "see `journalctl -t dispatch`; it clears by itself once fixed",
            )
        )
    return out


def agent_user(node: Node) -> Finding:
    """The agent is not trusted: it must not run as root, so it cannot read the keys or
    the state, nor rewrite them."""
    run_as = node.cfg.run_as
    fix = "set DISPATCH_RUN_AS=dispatch-agent (`dispatch init --run-as USER`)"
    if not run_as:
        if os.geteuid() == 0:
            return Finding(
                "agent user",
                False,
                "DISPATCH_RUN_AS is unset: executions run as root, so the agent is refused",
                fix,
            )
        return Finding("agent user", True, f"the agent runs as this user (uid {os.geteuid()})")
    try:
        uid = pwd.getpwnam(run_as).pw_uid
    except KeyError:
        return Finding(
            "agent user",
            False,
            f"DISPATCH_RUN_AS={run_as}: no such user",
            "install the package (its sysusers.d creates dispatch-agent), or useradd it",
        )
    if uid == 0:
        return Finding(
            "agent user",
            False,
            f"DISPATCH_RUN_AS={run_as}: THE AGENT RUNS AS ROOT and can read this node's keys "
            "and state",
            fix,
        )
    return Finding("agent user", True, f"the agent runs as {run_as} (uid {uid})")
