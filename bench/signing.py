"""What schema 4's signatures cost a send: Ed25519 signing and verifying (pins read from
disk, as every verification does) beside the schema-3 HMAC they replace, beside a whole
in-process send (build, sign, deliver into the inbox), and the one-time import of the
`cryptography` library a fresh `dispatch send` process pays.

    python -m bench.signing [-n 2000]

Prints medians in microseconds; nothing here asserts a time."""

from __future__ import annotations

import argparse
import hashlib
import hmac
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from dispatch.core.config import Config
from dispatch.core.keys import Pins, write_private
from dispatch.core.node import Node
from dispatch.core.signing import NodeKeys, verify_envelope
from dispatch.core.spool import Spool
from dispatch.core.wire import canonical
from dispatch.send import task as sender


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

        Spool(root).ensure(cfg("devbox", "gpubox"))

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
    for name, value in figures.items():
        print(f"{name:52} {value:9.1f} us")
    print(f"{'first signature in a fresh process (import, key)':52} {first * 1000:9.1f} us")


if __name__ == "__main__":
    main()
