"""Low-rank algebra: norms and inner products of B @ A without the product, and the two ways a
merged module becomes LoRA factors again.

- Linear methods: the merged delta sum_i c_i s_i B_i A_i is exactly B_cat @ A_cat; a smaller
  rank is reached by a truncated SVD of that product from QR of the two factors and an SVD of
  the small core (`compress_lowrank`): the dense delta is never formed.
- Dense methods: the dense merged delta is truncated to its best rank-k approximation through
  LAPACK's eigensolver on its Gram matrix (`truncate_dense`).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg


def lowrank_norm(a: np.ndarray, b: np.ndarray) -> float:
    """||B @ A||_F from the two r x r Gram matrices (no dense product)."""
    if a.shape[0] == 0:
        return 0.0
    a64 = a.astype(np.float64)
    b64 = b.astype(np.float64)
    sq = float(np.sum((b64.T @ b64) * (a64 @ a64.T)))
    return math.sqrt(max(sq, 0.0))


def lowrank_inner(a1, b1, a2, b2) -> float:
    """<B1 A1, B2 A2>_F = sum((B1^T B2) * (A1 A2^T)), without forming either product."""
    a1 = a1.astype(np.float64)
    a2 = a2.astype(np.float64)
    b1 = b1.astype(np.float64)
    b2 = b2.astype(np.float64)
    return float(np.sum((b1.T @ b2) * (a1 @ a2.T)))


def compress_lowrank(a_cat: np.ndarray, b_cat: np.ndarray, k: int):
    """Best rank-k approximation of B_cat @ A_cat via QR of both factors + SVD of the core.

    Returns (A_k [k', in] f32, B_k [out, k'] f32, residual norm, full norm) with k' <= k; the
    singular values are split as sqrt into both factors so they stay balanced.
    """
    qb, rb = np.linalg.qr(b_cat.astype(np.float64))  # out x m, m x R
    qa, ra = np.linalg.qr(a_cat.T.astype(np.float64))  # in x m', m' x R
    core = rb @ ra.T
    u, s, vt = np.linalg.svd(core, full_matrices=False)
    kk = min(k, s.size)
    root = np.sqrt(s[:kk])
    b_k = (qb @ (u[:, :kk] * root)).astype(np.float32)
    a_k = ((root[:, None] * vt[:kk]) @ qa.T).astype(np.float32)
    full = float(np.sqrt(np.sum(s * s)))
    resid = float(np.sqrt(np.sum(s[kk:] * s[kk:])))
    return a_k, b_k, resid, full


def truncate_dense(d: np.ndarray, k: int):
    """Best rank-k factors of a dense [out, in] delta (exact when k >= min(out, in)).

    The top-k singular subspace comes from LAPACK's symmetric eigensolver (syevr, top k pairs
    only) on the float64 Gram matrix of the smaller side, several times faster than a full SVD
    of the delta; the result is the projection of the delta onto it, so the residual is exact:
    ||D - D V V^T||^2 = ||D||^2 - ||D V||^2. Singular values are split as sqrt into both factors.
    Returns (A [k', in] f32, B [out, k'] f32, residual norm, full norm).
    """
    out_f, in_f = d.shape
    d64 = np.asarray(d, dtype=np.float64)
    full2 = float(np.einsum("ij,ij->", d64, d64))
    if full2 == 0.0:
        return np.zeros((0, in_f), np.float32), np.zeros((out_f, 0), np.float32), 0.0, 0.0
    full = math.sqrt(full2)
    if k >= min(out_f, in_f):
        # Full rank fits: factor trivially instead of decomposing.
        if out_f <= in_f:
            return d.astype(np.float32, copy=True), np.eye(out_f, dtype=np.float32), 0.0, full
        return np.eye(in_f, dtype=np.float32), d.astype(np.float32, copy=True), 0.0, full
    transpose = out_f < in_f  # work on the side with the smaller Gram matrix
    m = d64.T if transpose else d64  # [big, small]
    small = m.shape[1]
    # only the top k eigenpairs (LAPACK syevr), ascending
    _, vecs = scipy.linalg.eigh(m.T @ m, subset_by_index=[small - k, small - 1], driver="evr")
    v = np.ascontiguousarray(vecs[:, ::-1])  # [small, k], orthonormal, largest first
    mv = m @ v  # [big, k]: columns are U_k * S_k
    s = np.sqrt(np.einsum("ij,ij->j", mv, mv))
    kept2 = float(np.sum(s * s))
    root = np.sqrt(s)
    inv = np.divide(1.0, root, out=np.zeros_like(root), where=root > 0)
    left = (mv * inv).astype(np.float32)  # U_k sqrt(S)
    right = (root[:, None] * v.T).astype(np.float32)  # sqrt(S) V_k^T
    resid = math.sqrt(max(full2 - kept2, 0.0))
    if transpose:  # d = m.T ~ (left right).T = right.T left.T
        return np.ascontiguousarray(left.T), np.ascontiguousarray(right.T), resid, full
    return right, left, resid, full
