"""The EWC state file beside a trained adapter: the online Fisher of every module, read back as
the anchor of the next training run (EWC++).

`training_state.safetensors`: tensors `fisher_A.<module key>` [r, in] and `fisher_B.<module key>`
[out, r] (float32), metadata `format: ruv-ewc`. A module without an entry (or a version without
the file) has a zero Fisher: no penalty on it.

`training_gram.safetensors` (beside it): the checkpoint's training Grams, the exact Fisher that
`consolidation: exact` penalises against when the next version is trained.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import safe_open
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


# The old task's exact Fisher for `consolidation: exact`: each distinct training Gram of the
# checkpoint (one per input a layer's modules share), its examples' total quality, and which
# Gram each module reads. float32 on disk (a penalty's curvature needs no more digits).
GRAM_NAME = "training_gram.safetensors"


def save_gram_state(directory: Path, stats: dict) -> Path:
    """Write the training Grams of `stats` ({module key: ModuleStats, LayerStats views sharing
    one G per input}) beside a checkpoint; each shared Gram is written once."""
    tensors, readers, seen = {}, {}, {}
    for key, st in stats.items():
        gk = getattr(st, "gram_key", None) or key
        if gk not in seen:
            seen[gk] = True
            tensors[f"G.{gk}"] = np.ascontiguousarray(st.G, np.float32)
            tensors[f"q_sum.{gk}"] = np.array([st.q_sum], np.float64)
        readers[key] = gk
    path = Path(directory) / GRAM_NAME
    save_file_deterministic(tensors, path, metadata={"format": "ruv-gram", "readers": json.dumps(readers, sort_keys=True)})
    return path


def load_gram_state(directory: Path) -> dict[str, tuple[np.ndarray, float]] | None:
    """{module key: (G float64 [in, in], q_sum)} of the checkpoint in `directory` (modules sharing
    a Gram share the array), or None when the version has no stored Gram (older versions)."""
    path = Path(directory) / GRAM_NAME
    if not path.is_file():
        return None
    with safe_open(str(path), "numpy") as f:
        readers = json.loads((f.metadata() or {}).get("readers", "{}"))
        grams = {gk: (np.array(f.get_tensor(f"G.{gk}"), np.float64), float(f.get_tensor(f"q_sum.{gk}")[0]))
                 for gk in set(readers.values())}
    return {key: grams[gk] for key, gk in readers.items()}
