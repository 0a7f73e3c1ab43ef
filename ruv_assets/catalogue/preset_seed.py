"""Stable seeds derived from names (Python's hash() changes between processes)."""

from ruv_kernels.hashing import name_crc32


def stable_seed(name: str) -> int:
    return name_crc32(name)
