"""The step loop: an epoch's minibatches, each a gradient step, the global clip and the optimiser
step, all inside Numba without returning to Python. One loop for both storage dtypes: float32
rows are read in place; float16 (or mixed) storage is gathered and converted per minibatch into
float32 buffers (`gather_rows`, exact: a 65536-entry table) that the Modules bundle points at.
With input dropout every storage is gathered and `drop_inputs` masks the copies of X.
"""

import math

import numpy as np
from numba import njit

from ruv_kernels.hashing import mix64
from ruv_kernels.train.gradients import grad_by_module, grad_by_rows
from ruv_kernels.train.optimizer import update

MASK64 = 0xFFFFFFFFFFFFFFFF

# float16 bit pattern -> float32 value, for every pattern (exact)
HALF_TO_FLOAT = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)


@njit(cache=True)
def qsum(q, rows):
    acc = 0.0
    for i in range(rows.shape[0]):
        acc += q[rows[i]]
    return acc


@njit(cache=True)
def shuffle(idx, key):
    """In-place seeded Fisher-Yates shuffle (own RNG: bit-stable across numpy versions)."""
    for i in range(idx.shape[0] - 1, 0, -1):
        j = np.int64(mix64(key + np.uint64(i) * np.uint64(0x9E3779B97F4A7C15)) % np.uint64(i + 1))
        t = idx[i]
        idx[i] = idx[j]
        idx[j] = t


def epoch_key(seed: int, epoch: int) -> np.uint64:
    """The shuffle key of one epoch of a run with this seed."""
    return np.uint64(mix64(np.uint64((seed * 1000003 + epoch) & MASK64)))


@njit(cache=True)
def gather_rows(ga, rows, q):
    """Rows `rows` of every gathered source into the first rows of its float32 buffer (float16
    through the exact table), their target norms and qualities likewise."""
    nb = rows.shape[0]
    lut = ga.lut
    for s in range(len(ga.half_src)):
        src = ga.half_src[s]
        dst = ga.half_dst[s]
        for i in range(nb):
            a = src[rows[i]]
            b = dst[i]
            for j in range(a.shape[0]):
                b[j] = lut[a[j]]
    for s in range(len(ga.float_src)):
        src = ga.float_src[s]
        dst = ga.float_dst[s]
        for i in range(nb):
            a = src[rows[i]]
            b = dst[i]
            for j in range(a.shape[0]):
                b[j] = a[j]
    for s in range(len(ga.rsq_src)):
        src = ga.rsq_src[s]
        dst = ga.rsq_dst[s]
        for i in range(nb):
            dst[i] = src[rows[i]]
    for i in range(nb):
        ga.q[i] = q[rows[i]]


@njit(cache=True)
def drop_inputs(ga, nb, step):
    """Inverted input dropout on the gathered minibatch: each entry of every X buffer's first nb
    rows is zeroed with probability p, else scaled by 1/(1-p). The mask is a counter-based hash of
    (key, step, buffer, row, column): reproducible, independent of the thread count."""
    p = ga.drop_p
    keep = np.float32(1.0 / (1.0 - p))
    threshold = np.uint64(min(p, 1.0) * 18446744073709551615.0)
    base = ga.drop_key ^ mix64(np.uint64(step) * np.uint64(0x9E3779B97F4A7C15))
    for s in range(len(ga.drop_x)):
        buf = ga.drop_x[s]
        d = buf.shape[1]
        key = mix64(base + np.uint64(s) * np.uint64(0xC2B2AE3D27D4EB4F))
        for i in range(nb):
            row = buf[i]
            rk = key + np.uint64(i) * np.uint64(d)
            for j in range(d):
                if mix64(rk + np.uint64(j)) < threshold:
                    row[j] = 0.0
                else:
                    row[j] *= keep


@njit(cache=True)
def run_steps(mods, scr, lay, st, hy, ga, order, b_from, b_to, bs, q, lrs, step0, by_rows):
    """Minibatches b_from..b_to of an epoch (rows order[b*bs:(b+1)*bs]).

    `ga` is the Gather bundle: with `ga.on` each minibatch is first gathered into the buffers
    that `mods` reads (rows 0..nb); else `mods` reads the training arrays in place. The optimiser
    step is fused into the gradient kernel when the modules are split by thread and there is no
    global clip to wait for. `by_rows` picks the gradient schedule (`Workspace.by_rows`: None splits the
    modules over the threads, `grad_by_module`; the rank-row offsets split the rows, `grad_by_rows`);
    only the one a run takes is compiled, since each schedule's parallel lowering costs seconds of a
    cold start. Returns (step, sum of minibatch losses, minibatches run, last EWC
    penalty, last lr, status); status 1 = the loss or the gradient stopped being finite.
    """
    M = len(mods.X)
    lam = hy.lam
    max_norm = hy.max_norm
    fuse = lay.aoff.shape[0] > 0 and max_norm <= 0.0
    n_keep = order.shape[0]
    step = step0
    loss_sum = 0.0
    count = 0
    pen_last = 0.0
    lr = 0.0
    for b in range(b_from, b_to):
        lo = b * bs
        hi = min(n_keep, lo + bs)
        rows = order[lo:hi]
        qb = qsum(q, rows)
        lr = lrs[step]
        step += 1
        if qb <= 0.0:
            continue
        use_rows = rows
        use_q = q
        if ga.on:
            gather_rows(ga, rows, q)
            if ga.drop_p > 0.0:
                drop_inputs(ga, hi - lo, step)
            use_rows = ga.local[: hi - lo]
            use_q = ga.q
        cscale = 1.0 / (M * qb)
        # Numba prunes the branch the argument's type rules out: a run compiles one schedule
        if by_rows is None:
            loss, sq, pen = grad_by_module(mods, scr, lay, st, hy, use_rows, use_q, cscale, fuse, lr, step)
        else:
            loss, sq, pen = grad_by_rows(mods, scr, lay, st, hy, use_rows, use_q, cscale)
        if not (math.isfinite(loss) and math.isfinite(sq)):
            return step, loss_sum, count, pen_last, lr, 1
        if not fuse:
            clip = 1.0
            if max_norm > 0.0:
                clip = min(1.0, max_norm / (math.sqrt(sq) + 1e-6))
            update(st, hy, lay.chunks, clip, lr, step)
        loss_sum += loss
        count += 1
        pen_last = 0.5 * lam * pen
    return step, loss_sum, count, pen_last, lr, 0
