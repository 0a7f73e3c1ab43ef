"""The fused gradient kernel: forward + backward of every module on one minibatch.

Uses `||s B h - r||^2 = s^2 h^T (B^T B) h - 2 s h.(B^T r) + ||r||^2`, so the `[batch, out]`
residual is never formed: four thin products (X A^T, R B, R^T (w H), G_h^T X) instead of five,
each over four examples x two to four rank rows per inner loop (`micro`). Arguments arrive in
the bundles of `workspace` (Modules, Scratch, Layout, State, Hyper).
"""

import numpy as np
from numba import njit, prange

from ruv_kernels.fastmath import FASTMATH
from ruv_kernels.train.micro import axpy1, axpy4, axpy4x2, dot1, dot4, dot4x2, dot4x4, rb_g1, rb_g4, rb_g4x2
from ruv_kernels.train.bundles import State
from ruv_kernels.train.optimizer import update_range


@njit(cache=True, fastmath=FASTMATH)
def row_terms(lo, hi, rows, q, coef, rsq, scale, sl, BtB, S):
    """The r x r work of rows lo..hi: u = B^T B h, the gradient w.r.t. h, the loss, S += w h h^T.

    `sl` = (H, RB, WH, U, GH), one thread's row scratch. Written as separate unit-stride loops
    over the rank so that each one vectorises.
    """
    H, RB, WH, U, GH = sl
    r = H.shape[1]
    s32 = np.float32(scale)
    loss = 0.0
    for i in range(lo, hi):
        hi_ = H[i]
        u = U[i]
        for t in range(r):
            u[t] = 0.0
        for v in range(r):
            hv = hi_[v]
            bv = BtB[v]
            for t in range(r):
                u[t] += hv * bv[t]
        hu = np.float32(0.0)
        hrb = np.float32(0.0)
        rb = RB[i]
        for t in range(r):
            hu += hi_[t] * u[t]
            hrb += hi_[t] * rb[t]
        w = q[rows[i]] * coef
        c = np.float32(2.0 * scale * w)
        gh = GH[i]
        for t in range(r):
            gh[t] = c * (s32 * u[t] - rb[t])
        loss += w * (scale * scale * hu - 2.0 * scale * hrb + rsq[rows[i]])
        wh = WH[i]
        for t in range(r):
            wt = wh[t]
            st = S[t]
            for v in range(r):
                st[v] += wt * hi_[v]
    return loss


@njit(cache=True, fastmath=FASTMATH)
def chunk_grads(mods, m, part, sl, rows, q, coef, scale, lo, hi):
    """Rows lo..hi of module m: partial gradients into its partial slot `part` (gA, gBt, S),
    using the row scratch `sl`; returns the loss sum."""
    X = mods.X[m]
    R = mods.R[m]
    rsq = mods.rsq[m]
    A = mods.A[m]
    Bt = mods.Bt[m]
    BtB = mods.BtB[m]
    gA = mods.gA[m][part]
    gB = mods.gBt[m][part]
    S = mods.S[m][part]
    H, RB, WH, U, GH = sl
    r = A.shape[0]
    gA[:, :] = 0.0
    gB[:, :] = 0.0
    S[:, :] = 0.0
    loss = 0.0
    i = lo
    while i + 4 <= hi:
        i0 = rows[i]
        i1 = rows[i + 1]
        i2 = rows[i + 2]
        i3 = rows[i + 3]
        x = (X[i0], X[i1], X[i2], X[i3])
        w0 = np.float32(q[i0] * coef)
        w1 = np.float32(q[i1] * coef)
        w2 = np.float32(q[i2] * coef)
        w3 = np.float32(q[i3] * coef)
        t = 0
        while t + 4 <= r:
            dot4x4(H, i, t, A, x)
            t += 4
        while t + 2 <= r:
            h0, h1, h2, h3, k0, k1, k2, k3 = dot4x2(A[t], A[t + 1], x)
            H[i, t] = h0
            H[i + 1, t] = h1
            H[i + 2, t] = h2
            H[i + 3, t] = h3
            H[i, t + 1] = k0
            H[i + 1, t + 1] = k1
            H[i + 2, t + 1] = k2
            H[i + 3, t + 1] = k3
            t += 2
        if t < r:
            h0, h1, h2, h3 = dot4(A[t], x)
            H[i, t] = h0
            H[i + 1, t] = h1
            H[i + 2, t] = h2
            H[i + 3, t] = h3
        for t in range(r):
            WH[i, t] = w0 * H[i, t]
            WH[i + 1, t] = w1 * H[i + 1, t]
            WH[i + 2, t] = w2 * H[i + 2, t]
            WH[i + 3, t] = w3 * H[i + 3, t]
        rr = (R[i0], R[i1], R[i2], R[i3])
        t = 0
        while t + 2 <= r:
            c0, c1, c2, c3, d0, d1, d2, d3 = rb_g4x2(
                Bt[t], Bt[t + 1], gB[t], gB[t + 1], rr,
                (WH[i, t], WH[i + 1, t], WH[i + 2, t], WH[i + 3, t]),
                (WH[i, t + 1], WH[i + 1, t + 1], WH[i + 2, t + 1], WH[i + 3, t + 1]))
            RB[i, t] = c0
            RB[i + 1, t] = c1
            RB[i + 2, t] = c2
            RB[i + 3, t] = c3
            RB[i, t + 1] = d0
            RB[i + 1, t + 1] = d1
            RB[i + 2, t + 1] = d2
            RB[i + 3, t + 1] = d3
            t += 2
        if t < r:
            c0, c1, c2, c3 = rb_g4(Bt[t], gB[t], rr, (WH[i, t], WH[i + 1, t], WH[i + 2, t], WH[i + 3, t]))
            RB[i, t] = c0
            RB[i + 1, t] = c1
            RB[i + 2, t] = c2
            RB[i + 3, t] = c3
        loss += row_terms(i, i + 4, rows, q, coef, rsq, scale, sl, BtB, S)
        t = 0
        while t + 2 <= r:
            axpy4x2(gA[t], gA[t + 1], (GH[i, t], GH[i + 1, t], GH[i + 2, t], GH[i + 3, t]),
                    (GH[i, t + 1], GH[i + 1, t + 1], GH[i + 2, t + 1], GH[i + 3, t + 1]), x)
            t += 2
        if t < r:
            axpy4(gA[t], (GH[i, t], GH[i + 1, t], GH[i + 2, t], GH[i + 3, t]), x)
        i += 4
    while i < hi:
        i0 = rows[i]
        x0 = X[i0]
        w0 = np.float32(q[i0] * coef)
        for t in range(r):
            h0 = dot1(A[t], x0)
            H[i, t] = h0
            WH[i, t] = w0 * h0
        r0 = R[i0]
        for t in range(r):
            RB[i, t] = rb_g1(Bt[t], gB[t], r0, WH[i, t])
        loss += row_terms(i, i + 1, rows, q, coef, rsq, scale, sl, BtB, S)
        for t in range(r):
            axpy1(gA[t], GH[i, t], x0)
        i += 1
    return loss


@njit(cache=True, fastmath=FASTMATH)
def reduce_row(mods, m, row, T, scale, lam):
    """Row `row` of module m's flat [A | B^T] gradient from its first T per-thread partials, plus
    its squared norm with the EWC term and its EWC penalty sum F (w - w*)^2.

    Whole-row passes (sum the partials, add s S B^T, scale, norm) so that each one vectorises.
    """
    gA_p = mods.gA[m]
    gBt_p = mods.gBt[m]
    Stot = mods.Stot[m]
    Bt = mods.Bt[m]
    Gm = mods.G[m]
    r, din = gA_p.shape[1], gA_p.shape[2]
    dout = Bt.shape[1]
    if row < r:
        t = row
        base = t * din
        width = din
        g = Gm[base:base + din]
        src = gA_p[0, t]
        for j in range(din):
            g[j] = src[j]
        for tid in range(1, T):
            src = gA_p[tid, t]
            for j in range(din):
                g[j] += src[j]
    else:
        t = row - r
        base = r * din + t * dout
        width = dout
        g = Gm[base:base + dout]
        two_s = np.float32(2.0 * scale)
        src = gBt_p[0, t]
        for o in range(dout):
            g[o] = -two_s * src[o]
        for tid in range(1, T):
            src = gBt_p[tid, t]
            for o in range(dout):
                g[o] -= two_s * src[o]
        for u in range(r):
            c = two_s * np.float32(scale) * Stot[t, u]
            bu = Bt[u]
            for o in range(dout):
                g[o] += c * bu[o]
    sq = np.float32(0.0)
    pen = np.float32(0.0)
    if lam > 0.0:
        lam32 = np.float32(lam)
        f = mods.F_anchor[m][base:base + width]
        w = mods.W[m][base:base + width]
        wa = mods.W_anchor[m][base:base + width]
        for j in range(width):
            dw = w[j] - wa[j]
            gt = g[j] + lam32 * f[j] * dw
            pen += f[j] * dw * dw
            sq += gt * gt
    else:
        for j in range(width):
            sq += g[j] * g[j]
    return np.float64(sq), np.float64(pen)


@njit(cache=True, fastmath=FASTMATH)
def bt_gram(Bt, BtB):
    """BtB = Bt Bt^T (r x r), each entry computed once and mirrored."""
    r = Bt.shape[0]
    for t in range(r):
        for v in range(t, r):
            d = dot1(Bt[t], Bt[v])
            BtB[t, v] = d
            BtB[v, t] = d


@njit(cache=True)
def sum_partials(mods, m, T):
    """Stot = sum of the first T partial S matrices of module m, in thread order (deterministic)."""
    Stot = mods.Stot[m]
    S_p = mods.S[m]
    r = Stot.shape[0]
    for t in range(r):
        for v in range(r):
            Stot[t, v] = S_p[0, t, v]
    for tid in range(1, T):
        for t in range(r):
            for v in range(r):
                Stot[t, v] += S_p[tid, t, v]


@njit(cache=True)
def _clear(loss_pm):
    for m in range(loss_pm.shape[0]):
        for tid in range(loss_pm.shape[1]):
            loss_pm[m, tid] = 0.0


@njit(cache=True)
def _totals(loss_pm, sq_rows, pen_rows, n_grad):
    loss = 0.0
    for m in range(loss_pm.shape[0]):
        for tid in range(loss_pm.shape[1]):
            loss += loss_pm[m, tid]
    sq = 0.0
    pen = 0.0
    for idx in range(n_grad):
        sq += sq_rows[idx]
        pen += pen_rows[idx]
    return loss, sq, pen


@njit(cache=True, fastmath=FASTMATH)
def owned_modules(mods, sl, loss_pm, sq_rows, pen_rows, state, hy, offsets, a_len, goff, owned, inv_out, scales, ratio,
                  rows, q, cscale, fuse, lr, step):
    """One thread's share of the by-module schedule: every row of each module in `owned` (loss,
    gradient, its squared norm and EWC penalty, with the thread's row scratch `sl`) and, with
    `fuse`, the module's optimiser step."""
    n = rows.shape[0]
    # int64 values, not the literals 0 / 1: a literal argument would compile the helpers again
    # for that constant (Numba types a literal call argument as Literal[int])
    zero = np.int64(0)
    one = np.int64(1)
    for m in owned:
        bt_gram(mods.Bt[m], mods.BtB[m])
        loss_pm[m, 0] = chunk_grads(mods, m, zero, sl, rows, q, cscale * inv_out[m], scales[m], zero, n)
        sum_partials(mods, m, one)
        g0 = goff[m]
        for row in range(goff[m + 1] - g0):
            sq, pen = reduce_row(mods, m, row, one, scales[m], hy.lam)
            sq_rows[g0 + row] = sq
            pen_rows[g0 + row] = pen
        if fuse:
            mid = offsets[m] + a_len[m]
            update_range(state, hy, offsets[m], mid, lr, 1.0, step)
            update_range(state, hy, mid, offsets[m + 1], lr * ratio, 1.0, step)


@njit(cache=True, parallel=True)
def grad_by_module(mods, scr, lay, st, hy, rows, q, cscale, fuse, lr, step):
    """By module (`lay.aoff` has T+1 entries): thread `tid` owns modules assign[aoff[tid]:aoff[tid+1]]
    and does all of their work over all rows (`owned_modules`): one fork-join per step and no
    partials to combine. With `fuse` (no global clipping to wait for) the thread also applies the
    optimiser step to its modules right away (learning rate `lr`, B's times the LoRA+ ratio), so
    a whole training step is one fork-join. The parallel loop's body is one call, so Numba's
    parallel lowering has little to analyse (inline, it cost 8-10 s of a cold start)."""
    # arrays enter a parallel region one by one, not inside a tuple (see `bundles`)
    H, RB, WH, U, GH, loss_pm, sq_rows, pen_rows = scr
    W, G, M1, M2, Fon, Fanc, Wanc = st
    offsets, a_len, goff, assign, aoff = lay.offsets, lay.a_len, lay.goff, lay.assign, lay.aoff
    inv_out, scales, ratio = lay.inv_out, lay.scales, lay.ratio
    _clear(loss_pm)
    for tid in prange(aoff.shape[0] - 1):
        owned_modules(mods, (H[tid], RB[tid], WH[tid], U[tid], GH[tid]), loss_pm, sq_rows, pen_rows,
                      State(W, G, M1, M2, Fon, Fanc, Wanc), hy, offsets, a_len, goff, assign[aoff[tid]:aoff[tid + 1]],
                      inv_out, scales, ratio, rows, q, cscale, fuse, lr, step)
    return _totals(loss_pm, sq_rows, pen_rows, goff[goff.shape[0] - 1])


@njit(cache=True, parallel=True, fastmath=FASTMATH)
def grad_by_rows(mods, scr, lay, st, hy, rows, q, cscale):
    """By rows: B^T B of every module; each thread runs every module on its share of the rows;
    the per-thread partials are combined row by row (three fork-joins). The optimiser step is
    left to the caller."""
    M = len(mods.X)
    n = rows.shape[0]
    H, RB, WH, U, GH, loss_pm, sq_rows, pen_rows = scr
    roff, goff = lay.roff, lay.goff
    inv_out, scales = lay.inv_out, lay.scales
    T = loss_pm.shape[1]
    lam = hy.lam
    _clear(loss_pm)
    n_rank = roff[M]
    for idx in prange(n_rank):  # phase 1: B^T B (r x r) of every module, a row per item
        m = 0
        while roff[m + 1] <= idx:
            m += 1
        t = idx - roff[m]
        Bt = mods.Bt[m]
        BtB = mods.BtB[m]
        for v in range(Bt.shape[0]):
            BtB[t, v] = dot1(Bt[t], Bt[v])
    chunk = (n + T - 1) // T
    for tid in prange(T):  # phase 2: per-thread partial gradients, every module
        part = np.int64(tid)  # a parallel loop's index may be unsigned: one signature for chunk_grads
        lo = part * chunk
        hi = min(n, lo + chunk)
        sl = (H[0], RB[0], WH[0], U[0], GH[0])  # rows lo..hi: disjoint
        for m in range(M):
            loss_pm[m, tid] = chunk_grads(mods, m, part, sl, rows, q, cscale * inv_out[m], scales[m], lo, hi)
    for m in range(M):
        sum_partials(mods, m, T)
    n_grad = goff[M]
    for idx in prange(n_grad):  # phase 3: reduce the partials, row by row over every module
        m = 0
        while goff[m + 1] <= idx:
            m += 1
        sq, pen = reduce_row(mods, m, idx - goff[m], T, scales[m], lam)
        sq_rows[idx] = sq
        pen_rows[idx] = pen
    return _totals(loss_pm, sq_rows, pen_rows, n_grad)
