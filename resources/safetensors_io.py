"""Deterministic safetensors files: the same tensors and metadata always give the same bytes.

`safetensors` writes the header's `__metadata__` in hash-map order, which differs between
processes; content addressing (data version = sha256 of the files) needs byte-identical output.
The header is re-serialised with sorted keys; tensor data and offsets are unchanged.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np
from safetensors.numpy import save


def save_file_deterministic(tensors: dict[str, np.ndarray], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    data = save(tensors, metadata=metadata)
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to an 8-byte boundary
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(text)))
        handle.write(text)
        handle.write(memoryview(data)[8 + length :])
