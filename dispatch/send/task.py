"""Building, signing and delivering a task envelope."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dispatch.core import events, history
from dispatch.core.errors import UsageError
from dispatch.core.fsio import DirRefused
from dispatch.core.knobs import valid_node
from dispatch.core.lanedirs import hold
from dispatch.core.model import MAX_INT, SCHEMA, Callback, Envelope, Priority
from dispatch.core.node import Node
from dispatch.core.signing import sign_envelope
from dispatch.core.wire import MAX_FILE_BYTES, canonical, new_id, now_utc, rfc3339, valid_id
from dispatch.send import outbox


@dataclass(frozen=True)
class Sent:
    envelope: Envelope
    path: Path


def chain_position() -> tuple[str | None, int]:
    """Inside an execution the executor exported DISPATCH_TASK_ID/DISPATCH_HOPS: a task sent
    from there is a child of that task, one hop further."""
    env: dict[str, str] = dict(os.environ)
    if not valid_id(env.get("DISPATCH_TASK_ID", "")):
        env = _ancestor_chain_env()
    parent = env.get("DISPATCH_TASK_ID", "")
    if not valid_id(parent):
        return None, 0
    try:
        hops = int(env.get("DISPATCH_HOPS", "0"))
    except ValueError:
        hops = 0
    return parent, max(hops, 0) + 1


def _ancestor_chain_env(max_depth: int = 64) -> dict[str, str]:
    """The chain variables of the nearest ancestor that has them. Agent CLIs often start
    their tools (an MCP server, a shell) with a cleaned environment; the agent process the
    executor started still carries DISPATCH_TASK_ID in its own. Only this process's
    ancestors are read, each by its pid."""
    pid = os.getppid()
    for _ in range(max_depth):
        if pid <= 1:
            break
        try:
            raw = Path(f"/proc/{pid}/environ").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        found = dict(
            item.split("=", 1)
            for item in raw.decode("utf-8", "replace").split("\0")
            if item.startswith(("DISPATCH_TASK_ID=", "DISPATCH_HOPS="))
        )
        if valid_id(found.get("DISPATCH_TASK_ID", "")):
            return found
        pid = int(stat[stat.rfind(")") + 2 :].split()[1])
    return {}


def build(
    node: Node,
    *,
    to: str,
    request: str,
    from_: str | None = None,
    priority: Priority = Priority.NORMAL,
    require_ack: bool = False,
    dangerous: bool = False,
    timeout_s: int | None = None,
    max_output_bytes: int | None = None,
    callback: Callback = Callback.FILE,
) -> Envelope:
    sender = from_ or node.name
    if not valid_node(to):
        raise UsageError(f"--to: not a valid node name: {to!r}")
    if sender == to and from_:
        raise UsageError("--from and --to must differ")
    if sender == to:
        raise UsageError(
            f"--to {to} is this node itself (DISPATCH_NODE={sender}): a task goes to a peer "
            f"({', '.join(node.cfg.peers) or 'none configured: set DISPATCH_PEERS'})"
        )
    if sender == node.cfg.node and to not in node.cfg.peers:
        peers = ", ".join(node.cfg.peers) or "none configured"
        raise UsageError(f"unknown peer {to!r} (peers: {peers}; set DISPATCH_PEERS)")
    if not request.strip():
        raise UsageError("--request is empty")
    # What every receiver's intake refuses is refused here, before anything is signed.
    if "\x00" in request:
        raise UsageError("--request holds a NUL character, which receivers refuse")
    try:
        request.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError("--request is not valid Unicode (a lone surrogate)") from None
    timeout = node.cfg.default_timeout_s if timeout_s is None else timeout_s
    max_output = node.cfg.default_max_output_bytes if max_output_bytes is None else max_output_bytes
    for what, value in (("--timeout", timeout), ("--max-output-bytes", max_output)):
        # bool is an int to Python, never to a receiver; nor is anything past MAX_INT.
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_INT:
            raise UsageError(f"{what} must be a whole number from 1 to {MAX_INT}")
    parent, hops = chain_position()
    envelope = Envelope(
        id=new_id(),
        from_=sender,
        to=to,
        created=rfc3339(now_utc()),
        priority=priority,
        request=request,
        require_ack=require_ack,
        require_dangerous=dangerous,
        timeout_s=timeout,
        max_output_bytes=max_output,
        callback=callback,
        parent=parent,
        hops=hops,
        kid="",
        sig="",
        schema=SCHEMA,
    )
    signed = sign_envelope(node.keys, envelope)
    size = len(canonical(signed.to_json())) + 1
    if size > MAX_FILE_BYTES:
        raise UsageError(
            f"the task would be {size} bytes as a file, over the {MAX_FILE_BYTES}-byte (1 MiB) "
            f"limit of a task envelope (the request is {len(request.encode('utf-8'))} bytes): "
            "shorten it, or put the material on the share and send its path"
        )
    return signed


def deliver(node: Node, envelope: Envelope) -> Sent:
    box = outbox.from_env()
    if box is not None:
        # An agent running as another user: the executor's courier delivers it.
        return Sent(envelope, outbox.hand_over(node, envelope, box))
    lane = node.spool.lane(envelope.from_, envelope.to)
    if not lane.path.is_dir():
        raise UsageError(
            f"lane {lane.path} does not exist: run `dispatch init` on both nodes "
            "(is the share mounted?)"
        )
    data = canonical(envelope.to_json()) + b"\n"
    # Recorded before it leaves: the record, not the share, says which lane its result
    # (and only its result) comes back on.
    node.sent.record(envelope.id, envelope.from_, envelope.to)
    try:
        held_lane = hold(lane)
    except DirRefused as exc:
        raise UsageError(f"lane {lane.name} is not used: {exc}") from None
    try:
        # Through the lane's directories held open: a tmp/ or inbox/ replaced by a link
        # cannot make this host write (as whoever sends) anywhere outside the share.
        held_lane.deliver(envelope.id, data)
    finally:
        held_lane.close()
    path = lane.inbox / lane.task_name(envelope.id)
    if not history.record_sent(node, envelope):
        node.emit(
            "history_unwritable",
            f"sent, but not recorded in this node's history ({history.paths(node)[0]})",
            task_id=envelope.id,
            level=events.WARNING,
        )
    node.emit(
        "task_sent",
        f"-> {envelope.to}: {envelope.request[:80]}",
        task_id=envelope.id,
        from_=envelope.from_,
        to=envelope.to,
    )
    return Sent(envelope, path)
