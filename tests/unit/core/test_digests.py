"""SHA-256 without OpenSSL: the same digests as hashlib's, whatever the bytes."""

from __future__ import annotations

import hashlib
import subprocess
import sys

from hypothesis import given
from hypothesis import strategies as st

from dispatch.core.digests import sha256_digest, sha256_hex


@given(st.binary(max_size=4096))
def test_the_digest_is_hashlibs(data: bytes) -> None:
    assert sha256_hex(data) == hashlib.sha256(data).hexdigest()
    assert sha256_digest(data) == hashlib.sha256(data).digest()


def test_a_megabyte_task_file_hashes_alike() -> None:
    data = bytes(range(256)) * 4096
    assert sha256_hex(data) == hashlib.sha256(data).hexdigest()


def test_hashing_loads_no_openssl() -> None:
    code = (
        "import sys; from dispatch.core.digests import sha256_hex; sha256_hex(b'x'); "
        "print('_hashlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # CPython as Debian builds it has the built-in module; a build without it uses hashlib.
    builtin = "_sha256" in sys.builtin_module_names
    assert out.stdout.strip() == str(not builtin)
