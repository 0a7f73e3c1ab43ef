"""Stable seeds derived from names (Python's hash() changes between processes)."""

import zlib


def stable_seed(name: str) -> int:
    return zlib.crc32(name.encode())
