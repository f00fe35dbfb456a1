"""Signing through the local signer, for a process that cannot read the key (a user in group
`dispatch`, an agent): the same `Signer` as signing in-process."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from dispatch.core.errors import ConfigError, UsageError
from dispatch.signer.protocol import ProtocolError, recv_frame, send_frame

TIMEOUT_S = 10.0


@dataclass(frozen=True)
class SocketSigner:
    path: Path
    node: str

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(TIMEOUT_S)
                conn.connect(str(self.path))
                send_frame(conn, request)
                answer = recv_frame(conn)
        except (OSError, ProtocolError) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            raise ConfigError(
                f"cannot reach the signer at {self.path}: {why} "
                "(systemctl start dispatch-signer.socket, or run as root)"
            ) from None
        if not answer.get("ok"):
            raise UsageError(str(answer.get("error", "the signer refused"))[:500])
        return answer

    @cached_property
    def kid(self) -> str:
        return str(self._ask({"op": "kid"}).get("kid", ""))

    def sign(self, body: dict[str, Any]) -> dict[str, Any]:
        signed = self._ask({"op": "sign", "body": body}).get("signed")
        if not isinstance(signed, dict):
            raise ConfigError("the signer answered without a signed object")
        return signed
