"""A node as the rest of the code sees it: its config, the share, its local state, its keys."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from dispatch.core import events
from dispatch.core.config import Config
from dispatch.core.errors import ConfigError
from dispatch.core.signing import NodeKeys
from dispatch.core.spool import Spool
from dispatch.core.state import NodeState, SentLog, sent_dirs


@dataclass(frozen=True)
class Node:
    cfg: Config

    @cached_property
    def spool(self) -> Spool:
        return Spool.of(self.cfg)

    @cached_property
    def state(self) -> NodeState:
        state = NodeState(self.cfg.state_dir)
        try:
            state.ensure()
        except PermissionError as exc:
            raise ConfigError(
                f"cannot use state directory {self.cfg.state_dir}: {exc.strerror} "
                "(run as the dispatch service user, or set DISPATCH_STATE_DIR)"
            ) from None
        return state

    @cached_property
    def sent(self) -> SentLog:
        """What this node (or this user on it) sent: routes waits, results and cancels."""
        return SentLog(sent_dirs(self.cfg.state_dir))

    @cached_property
    def keys(self) -> NodeKeys:
        """This node's signer and the pinned keys of every node; each loaded on first use."""
        keys = NodeKeys(self.cfg)
        share_key = keys.legacy.share_key if self.cfg.accept_v2 or self.cfg.accept_v3 else None
        if share_key is not None:
            self.emit(
                "share_key_ignored",
                f"no HMAC key in {self.cfg.key_dir}, so every schema-2/3 task is refused; "
                f"{share_key} is not used (anyone who reads the share can read it): put the "
                "fleet's HMAC key in this host's ring with `dispatch keys import FILE`",
                level=events.WARNING,
            )
        return keys

    @property
    def name(self) -> str:
        if not self.cfg.node:
            raise ConfigError("this node's id is not set: DISPATCH_NODE (or DISPATCH_SIDE)")
        return self.cfg.node

    def emit(self, event: str, message: str, **fields: Any) -> None:
        node = self.cfg.node or "-"
        log = self.spool.audit_log_path(node) if self.cfg.node else None
        # os.path.isdir: False, not an exception, when the share does not answer.
        if log is not None and not os.path.isdir(log.parent):
            log = None
        events.emit(node, log, event, message, **fields)
