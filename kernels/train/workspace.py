"""Every buffer a training run needs, allocated once, and the bundles (`bundles`) over them."""

from __future__ import annotations

import numba
import numpy as np
from numba import types

from ruv_kernels.hashing import mix64_py
from ruv_kernels.train.bundles import Chunks, Gather, Layout, Modules, Scratch, State, typed_list
from ruv_kernels.train.steps import HALF_TO_FLOAT


def scale_of(scale, key: str) -> float:
    if isinstance(scale, dict):
        if key not in scale:
            raise ValueError(f"{key}: no scale given for this module")
        return float(scale[key])
    return float(scale)


def chunks_of(keys, shapes, offsets, ratio: float, chunk: int = 8192) -> Chunks:
    """Update chunks of the flat parameters, each inside one A or one B^T block, with that block's
    learning-rate multiplier (LoRA+: B's is `ratio`)."""
    lo_, hi_, mult = [], [], []
    for k, key in enumerate(keys):
        r, din, _ = shapes[key]
        start, mid, end = int(offsets[k]), int(offsets[k]) + r * din, int(offsets[k + 1])
        for a, b, m in ((start, mid, 1.0), (mid, end, float(ratio))):
            for c in range(a, b, chunk):
                lo_.append(c)
                hi_.append(min(b, c + chunk))
                mult.append(m)
    return Chunks(np.array(lo_, np.int64), np.array(hi_, np.int64), np.array(mult, np.float64))


class Workspace:
    """Flat parameters and optimiser state, per-module per-thread partial gradients, row scratch,
    evaluation scratch and float16 conversion buffers, for the given problems."""

    def __init__(self, problems, A, B, scale, batch_rows: int, val_rows: int, loraplus_ratio: float = 1.0):
        self.T = max(1, numba.get_num_threads())
        self.keys = [p.key for p in problems]
        self.M = len(problems)
        self.shapes = {}
        sizes = []
        for p in problems:
            r, din = np.shape(A[p.key])
            dout = np.shape(B[p.key])[0]
            self.shapes[p.key] = (r, din, dout)
            sizes.append(r * (din + dout))
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        P = int(self.offsets[-1])
        self.W = np.empty(P, np.float32)
        self.G = np.zeros(P, np.float32)
        self.M1 = np.zeros(P, np.float32)
        self.M2 = np.zeros(P, np.float32)
        self.Fon = np.zeros(P, np.float32)
        self.Fanc = np.zeros(P, np.float32)
        self.Wanc = np.zeros(P, np.float32)
        self.scales = {p.key: scale_of(scale, p.key) for p in problems}
        self.views = {}
        for k, p in enumerate(problems):
            r, din, dout = self.shapes[p.key]
            lo, hi = int(self.offsets[k]), int(self.offsets[k + 1])
            Wm = self.W[lo:hi]
            Am = Wm[: r * din].reshape(r, din)
            Btm = Wm[r * din:].reshape(r, dout)
            Am[...] = np.asarray(A[p.key], np.float32)
            Btm[...] = np.asarray(B[p.key], np.float32).T
            self.views[p.key] = (lo, hi, Wm, self.G[lo:hi], Am, Btm)
        r_max = max(r for r, _, _ in self.shapes.values())
        rows_max = max(batch_rows, 1)
        self.rows_max = rows_max
        slab = (self.T, rows_max, r_max)  # row scratch, one slab per thread
        rs = [self.shapes[k][0] for k in self.keys]
        goff = np.concatenate([[0], np.cumsum([2 * r for r in rs])]).astype(np.int64)
        self.scratch = Scratch(np.empty(slab, np.float32), np.empty(slab, np.float32), np.empty(slab, np.float32),
                               np.empty(slab, np.float32), np.empty(slab, np.float32),
                               np.empty((self.M, self.T), np.float64), np.empty(int(goff[-1]), np.float64),
                               np.empty(int(goff[-1]), np.float64))
        assign, aoff = self._schedule()
        self.layout = Layout(
            offsets=self.offsets,
            a_len=np.array([self.shapes[k][0] * self.shapes[k][1] for k in self.keys], np.int64),
            roff=np.concatenate([[0], np.cumsum(rs)]).astype(np.int64), goff=goff, assign=assign, aoff=aoff,
            inv_out=np.array([1.0 / self.shapes[k][2] for k in self.keys], np.float64),
            scales=np.array([self.scales[k] for k in self.keys], np.float64), ratio=float(loraplus_ratio),
            chunks=chunks_of(self.keys, self.shapes, self.offsets, loraplus_ratio))
        # the gradient schedule: None splits the work by module, the rank-row offsets split it by rows
        self.by_rows = None if aoff.size else self.layout.roff
        self.state = State(self.W, self.G, self.M1, self.M2, self.Fon, self.Fanc, self.Wanc)
        # per-module partials (combined after every module ran)
        self.partials = {k: (np.empty((self.T, r, din), np.float32), np.empty((self.T, r, dout), np.float32),
                             np.empty((self.T, r, r), np.float32), np.empty((r, r), np.float32),
                             np.empty((r, r), np.float32)) for k, (r, din, dout) in self.shapes.items()}
        # evaluation scratch
        self.Hs = np.empty((self.T, r_max), np.float32)
        self.Es = np.empty((self.T, max(d for _, _, d in self.shapes.values())), np.float32)
        self.loss_p = np.empty(self.T, np.float64)
        self.conv_rows = max(batch_rows, val_rows, 1)
        self.conv = {}

    def _schedule(self):
        """Split the modules over the threads (longest first onto the least loaded thread); use the
        by-module schedule when the split is within 15% of perfect, else split rows."""
        if self.T == 1 or self.M < self.T:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        cost = [self.shapes[k][0] * (self.shapes[k][1] + self.shapes[k][2]) for k in self.keys]
        loads = [0] * self.T
        owned = [[] for _ in range(self.T)]
        for m in sorted(range(self.M), key=lambda i: -cost[i]):
            t = loads.index(min(loads))
            loads[t] += cost[m]
            owned[t].append(m)
        if max(loads) > 1.15 * sum(loads) / self.T:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        assign = np.array([m for o in owned for m in sorted(o)], np.int64)
        aoff = np.concatenate([[0], np.cumsum([len(o) for o in owned])]).astype(np.int64)
        return assign, aoff

    def set_anchor(self, key: str, FA, FB, WA, WB) -> None:
        """The EWC anchor (Fisher and weights) of one module, in the flat [A | B^T] layout."""
        k = self.keys.index(key)
        r, din, _ = self.shapes[key]
        lo, hi = int(self.offsets[k]), int(self.offsets[k + 1])
        self.Fanc[lo:lo + r * din] = np.asarray(FA, np.float32).reshape(-1)
        self.Fanc[lo + r * din:hi] = np.asarray(FB, np.float32).T.reshape(-1)
        self.Wanc[lo:lo + r * din] = np.asarray(WA, np.float32).reshape(-1)
        self.Wanc[lo + r * din:hi] = np.asarray(WB, np.float32).T.reshape(-1)

    def modules(self, Xs, Rs, rsqs) -> Modules:
        """The Modules bundle over these per-module inputs, targets and target norms."""
        views = [self.views[k] for k in self.keys]
        part = [self.partials[k] for k in self.keys]
        return Modules(typed_list(Xs), typed_list(Rs), typed_list(rsqs),
                       typed_list([v[4] for v in views]), typed_list([v[5] for v in views]),
                       typed_list([p[4] for p in part]), typed_list([p[0] for p in part]),
                       typed_list([p[1] for p in part]), typed_list([p[2] for p in part]),
                       typed_list([p[3] for p in part]), typed_list([v[2] for v in views]),
                       typed_list([v[3] for v in views]), typed_list([self.Fanc[v[0]:v[1]] for v in views]),
                       typed_list([self.Wanc[v[0]:v[1]] for v in views]))

    def gather(self, problems, rsq: dict, dropout: float = 0.0, seed: int = 0) -> tuple[Modules, Gather]:
        """What the step loop reads for these training arrays: the arrays themselves (float32
        storage: rows read in place, `Gather.on` False), or float32 buffers that each minibatch is
        gathered and converted into (any float16 array, or input dropout: the mask is applied to
        the gathered copy, never to the dataset)."""
        n = self.rows_max
        half2, f2, f1 = types.uint16[:, ::1], types.float32[:, ::1], types.float64[::1]
        half = any(p.X_train.dtype == np.float16 or p.R_train.dtype == np.float16 for p in problems)
        q = np.empty(n, np.float32)
        local = np.arange(n, dtype=np.int64)
        key = np.uint64(mix64_py((int(seed) * 0x9E3779B97F4A7C15 + 0xD5) & 0xFFFFFFFFFFFFFFFF))
        if not half and dropout <= 0.0:
            mods = self.modules([p.X_train for p in problems], [p.R_train for p in problems],
                                [rsq[id(p.R_train)] for p in problems])
            empty = (typed_list([], half2), typed_list([], f2), typed_list([], f2), typed_list([], f2),
                     typed_list([], f1), typed_list([], f1))
            return mods, Gather(False, *empty, q, local, HALF_TO_FLOAT, 0.0, key, typed_list([], f2))
        buffers: dict[int, np.ndarray] = {}
        srcs = {np.float16: ([], []), np.float32: ([], [])}
        for p in problems:
            for arr in (p.X_train, p.R_train):
                if id(arr) not in buffers:
                    buffers[id(arr)] = np.empty((n, arr.shape[1]), np.float32)
                    src, dst = srcs[arr.dtype.type]
                    src.append(arr.view(np.uint16) if arr.dtype == np.float16 else arr)
                    dst.append(buffers[id(arr)])
        rsq_dst = {k: np.empty(n, np.float64) for k in rsq}
        mods = self.modules([buffers[id(p.X_train)] for p in problems], [buffers[id(p.R_train)] for p in problems],
                            [rsq_dst[id(p.R_train)] for p in problems])
        ga = Gather(True, typed_list(srcs[np.float16][0], half2), typed_list(srcs[np.float16][1], f2),
                    typed_list(srcs[np.float32][0], f2), typed_list(srcs[np.float32][1], f2),
                    typed_list(list(rsq.values()), f1), typed_list([rsq_dst[k] for k in rsq], f1), q, local,
                    HALF_TO_FLOAT, float(dropout), key, typed_list(list({id(p.X_train): buffers[id(p.X_train)]
                                                                        for p in problems}.values()), f2))
        return mods, ga

    def f32_rows(self, arr: np.ndarray, rows: np.ndarray, tag) -> np.ndarray:
        """Gather `rows` of `arr` into the first rows of a preallocated float32 buffer (float16 is
        converted); returns the whole buffer. Used by evaluation."""
        if tag not in self.conv:
            half = np.empty((self.conv_rows, arr.shape[1]), np.float16) if arr.dtype == np.float16 else None
            self.conv[tag] = (half, np.empty((self.conv_rows, arr.shape[1]), np.float32))
        half, buf = self.conv[tag]
        n = rows.shape[0]
        if half is not None:
            np.take(arr, rows, axis=0, out=half[:n])
            np.copyto(buf[:n], half[:n])
        else:
            np.take(arr, rows, axis=0, out=buf[:n])
        return buf
