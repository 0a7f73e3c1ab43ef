"""Counter-based randomness shared by the kernels: the splitmix64 finaliser, in Numba and in Python.

Streams keyed this way are bit-identical whatever the thread count or numpy version, which is
why synthetic data, training shuffles, quality draws and DARE masks use it instead of np.random.
"""

import zlib

import numpy as np
from numba import njit

from ruv_kernels.finite import all_finite  # noqa: F401  (kept importable here for kernels.adapter)

MASK64 = 0xFFFFFFFFFFFFFFFF
GOLDEN = 0x9E3779B97F4A7C15  # 2**64 / golden ratio: the splitmix64 increment


@njit(cache=True, inline="always")
def mix64(z):
    """splitmix64 finaliser: a bijective 64-bit hash (uint64 in, uint64 out)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def mix64_py(z: int) -> int:
    """The same finaliser on Python ints (for deriving stream keys outside kernels)."""
    z &= MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def name_hash(name: str) -> int:
    """FNV-1a 64 of a name's UTF-8 bytes: the same on every run and machine (unlike `hash()`).
    Synthetic task streams derive from it."""
    h = 0xCBF29CE484222325
    for b in name.encode("utf-8"):
        h = ((h ^ b) * 0x100000001B3) & MASK64
    return h


def name_crc32(name: str) -> int:
    """CRC-32 of a name's UTF-8 bytes: the 32-bit name hash that preset seeds, adapter
    initialisation and DARE stream keys derive from (kept so that stored artefacts keep their
    data versions; `name_hash` is the 64-bit one)."""
    return zlib.crc32(name.encode("utf-8"))
