"""The chain courier: how an agent running as another user (DISPATCH_RUN_AS) sends a child
task although it can read neither the node's config nor its key, and cannot write the
share's outgoing lane.

The executor (root, supervising the agent for its whole life) gives each execution a box
under /run/dispatch/exec/<id>/ (root's, 0755):

    outbox/    the agent's (0700): `dispatch send` there writes the child task the local
               signer signed for it (tmp name first, then `<child>.json`)
    verdict/   root's: `<child>.json`, {"delivered": path} or {"refused": reason, "detail"}
    state/     the agent's (0700): its sent records, so its `dispatch wait` can follow

and the non-secret settings its `dispatch send` needs, in its environment
(`agent_settings`): never the config file, the node state, a webhook token or a key.
Each supervise tick the courier verifies what is in outbox/ as a receiver would (signed by
this node's key, a task, parent = this execution, hops = its hops + 1, an allowed chain
peer, within the size limit, never sent before) and delivers it with the normal send path;
anything else is refused with its reason, one line in the execution's log, an event, and
the file kept in node-local state (`chains/refused/`). What is left when the execution
ends is refused the same way (`execution_ended`): nothing is lost silently."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dispatch.core import events, fsio
from dispatch.core.errors import DispatchError, Rejection
from dispatch.core.model import SCHEMA, Envelope
from dispatch.core.node import Node
from dispatch.core.signing import verify_envelope
from dispatch.core.wire import MAX_FILE_BYTES, valid_id
from dispatch.receive.quickstart import make_box
from dispatch.send.outbox import OUTBOX_ENV

EXEC_RUN_DIR = Path("/run/dispatch/exec")
TASK_SUFFIX = ".json"
# Refused children kept (file, reason, log line, event) per execution; the rest are counted.
KEEP_REFUSED = 50


@dataclass(frozen=True)
class ChainBox:
    base: Path

    @property
    def outbox(self) -> Path:
        return self.base / "outbox"

    @property
    def verdicts(self) -> Path:
        return self.base / "verdict"

    @property
    def state(self) -> Path:
        return self.base / "state"


def _rmtree(path: Path) -> None:
    # shutil (with bz2 and lzma) only here: the promoter loads this module for every plan.
    import shutil

    shutil.rmtree(path)


def start_courier(
    node: Node, parent: Envelope, user: str | None, note: Callable[[str], None]
) -> Courier | None:
    """A courier for an execution whose agent runs as another user than this root executor;
    None for any other agent, which can read the settings and write the lane itself."""
    if user is None or user == "root" or os.geteuid() != 0:
        return None
    try:
        box = open_box(parent.id, user)
    except (OSError, KeyError) as exc:
        note(f"# no outbox for child tasks ({exc}): this execution cannot send any")
        return None
    return Courier(node, parent, box, note)


def settings_for(node: Node, box: ChainBox) -> dict[str, str]:
    """What the agent's `dispatch send` and `dispatch wait` need to know, none of it secret;
    DISPATCH_CONFIG=/dev/null so that nothing else is read (the config is 0640)."""
    cfg = node.cfg
    return {
        "DISPATCH_CONFIG": "/dev/null",
        "DISPATCH_NODE": node.name,
        "DISPATCH_ROOT": str(cfg.root),
        "DISPATCH_PEERS": ",".join(cfg.peers),
        "DISPATCH_CHAIN_PEERS": ",".join(cfg.chain_peers),
        "DISPATCH_MAX_HOPS": str(cfg.max_hops),
        "DISPATCH_SIGNER_SOCKET": str(cfg.signer_socket),
        "DISPATCH_KEY_DIR": str(cfg.key_dir),
        "DISPATCH_PEERS_DIR": str(cfg.peers_dir),
        "DISPATCH_STATE_DIR": str(box.state),
        "DISPATCH_DEFAULT_TIMEOUT_S": str(cfg.default_timeout_s),
        "DISPATCH_DEFAULT_MAX_OUTPUT_BYTES": str(cfg.default_max_output_bytes),
        "XDG_STATE_HOME": str(box.state),
        OUTBOX_ENV: str(box.outbox),
    }


def open_box(task_id: str, user: str, base: Path = EXEC_RUN_DIR) -> ChainBox:
    """A fresh box for this execution; one left by an executor that died is replaced."""
    account = pwd.getpwnam(user)
    box = ChainBox(base / task_id)
    if os.path.lexists(box.base):
        _rmtree(box.base)  # fd-based: links the agent left in it are not followed
    make_box(box.base, [box.verdicts], [box.outbox, box.state], account.pw_uid, account.pw_gid)
    return box


class Courier:
    """Delivers the children an execution hands over; `note` writes one line to its log."""

    def __init__(self, node: Node, parent: Envelope, box: ChainBox, note: Callable[[str], None]):
        self.node = node
        self.parent = parent
        self.box = box
        self.note = note
        self.refused = 0

    def agent_settings(self) -> dict[str, str]:
        return settings_for(self.node, self.box)

    def sweep(self) -> None:
        try:
            names = sorted(os.listdir(self.box.outbox))
        except OSError:
            return
        for name in names:
            if name.startswith("."):
                continue  # still being written (the agent's tmp name)
            self._handle(name)

    def close(self) -> None:
        """The execution ended: what is left was not delivered while it ran, and is refused;
        then the box goes."""
        try:
            names = sorted(os.listdir(self.box.outbox))
        except OSError:
            names = []
        for name in names:
            self._refuse(
                name,
                self._read(name),
                Rejection("execution_ended", "left in the outbox when its execution ended"),
            )
        if self.refused > KEEP_REFUSED:
            line = (
                f"{self.refused - KEEP_REFUSED} more child tasks refused, not kept "
                f"(the first {KEEP_REFUSED} are)"
            )
            self.note(f"# {line}")
            self.node.emit("chain_refused", line, task_id=self.parent.id, level=events.WARNING)
        with contextlib.suppress(OSError):
            _rmtree(self.box.base)

    def _read(self, name: str) -> bytes:
        try:
            return fsio.read_regular(self.box.outbox / name, MAX_FILE_BYTES)
        except (OSError, Rejection):
            return b""

    def _handle(self, name: str) -> None:
        from dispatch.send.task import deliver

        data = b""
        try:
            data = fsio.read_regular(self.box.outbox / name, MAX_FILE_BYTES)
            child = self.check(name, data)
            sent = deliver(self.node, child)
        except FileNotFoundError:
            return  # the agent took it back
        except Rejection as exc:
            self._refuse(name, data, exc)
            return
        except (DispatchError, OSError) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            self._refuse(name, data, Rejection("undeliverable", f"not delivered: {why}"))
            return
        self._remove(name)
        self._verdict(child.id, {"delivered": str(sent.path)})
        self.note(f"# child task {child.id} delivered to {child.to}")

    def check(self, name: str, data: bytes) -> Envelope:
        """A child as a receiver would check it, and as only this execution may send it."""
        stem = name.removesuffix(TASK_SUFFIX)
        if stem == name or not valid_id(stem):
            raise Rejection("name_mismatch", f"{name[:80]!r} is not <task id>.json")
        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise Rejection("malformed", "not a JSON task") from None
        if not isinstance(obj, dict):
            raise Rejection("malformed", "not a JSON object")
        child = verify_envelope(self.node.keys, obj)
        if child.schema != SCHEMA:
            raise Rejection("malformed", f"a child task is schema {SCHEMA}, not {child.schema}")
        cfg, parent = self.node.cfg, self.parent
        hops = parent.hops + 1
        allowed = cfg.chain_peers or cfg.peers
        if child.id != stem:
            raise Rejection("name_mismatch", f"file {name} holds task {child.id}")
        if child.from_ != self.node.name:
            raise Rejection("wrong_lane", f"a task from {child.from_}, not this node")
        if child.parent != parent.id:
            raise Rejection("not_a_child", f"parent is {child.parent}, not {parent.id}")
        if child.hops != hops:
            raise Rejection("bad_hops", f"hops {child.hops}; this execution's children are {hops}")
        if hops > cfg.max_hops:
            raise Rejection("too_many_hops", f"hops {hops} over DISPATCH_MAX_HOPS={cfg.max_hops}")
        if child.to not in allowed:
            raise Rejection("peer_not_allowed", f"{child.to} is not in DISPATCH_CHAIN_PEERS")
        if self.node.sent.lookup(child.id) is not None:
            raise Rejection("replay", f"task {child.id} was sent before")
        return child

    def _refuse(self, name: str, data: bytes, why: Rejection) -> None:
        task_id = name.removesuffix(TASK_SUFFIX)
        self.refused += 1
        if valid_id(task_id):
            self._verdict(task_id, {"refused": why.reason, "detail": str(why)})
        if self.refused > KEEP_REFUSED:
            # An agent flooding its outbox must not fill the node's disk or the log: past
            # the first ones, refusals are only counted (close() reports how many).
            self._remove(name)
            return
        kept = self.node.state.path / "chains" / "refused" / self.parent.id
        with contextlib.suppress(OSError):
            kept.mkdir(parents=True, exist_ok=True, mode=0o700)
            safe = name.replace("/", "_")[:200] or "unnamed"
            fsio.atomic_write(kept / safe, data, mode=0o600)
            record = {"reason": why.reason, "detail": str(why), "name": name, "bytes": len(data)}
            fsio.atomic_write(kept / f"{safe}.reason.json", fsio.dump_json(record), mode=0o600)
        self._remove(name)
        line = f"child task refused ({why.reason}): {why}"
        self.note(f"# {line}")
        self.node.emit(
            "chain_refused",
            line,
            task_id=self.parent.id,
            reason=why.reason,
            child=task_id[:64],
            level=events.WARNING,
        )

    def _remove(self, name: str) -> None:
        path = self.box.outbox / name
        with contextlib.suppress(OSError):
            if os.path.isdir(path) and not os.path.islink(path):
                _rmtree(path)
            else:
                os.unlink(path)

    def _verdict(self, task_id: str, verdict: dict[str, str]) -> None:
        with contextlib.suppress(OSError):
            path = self.box.verdicts / f"{task_id}{TASK_SUFFIX}"
            fsio.atomic_write(path, fsio.dump_json(verdict), mode=0o644, overwrite=False)
