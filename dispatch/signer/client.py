"""Signing through the local signer: the same `Signer` as signing in-process, for every
process of a node that has one (root's too: see `NodeKeys.signer`)."""

from __future__ import annotations

import _socket
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from dispatch.core.errors import SigningFailed
from dispatch.core.signing import check_may_sign
from dispatch.signer.protocol import ProtocolError, recv_frame, send_frame

# Socket activation starts the signer in ~150 ms; a signer that does not answer within this
# is hung, and a promote pass must not wait on it for minutes.
TIMEOUT_S = 5.0
# After a signer failed to answer, this process asks again only after this long: a pass
# with many verdicts to sign must not wait a timeout for each.
RETRY_AFTER_S = 30.0


@dataclass
class _Outage:
    why: str = ""
    until: float = 0.0


@dataclass(frozen=True)
class SocketSigner:
    path: Path
    node: str
    outage: _Outage = field(default_factory=_Outage, compare=False, repr=False)

    def _unavailable(self, why: str) -> SigningFailed:
        return SigningFailed(
            f"the local signer at {self.path} did not sign: {why} "
            "(systemctl status dispatch-signer.socket dispatch-signer.service)"
        )

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.outage.why and time.monotonic() < self.outage.until:
            raise self._unavailable(self.outage.why)
        try:
            # The C module under `socket`: what socket.py adds (its enums) costs every
            # execution 11 M instructions (~4 ms) on the way to its result, for one connect.
            conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
            try:
                conn.settimeout(TIMEOUT_S)
                conn.connect(str(self.path))
                send_frame(conn, request)
                answer = recv_frame(conn)
            finally:
                conn.close()
        except TimeoutError:
            self._remember(f"no answer within {TIMEOUT_S:g} s")
            raise self._unavailable(self.outage.why) from None
        except (OSError, ProtocolError) as exc:
            self._remember(getattr(exc, "strerror", None) or str(exc))
            raise self._unavailable(self.outage.why) from None
        self.outage.why = ""
        if not answer.get("ok"):
            raise SigningFailed(str(answer.get("error", "the signer refused"))[:500])
        return answer

    def _remember(self, why: str) -> None:
        self.outage.why = why
        self.outage.until = time.monotonic() + RETRY_AFTER_S

    @cached_property
    def kid(self) -> str:
        answer = self._ask({"op": "kid"})
        if answer.get("node") != self.node:
            raise SigningFailed(
                f"the signer at {self.path} signs for node {str(answer.get('node'))[:64]!r}, "
                f"not {self.node} (DISPATCH_SIGNER_SOCKET)"
            )
        return str(answer.get("kid", ""))

    def sign(self, body: dict[str, Any]) -> dict[str, Any]:
        # What no signer would sign is said here, as signing in-process says it.
        check_may_sign(self.node, body)
        signed = self._ask({"op": "sign", "body": body}).get("signed")
        if not isinstance(signed, dict):
            raise SigningFailed("the signer answered without a signed object")
        return signed
