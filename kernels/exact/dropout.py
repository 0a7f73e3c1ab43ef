"""Input dropout's expected-value equivalent for the closed-form solver.

Inverted dropout on the LoRA input (as PEFT applies it): x~_j = m_j x_j / (1 - p), m_j ~
Bernoulli(1 - p). Then E[x~ x~^T] = x x^T + p / (1 - p) diag(x_j^2), so the expected weighted
loss of D over masks is the loss on the clean data plus tr(D diag(lam) D^T) with
lam = p / (1 - p) * diag(G): a ridge that penalises each input in proportion to its own energy.
"""

from __future__ import annotations

import numpy as np

from ruv_kernels.exact.errors import ExactSolveError


def dropout_ridge(G: np.ndarray, p: float, *, name: str = "module") -> np.ndarray:
    """The diagonal ridge [in] = p / (1 - p) * diag(G) equivalent to input dropout p (0 <= p < 1)."""
    p = float(p)
    if not np.isfinite(p) or p < 0 or p >= 1:
        raise ExactSolveError(name, f"dropout p must be in [0, 1), got {p}")
    diag = np.array(np.diag(G), np.float64)
    if not np.all(np.isfinite(diag)):
        raise ExactSolveError(name, "NaN or infinity in the statistics (Gram G)")
    return (p / (1.0 - p)) * diag
