"""What schema 4's signatures cost a send: Ed25519 signing and verifying (pins read from
disk, as every verification does) beside the schema-3 HMAC they replace, beside a whole
in-process send (build, sign, deliver into the inbox), the one-time import of the
`cryptography` library a fresh process pays, and what every send and result really pays
since the signer holds the key: a round trip to `dispatch signer` on its Unix socket, warm,
and cold (the first request after its idle exit, which starts the signer as
dispatch-signer.socket does: the listening socket handed over as fd 3, the request queued
in it meanwhile; systemd's own unit start is not in it).

    python -m bench.signing [-n 2000]

Prints medians in microseconds; nothing here asserts a time."""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dispatch.core.config import Config
from dispatch.core.keys import Pins, write_private
from dispatch.core.lanedirs import make_layout
from dispatch.core.node import Node
from dispatch.core.signing import NodeKeys, verify_envelope
from dispatch.core.spool import Spool
from dispatch.core.wire import canonical
from dispatch.send import task as sender
from dispatch.signer.client import SocketSigner


def median_us(call: Callable[[], object], n: int) -> float:
    samples = []
    for _ in range(n):
        began = time.perf_counter()
        call()
        samples.append(time.perf_counter() - began)
    return statistics.median(samples) * 1e6


def first_use_ms(key_dir: Path, runs: int = 9) -> float:
    """What a fresh process that signs pays once, beyond the modules every command loads:
    importing Ed25519 from the library, reading the key, the first signature."""
    code = (
        "import time, sys; from pathlib import Path; "
        "import dispatch.core.node, dispatch.send.task; t = time.perf_counter(); "
        "from dispatch.core.keys import load_private; "
        f"k = load_private(Path({str(key_dir)!r}), 'devbox'); k.sign(b'x'); k.public.kid; "
        "print(time.perf_counter() - t)"
    )
    times = [
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)
        for _ in range(runs)
    ]
    return statistics.median(times) * 1e3


def signer_env(home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DISPATCH_CONFIG": "/dev/null",
        "DISPATCH_ROOT": str(home / "share"),
        "DISPATCH_NODE": "devbox",
        "DISPATCH_PEERS": "gpubox",
        "DISPATCH_KEY_DIR": str(home / "devbox" / "keys"),
        "DISPATCH_PEERS_DIR": str(home / "devbox" / "peers"),
        "DISPATCH_STATE_DIR": str(home / "devbox" / "state"),
    }


def start_signer(home: Path, path: Path) -> tuple[subprocess.Popen[bytes], socket.socket]:
    """`dispatch signer` as socket activation starts it: it inherits the listening socket
    as fd 3 with LISTEN_PID set to its own pid (sh's $$, kept by exec)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path.unlink(missing_ok=True)
    listener.bind(str(path))
    listener.listen(16)
    fd = listener.fileno()
    proc = subprocess.Popen(
        [
            "sh",
            "-c",
            f'exec 3<&{fd}; LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" -m dispatch signer --idle 60',
            sys.executable,
        ],
        env=signer_env(home),
        pass_fds=(fd,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, listener


def signer_round_trips(
    home: Path, body: dict[str, Any], n: int, cold_runs: int = 7
) -> tuple[float, float]:
    """(warm median µs, cold median ms): one request per connection, as every caller makes."""
    path = home / "signer.sock"
    colds = []
    for _ in range(cold_runs):
        began = time.perf_counter()
        proc, listener = start_signer(home, path)
        try:
            SocketSigner(path, "devbox").sign(body)
            colds.append(time.perf_counter() - began)
        finally:
            proc.terminate()
            proc.wait(10)
            listener.close()
    proc, listener = start_signer(home, path)
    try:
        client = SocketSigner(path, "devbox")
        client.sign(body)
        warm = median_us(lambda: client.sign(body), n)
    finally:
        proc.terminate()
        proc.wait(10)
        listener.close()
    return warm, statistics.median(colds) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=2000)
    n = parser.parse_args().n
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        for node in ("devbox", "gpubox"):
            public = write_private(home / node / "keys", node).public
            for other in ("devbox", "gpubox"):
                Pins(home / other / "peers").add(public, "bench")
        root = home / "share"

        def cfg(node: str, peer: str) -> Config:
            return Config(
                root=root,
                node=node,
                peers=(peer,),
                key_dir=home / node / "keys",
                state_dir=home / node / "state",
            )

        make_layout(Spool(root), cfg("devbox", "gpubox"))

        tx = Node(cfg("devbox", "gpubox"))
        rx = NodeKeys(cfg("gpubox", "devbox"))
        envelope = sender.build(tx, to="gpubox", request="run the suite and report")
        wire = envelope.to_json()
        body = envelope.body()
        secret = b"0123456789abcdef" * 4

        def hmac_sign_verify() -> None:
            mac = hmac.new(secret, canonical(body), hashlib.sha256).hexdigest()
            hmac.compare_digest(mac, hmac.new(secret, canonical(body), hashlib.sha256).hexdigest())

        def send_whole() -> None:
            sender.deliver(tx, sender.build(tx, to="gpubox", request="run the suite"))

        figures = {
            "ed25519 sign (canonical JSON + signature)": median_us(
                lambda: tx.keys.signer.sign(body), n
            ),
            "ed25519 verify (parse, pin file read, signature)": median_us(
                lambda: verify_envelope(rx, wire), n
            ),
            "hmac-sha256 sign + verify (schema 3)": median_us(hmac_sign_verify, n),
            "whole send in-process (build, sign, deliver)": median_us(send_whole, max(n // 4, 50)),
        }
        first = first_use_ms(home / "devbox" / "keys")
        warm, cold = signer_round_trips(home, body, max(n // 4, 50))
    figures["signature from dispatch signer, warm (socket round trip)"] = warm
    for name, value in figures.items():
        print(f"{name:58} {value:9.1f} us")
    print(f"{'first signature in a fresh process (import, key)':58} {first * 1000:9.1f} us")
    print(f"{'signature from dispatch signer, cold (its start included)':58} {cold * 1000:9.1f} us")


if __name__ == "__main__":
    main()
