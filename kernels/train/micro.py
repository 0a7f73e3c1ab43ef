"""Unrolled micro-kernels of the gradient kernel: dot products and updates over four examples
and one, two or four rank rows at once, so that every loaded vector serves several FMAs (the
loops are load-bound otherwise).

Four examples travel as a tuple `x = (x0, x1, x2, x3)` of rows (and their weights as a tuple of
four scalars): the tuples have a compile-time length, so each entry stays in a register. They
are inlined into their caller by Numba (`inline="always"`); the deliberate repetition between
the 1-, 2- and 4-row forms is the unrolling.
"""

import numpy as np
from numba import njit

from ruv_kernels.fastmath import FASTMATH


@njit(cache=True, fastmath=FASTMATH)
def dot4(a, x):
    """(a . x0, a . x1, a . x2, a . x3)."""
    x0, x1, x2, x3 = x
    s0 = np.float32(0.0)
    s1 = np.float32(0.0)
    s2 = np.float32(0.0)
    s3 = np.float32(0.0)
    for j in range(a.shape[0]):
        aj = a[j]
        s0 += aj * x0[j]
        s1 += aj * x1[j]
        s2 += aj * x2[j]
        s3 += aj * x3[j]
    return s0, s1, s2, s3


@njit(cache=True, fastmath=FASTMATH)
def dot1(a, x0):
    s0 = np.float32(0.0)
    for j in range(a.shape[0]):
        s0 += a[j] * x0[j]
    return s0


@njit(cache=True, fastmath=FASTMATH)
def rb_g4(bt, g, r, w):
    """c_b = bt . r_b (the B^T r entries) and g += sum_b w_b r_b, in one pass over the outputs."""
    r0, r1, r2, r3 = r
    w0, w1, w2, w3 = w
    c0 = np.float32(0.0)
    c1 = np.float32(0.0)
    c2 = np.float32(0.0)
    c3 = np.float32(0.0)
    for o in range(bt.shape[0]):
        b = bt[o]
        v0 = r0[o]
        v1 = r1[o]
        v2 = r2[o]
        v3 = r3[o]
        c0 += b * v0
        c1 += b * v1
        c2 += b * v2
        c3 += b * v3
        g[o] += w0 * v0 + w1 * v1 + w2 * v2 + w3 * v3
    return c0, c1, c2, c3


@njit(cache=True, fastmath=FASTMATH)
def rb_g1(bt, g, r0, w0):
    c0 = np.float32(0.0)
    for o in range(bt.shape[0]):
        v0 = r0[o]
        c0 += bt[o] * v0
        g[o] += w0 * v0
    return c0


@njit(cache=True, fastmath=FASTMATH)
def axpy4(g, c, x):
    """g += sum_b c_b x_b."""
    c0, c1, c2, c3 = c
    x0, x1, x2, x3 = x
    for j in range(g.shape[0]):
        g[j] += c0 * x0[j] + c1 * x1[j] + c2 * x2[j] + c3 * x3[j]


@njit(cache=True, fastmath=FASTMATH)
def axpy1(g, c0, x0):
    for j in range(g.shape[0]):
        g[j] += c0 * x0[j]


@njit(cache=True, fastmath=FASTMATH)
def dot4x2(a, b, x):
    """Eight dot products (two rank rows x four examples) sharing every load."""
    x0, x1, x2, x3 = x
    s0 = np.float32(0.0)
    s1 = np.float32(0.0)
    s2 = np.float32(0.0)
    s3 = np.float32(0.0)
    t0 = np.float32(0.0)
    t1 = np.float32(0.0)
    t2 = np.float32(0.0)
    t3 = np.float32(0.0)
    for j in range(a.shape[0]):
        aj = a[j]
        bj = b[j]
        v0 = x0[j]
        v1 = x1[j]
        v2 = x2[j]
        v3 = x3[j]
        s0 += aj * v0
        s1 += aj * v1
        s2 += aj * v2
        s3 += aj * v3
        t0 += bj * v0
        t1 += bj * v1
        t2 += bj * v2
        t3 += bj * v3
    return s0, s1, s2, s3, t0, t1, t2, t3


@njit(cache=True, fastmath=FASTMATH)
def dot4x4(H, i, t, A, x):
    """H[i:i+4, t:t+4] = rank rows A[t:t+4] . four examples: 16 dot products sharing every load."""
    a0 = A[t]
    a1 = A[t + 1]
    a2 = A[t + 2]
    a3 = A[t + 3]
    x0, x1, x2, x3 = x
    s00 = s01 = s02 = s03 = np.float32(0.0)
    s10 = s11 = s12 = s13 = np.float32(0.0)
    s20 = s21 = s22 = s23 = np.float32(0.0)
    s30 = s31 = s32 = s33 = np.float32(0.0)
    for j in range(a0.shape[0]):
        v0 = x0[j]
        v1 = x1[j]
        v2 = x2[j]
        v3 = x3[j]
        a = a0[j]
        b = a1[j]
        c = a2[j]
        d = a3[j]
        s00 += a * v0
        s01 += a * v1
        s02 += a * v2
        s03 += a * v3
        s10 += b * v0
        s11 += b * v1
        s12 += b * v2
        s13 += b * v3
        s20 += c * v0
        s21 += c * v1
        s22 += c * v2
        s23 += c * v3
        s30 += d * v0
        s31 += d * v1
        s32 += d * v2
        s33 += d * v3
    H[i, t] = s00
    H[i + 1, t] = s01
    H[i + 2, t] = s02
    H[i + 3, t] = s03
    H[i, t + 1] = s10
    H[i + 1, t + 1] = s11
    H[i + 2, t + 1] = s12
    H[i + 3, t + 1] = s13
    H[i, t + 2] = s20
    H[i + 1, t + 2] = s21
    H[i + 2, t + 2] = s22
    H[i + 3, t + 2] = s23
    H[i, t + 3] = s30
    H[i + 1, t + 3] = s31
    H[i + 2, t + 3] = s32
    H[i + 3, t + 3] = s33


@njit(cache=True, fastmath=FASTMATH)
def rb_g4x2(ba, bb, ga, gb, r, wa, wb):
    """rb_g4 for two rank rows at once."""
    r0, r1, r2, r3 = r
    wa0, wa1, wa2, wa3 = wa
    wb0, wb1, wb2, wb3 = wb
    c0 = np.float32(0.0)
    c1 = np.float32(0.0)
    c2 = np.float32(0.0)
    c3 = np.float32(0.0)
    d0 = np.float32(0.0)
    d1 = np.float32(0.0)
    d2 = np.float32(0.0)
    d3 = np.float32(0.0)
    for o in range(ba.shape[0]):
        a = ba[o]
        b = bb[o]
        v0 = r0[o]
        v1 = r1[o]
        v2 = r2[o]
        v3 = r3[o]
        c0 += a * v0
        c1 += a * v1
        c2 += a * v2
        c3 += a * v3
        d0 += b * v0
        d1 += b * v1
        d2 += b * v2
        d3 += b * v3
        ga[o] += wa0 * v0 + wa1 * v1 + wa2 * v2 + wa3 * v3
        gb[o] += wb0 * v0 + wb1 * v1 + wb2 * v2 + wb3 * v3
    return c0, c1, c2, c3, d0, d1, d2, d3


@njit(cache=True, fastmath=FASTMATH)
def axpy4x2(ga, gb, ca, cb, x):
    """axpy4 for two rank rows at once."""
    a0, a1, a2, a3 = ca
    b0, b1, b2, b3 = cb
    x0, x1, x2, x3 = x
    for j in range(ga.shape[0]):
        v0 = x0[j]
        v1 = x1[j]
        v2 = x2[j]
        v3 = x3[j]
        ga[j] += a0 * v0 + a1 * v1 + a2 * v2 + a3 * v3
        gb[j] += b0 * v0 + b1 * v1 + b2 * v2 + b3 * v3
