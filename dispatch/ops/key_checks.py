"""`dispatch doctor`'s key checks: this node's key pair, and a pinned key for every peer,
each compared with what the node publishes on the share (reported, never adopted)."""

from __future__ import annotations

import os
import stat

from dispatch.core.errors import DispatchError
from dispatch.core.keys import (
    load_private,
    private_key_path,
    published_mismatch,
    published_path,
    read_published,
)
from dispatch.core.node import Node
from dispatch.ops.doctor import Check


def own_key(node: Node) -> Check:
    path = private_key_path(node.cfg.key_dir, node.name)
    try:
        key = load_private(node.cfg.key_dir, node.name)
        info = os.stat(path)
    except DispatchError as exc:
        return Check("key", False, str(exc), "dispatch init (or dispatch keys new) as root")
    public = key.public
    problems, hints = [], []
    mode = stat.S_IMODE(info.st_mode)
    if mode != 0o600:
        problems.append(f"mode {mode:04o}")
        hints.append(f"chmod 600 {path}")
    if not any(k.raw == public.raw for k in node.keys.pins.keys_of(node.name)):
        problems.append(f"not pinned in {node.keys.pins.path(node.name)}")
    try:
        published = read_published(node.cfg.root, node.name)
    except DispatchError as exc:
        problems.append(str(exc))
        published = None
    if published is None:
        problems.append(f"not published at {published_path(node.cfg.root, node.name)}")
    elif published.raw != public.raw:
        problems.append(f"the share publishes another key as {node.name}'s")
    if len(problems) > len(hints):
        hints.append("dispatch keys publish (pins and publishes this node's key)")
    detail = f"{public.kid} {public.fingerprint} at {path}, mode {mode:04o}"
    return Check("key", not problems, "; ".join([detail, *problems]), "; ".join(hints))


def peer_key(node: Node, peer: str) -> Check:
    name = f"peer-key {peer}"
    try:
        pinned = node.keys.pins.keys_of(peer)
    except DispatchError as exc:
        return Check(name, False, str(exc), f"dispatch peers remove {peer}; then peers add it")
    if not pinned:
        return Check(
            name,
            False,
            f"no key pinned for {peer}: every task from it is refused (unknown_key)",
            f"dispatch peers add {peer} KEYFILE (the line `dispatch init` printed on {peer})",
        )
    detail = ", ".join(f"{k.fingerprint} (pinned {k.pinned_at} from {k.source})" for k in pinned)
    refused = published_mismatch(node.keys.pins, node.cfg.root, peer)
    if refused:
        return Check(
            name,
            False,
            f"{detail}; {refused}",
            f"compare fingerprints with {peer} (dispatch keys show there); a genuine new key is "
            f"pinned with dispatch peers add {peer} KEYFILE",
        )
    return Check(name, True, detail)
