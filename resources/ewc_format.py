"""The EWC state file beside a trained adapter: the online Fisher of every module, read back as
the anchor of the next training run (EWC++).

`training_state.safetensors`: tensors `fisher_A.<module key>` [r, in] and `fisher_B.<module key>`
[out, r] (float32), metadata `format: ruv-ewc`. A module without an entry (or a version without
the file) has a zero Fisher: no penalty on it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from ruv_kernels.train import EwcState
from ruv_resources.safetensors_io import save_file_deterministic

STATE_NAME = "training_state.safetensors"


def save_ewc_state(directory: Path, fisher: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    """Write the per-module Fisher (FA, FB) into `directory` (byte-identical for equal input)."""
    tensors = {f"fisher_A.{k}": np.ascontiguousarray(v[0], np.float32) for k, v in fisher.items()}
    tensors.update({f"fisher_B.{k}": np.ascontiguousarray(v[1], np.float32) for k, v in fisher.items()})
    path = Path(directory) / STATE_NAME
    save_file_deterministic(tensors, path, metadata={"format": "ruv-ewc"})
    return path


def load_ewc_state(directory: Path, A: dict[str, np.ndarray], B: dict[str, np.ndarray]) -> EwcState:
    """The EWC anchor of the version in `directory`: its weights A/B (given) and the stored Fisher."""
    path = Path(directory) / STATE_NAME
    fisher = load_file(str(path)) if path.is_file() else {}
    return EwcState(
        A={k: A[k].copy() for k in A},
        B={k: B[k].copy() for k in B},
        fisher={k: (fisher.get(f"fisher_A.{k}", np.zeros_like(A[k])), fisher.get(f"fisher_B.{k}", np.zeros_like(B[k])))
                for k in A},
    )
