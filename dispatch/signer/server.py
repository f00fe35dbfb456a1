"""`dispatch signer`: the one process that reads this node's private key. It serves one
request per connection on a Unix socket (systemd's, when socket-activated; else its own),
signs what `rules.decide` allows the caller, and logs every decision as an event."""

from __future__ import annotations

import contextlib
import grp
import os
import socket
import stat
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dispatch.core import events
from dispatch.core.errors import ConfigError
from dispatch.core.keys import load_private
from dispatch.core.node import Node
from dispatch.core.signing import LocalSigner
from dispatch.signer.caller import execution_info, identify
from dispatch.signer.protocol import ProtocolError, recv_frame, send_frame
from dispatch.signer.rules import GROUP, Caller, Policy, decide

SD_LISTEN_FDS_START = 3
CLIENT_TIMEOUT_S = 5.0


def group_gid(name: str = GROUP) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


def _identity(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns)


@dataclass
class SignerServer:
    node: Node
    signer: LocalSigner
    group: str = GROUP  # whose members send (tests name another)
    loaded: tuple[int, int, int] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, node: Node) -> SignerServer:
        key = load_private(node.cfg.key_dir, node.cfg.node)
        return cls(node, LocalSigner(key), loaded=_identity(key.path))

    def current(self) -> LocalSigner:
        """The key as it is now on disk. `dispatch keys rotate` replaces the file in one
        rename while a signer may be running (a busy dispatch-signer.service never idles
        out, `dispatch watch`'s never does): signing on with the key it loaded would sign
        with a key peers are told to retire. A stat per request, in the signer's own key
        directory; a key that cannot be read now leaves the loaded one in use, said once."""
        path = self.signer.key.path
        now = _identity(path)
        if now is None or now == self.loaded:
            return self.signer
        with self.lock:
            if now == self.loaded:
                return self.signer
            try:
                self.signer = LocalSigner(load_private(path.parent, self.node.cfg.node))
            except ConfigError as exc:
                events.emit(
                    self.node.cfg.node,
                    None,
                    "signer_key_unreadable",
                    f"the key changed on disk and cannot be read ({exc}); signing on with "
                    f"the loaded key {self.signer.kid}",
                    level=events.WARNING,
                )
            else:
                events.emit(
                    self.node.cfg.node,
                    None,
                    "signer_key_reloaded",
                    f"the key changed on disk: signing with {self.signer.kid} from now on",
                )
            self.loaded = now
            return self.signer

    def policy(self) -> Policy:
        cfg = self.node.cfg
        return Policy(
            cfg.node,
            group_gid(self.group),
            cfg.peers,
            cfg.chain_peers,
            cfg.max_hops,
            owner_uid=os.geteuid(),
        )

    # Events go to the journal only: the signer never touches the share (a hung mount must
    # not hold up a signature), and its sandbox cannot write there.
    def answer(self, caller: Caller, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        signer = self.current()
        if op == "kid":
            return {"ok": True, "node": signer.node, "kid": signer.kid}
        body = request.get("body")
        if op != "sign" or not isinstance(body, dict):
            return {"ok": False, "error": "the signer answers {op: sign, body} or {op: kid}"}
        execution = execution_info(self.node.state, caller.execution)
        decision = decide(caller, self.policy(), body, execution)
        task_id = body.get("id") if isinstance(body.get("id"), str) else None
        who = f"pid {caller.pid} uid {caller.uid}"
        if not decision.allowed:
            events.emit(
                self.node.cfg.node,
                None,
                "signer_refused",
                f"{who}: {decision.why}",
                task_id=task_id,
                level=events.WARNING,
                uid=caller.uid,
                execution=caller.execution,
            )
            return {"ok": False, "error": f"the signer refused: {decision.why}"}
        signed = signer.sign(decision.body)
        events.emit(
            self.node.cfg.node,
            None,
            "signer_signed",
            f"{body.get('kind')} for {who} ({decision.why})",
            task_id=task_id,
            uid=caller.uid,
            execution=caller.execution,
        )
        return {"ok": True, "signed": signed}

    def handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(CLIENT_TIMEOUT_S)
            try:
                caller = identify(conn, self.node.state)
                request = recv_frame(conn)
                send_frame(conn, self.answer(caller, request))
            except (ProtocolError, OSError, ValueError) as exc:
                with contextlib.suppress(OSError, ProtocolError):
                    send_frame(conn, {"ok": False, "error": f"bad request: {exc}"})

    def serve(self, listener: socket.socket, idle_s: float, stop: threading.Event) -> None:
        """Answer until `stop`, or (idle_s > 0) until no one connected for idle_s seconds;
        systemd's socket keeps queueing connections meanwhile, and starts us again."""
        listener.settimeout(min(idle_s, 1.0) if idle_s > 0 else 1.0)
        idle = 0.0
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                idle += listener.gettimeout() or 1.0
                if idle_s > 0 and idle >= idle_s:
                    return
                continue
            idle = 0.0
            # A thread per caller: one that sends slowly cannot hold up the others.
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()


def activated_socket() -> socket.socket | None:
    """The listening socket systemd passed (dispatch-signer.socket), if any."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    if int(os.environ.get("LISTEN_FDS", "0")) < 1:
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    return socket.socket(fileno=SD_LISTEN_FDS_START)


def bind_socket(path: Path) -> socket.socket:
    """Our own socket (no systemd). World-connectable on purpose: the server checks every
    caller's credentials, and executions running as any user must reach it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            path.unlink()
        else:
            raise ConfigError(f"{path} exists and is not a socket")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o666)
    listener.listen(64)
    return listener


def run(node: Node, idle_s: float) -> None:
    server = SignerServer.load(node)
    listener = activated_socket()
    if listener is None:
        listener = bind_socket(node.cfg.signer_socket)
        idle_s = 0.0  # our own socket: nobody would start us again
    server.serve(listener, idle_s, threading.Event())


@contextlib.contextmanager
def serving_for_watch(node: Node) -> Iterator[None]:
    """`dispatch watch` (no systemd): the same signer as a thread of the loop, on a socket
    of its own, exported to the executions it starts, so that their agents, which cannot
    read the key, can sign child tasks. Its own socket, not DISPATCH_SIGNER_SOCKET: the
    executions it knows are the ones in this loop's state directory. Not in the state
    directory itself either, which is 0700: an agent running as another user must reach
    it. Nothing when this process cannot read the key either."""
    try:
        server = SignerServer.load(node)
    except ConfigError:
        yield
        return
    scratch = Path(tempfile.mkdtemp(prefix="dispatch-signer-"))
    scratch.chmod(0o755)
    path = scratch / "signer.sock"
    listener = bind_socket(path)
    stop = threading.Event()
    thread = threading.Thread(target=server.serve, args=(listener, 0.0, stop), daemon=True)
    thread.start()
    previous = os.environ.get("DISPATCH_SIGNER_SOCKET")
    os.environ["DISPATCH_SIGNER_SOCKET"] = str(path)
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        listener.close()
        with contextlib.suppress(OSError):
            path.unlink()
            scratch.rmdir()
        if previous is None:
            os.environ.pop("DISPATCH_SIGNER_SOCKET", None)
        else:
            os.environ["DISPATCH_SIGNER_SOCKET"] = previous
