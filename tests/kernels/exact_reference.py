"""Plain-numpy references for the exact-solver tests (dense, float64, no tricks)."""

import numpy as np


def problem(n, d, o, seed=0, rank_true=2, zero_every=0, noise=0.3):
    """A weighted low-rank regression problem: X [n, d], R [n, o] float32, q [n] float32."""
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((n, d)) * rng.uniform(0.5, 2.0, d)).astype(np.float32)
    W = rng.standard_normal((o, rank_true)) @ rng.standard_normal((rank_true, d)) / np.sqrt(d)
    R = (X @ W.T + noise * rng.standard_normal((n, o))).astype(np.float32)
    q = rng.uniform(0.1, 1.0, n).astype(np.float32)
    if zero_every:
        q[::zero_every] = 0.0
    return X, R, q


def stats(X, R, q):
    X = X.astype(np.float64)
    R = R.astype(np.float64)
    q = q.astype(np.float64)
    G = (X.T * q) @ X
    C = (X.T * q) @ R
    rr = float(np.sum(q * np.sum(R * R, axis=1)))
    return G, C, rr, float(q.sum()), int(np.count_nonzero(q > 0))


def weighted_loss(X, R, q, D):
    """sum_i q_i ||D x_i - r_i||^2 / (sum q * out), straight from the data."""
    E = X.astype(np.float64) @ np.asarray(D, np.float64).T - R.astype(np.float64)
    q = q.astype(np.float64)
    return float(np.sum(q * np.sum(E * E, axis=1)) / (q.sum() * R.shape[1]))


def ridge_lstsq(X, R, q, lam):
    """Full-rank ridge regression by lstsq on the augmented system; returns D [out, in]."""
    s = np.sqrt(q.astype(np.float64))[:, None]
    lam = np.broadcast_to(np.asarray(lam, np.float64), (X.shape[1],))
    Xa = np.vstack([s * X.astype(np.float64), np.diag(np.sqrt(lam))])
    Ra = np.vstack([s * R.astype(np.float64), np.zeros((X.shape[1], R.shape[1]))])
    W, *_ = np.linalg.lstsq(Xa, Ra, rcond=None)
    return W.T


def objective(G, C, rr, lam, D):
    """tr(D (G + diag lam) D^T) - 2 tr(D C) + rr."""
    H = G + np.diag(np.broadcast_to(np.asarray(lam, np.float64), (G.shape[0],)))
    return float(np.sum((D @ H) * D) - 2.0 * np.sum(D * C.T) + rr)


def reduced_rank_eigh(G, C, lam, r):
    """The textbook formula: M = (G + Lambda)^-1 C, D^T = M V V^T with V the top-r eigenvectors of C^T M."""
    H = G + np.diag(np.broadcast_to(np.asarray(lam, np.float64), (G.shape[0],)))
    M = np.linalg.solve(H, C)
    S = C.T @ M
    w, V = np.linalg.eigh((S + S.T) / 2)
    V = V[:, np.argsort(w)[::-1][:r]]
    return (M @ V @ V.T).T
