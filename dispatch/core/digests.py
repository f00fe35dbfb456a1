"""SHA-256 of what dispatch hashes (task files, public keys: at most 1 MiB), without
OpenSSL. `import hashlib` loads libcrypto first (11 M instructions, ~4 ms), which every
promote pass and every execution paid for a digest or two; CPython's own implementation is
built in and costs nothing to load. Where a build has none (Fedora's Python leaves it out
for FIPS), hashlib it is."""

from __future__ import annotations

from typing import Protocol


class _Hash(Protocol):
    def digest(self) -> bytes: ...

    def hexdigest(self) -> str: ...


def _sha256(data: bytes) -> _Hash:
    try:
        import _sha256  # type: ignore[import-not-found]  # no stubs: typed by _Hash
    except ImportError:
        import hashlib

        return hashlib.sha256(data)
    hashed: _Hash = _sha256.sha256(data)
    return hashed


def sha256_hex(data: bytes) -> str:
    return _sha256(data).hexdigest()


def sha256_digest(data: bytes) -> bytes:
    return _sha256(data).digest()
