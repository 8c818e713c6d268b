"""File digests: sha256 of a file read in large blocks, and git's blob id of a small file's bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

# Large reads keep the per-call overhead negligible; hashlib releases the GIL while it hashes a
# buffer this size, so several files hash in parallel on several cores.
READ_BLOCK_BYTES = 8 * 1024 * 1024


def sha256_file(path: Path, on_bytes: Callable[[int], None] | None = None) -> str:
    """Hex sha256 of the file, opened read-only; `on_bytes(n)` is called after each block."""
    digest = hashlib.sha256()
    buffer = bytearray(READ_BLOCK_BYTES)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as stream:
        while True:
            n = stream.readinto(buffer)
            if not n:
                break
            digest.update(view[:n])
            if on_bytes is not None:
                on_bytes(n)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_blob_sha1(data: bytes) -> str:
    """The object id git (and the Hub, for files not in LFS) gives these bytes."""
    header = f"blob {len(data)}\0".encode()
    return hashlib.sha1(header + data, usedforsecurity=False).hexdigest()
