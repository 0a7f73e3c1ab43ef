"""The optimiser step over the flat parameters, fused with the online Fisher, the EWC penalty
gradient and the gradient clip: AdamW (decoupled decay) / Adam (L2 in the gradient) / SGD
(optional momentum), with torch.optim's semantics.

`st` is the State bundle (W, G, M1, M2, Fon, Fanc, Wanc), `hy` the Hyper bundle (optimiser
code and scalars); see `workspace`.
"""

import math

import numpy as np
from numba import njit, prange

from ruv_kernels.fastmath import FASTMATH_APPROX
from ruv_kernels.train.bundles import State


@njit(cache=True, fastmath=FASTMATH_APPROX)
def update_range(st, hy, start, end, lr, clip, step):
    """The optimiser step for parameters start..end (one learning rate).

    Done in L1-sized blocks by a few short loops that touch at most three arrays each: a loop over
    six arrays needs more runtime alias checks than the compiler allows and would not vectorise.
    """
    b1, b2, decay, lam, opt = hy.b1, hy.b2, hy.decay, hy.lam, hy.opt
    bc1 = np.float32(1.0 - b1 ** step)
    rbc2 = np.float32(1.0 / math.sqrt(1.0 - b2 ** step))
    f_keep = np.float32(decay)
    f_new = np.float32(1.0 - decay)
    lam32 = np.float32(lam)
    c32 = np.float32(clip)
    b1f = np.float32(b1)
    b1c = np.float32(1.0 - b1)
    b2f = np.float32(b2)
    b2c = np.float32(1.0 - b2)
    eps32 = np.float32(hy.eps)
    wd32 = np.float32(hy.wd)
    mom = np.float32(hy.momentum)
    lrp = np.float32(lr)
    step_a = lrp / bc1
    decay_w = np.float32(1.0) - lrp * wd32
    for lo in range(start, end, 1024):
        hi = min(end, lo + 1024)
        g = st.G[lo:hi]
        w = st.W[lo:hi]
        f = st.Fon[lo:hi]
        m1 = st.M1[lo:hi]
        m2 = st.M2[lo:hi]
        nb = hi - lo
        for p in range(nb):  # online Fisher from the data gradient
            f[p] = f_keep * f[p] + f_new * g[p] * g[p]
        if lam > 0.0:  # + EWC penalty gradient
            fa = st.Fanc[lo:hi]
            wa = st.Wanc[lo:hi]
            for p in range(nb):
                g[p] += lam32 * fa[p] * (w[p] - wa[p])
        if clip != 1.0:
            for p in range(nb):
                g[p] *= c32
        if opt == 0:  # AdamW: decoupled weight decay
            for p in range(nb):
                m1[p] = b1f * m1[p] + b1c * g[p]
            for p in range(nb):
                m2[p] = b2f * m2[p] + b2c * g[p] * g[p]
            for p in range(nb):
                w[p] = w[p] * decay_w - step_a * m1[p] / (math.sqrt(m2[p]) * rbc2 + eps32)
        elif opt == 1:  # Adam: L2 term in the gradient
            for p in range(nb):
                g[p] += wd32 * w[p]
            for p in range(nb):
                m1[p] = b1f * m1[p] + b1c * g[p]
            for p in range(nb):
                m2[p] = b2f * m2[p] + b2c * g[p] * g[p]
            for p in range(nb):
                w[p] = w[p] - step_a * m1[p] / (math.sqrt(m2[p]) * rbc2 + eps32)
        else:  # SGD, optional momentum (torch: buf = mu * buf + g, first buf = g)
            for p in range(nb):
                g[p] += wd32 * w[p]
            if mom > 0.0:
                if step == 1:
                    for p in range(nb):
                        m1[p] = g[p]
                else:
                    for p in range(nb):
                        m1[p] = mom * m1[p] + g[p]
                for p in range(nb):
                    w[p] -= lrp * m1[p]
            else:
                for p in range(nb):
                    w[p] -= lrp * g[p]


@njit(cache=True, parallel=True, fastmath=FASTMATH_APPROX)
def update(st, hy, chunks, clip, lr, step):
    """One optimiser step over every parameter, in the chunks (lo, hi, learning-rate multiplier:
    1 for A, the LoRA+ ratio for B) of `chunks`."""
    W, G, M1, M2, Fon, Fanc, Wanc = st  # arrays enter a parallel region one by one, not in a tuple
    c_lo, c_hi, c_mult = chunks
    for c in prange(c_lo.shape[0]):
        update_range(State(W, G, M1, M2, Fon, Fanc, Wanc), hy, c_lo[c], c_hi[c], lr * c_mult[c], clip, step)
