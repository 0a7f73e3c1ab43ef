"""The named bundles the kernels take (Numba compiles attribute access on them to a field load).

- `Modules`: per-module typed lists, indexed by module m: inputs X, targets R, their squared row
  norms rsq, the views A / Bt (= B^T) / W / G into the flat parameters and gradients, the
  per-thread partials gA / gBt / S, the combined Stot, B^T B, and the EWC anchor views.
- `Scratch`: per-thread row scratch H, RB, WH, U, GH ([T, rows, r_max]) and the reduction slots.
- `Layout`: how modules sit in the flat vectors (offsets, A lengths, rank and gradient-row
  offsets), the thread schedule (assign, aoff), 1/out and the scale per module, the LoRA+ ratio,
  and the optimiser's `Chunks`.
- `State`: the flat parameters W, gradient G, moments M1/M2, online Fisher Fon, EWC anchor
  Fisher Fanc and weights Wanc (zeros and unread when there is no anchor: lam = 0).
- `Hyper`: the optimiser code and its scalars.
- `Gather`: the float16 / mixed-storage path's sources and float32 buffers (`on` False: none),
  and the input dropout (p, key, the X buffers it masks; with p > 0 every storage is gathered).

Numba passes a tuple holding arrays into a parallel region only field by field: parallel kernels
unpack State/Scratch/Layout before their `prange` loops (Modules holds lists, Hyper scalars:
those pass whole).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba.typed import List

from ruv_kernels.train.settings import OPT_CODE, TrainSettings


class Modules(NamedTuple):
    X: List
    R: List
    rsq: List
    A: List
    Bt: List
    BtB: List
    gA: List
    gBt: List
    S: List
    Stot: List
    W: List
    G: List
    F_anchor: List
    W_anchor: List


class Scratch(NamedTuple):
    H: np.ndarray
    RB: np.ndarray
    WH: np.ndarray
    U: np.ndarray
    GH: np.ndarray
    loss_pm: np.ndarray
    sq_rows: np.ndarray
    pen_rows: np.ndarray


class Chunks(NamedTuple):
    lo: np.ndarray
    hi: np.ndarray
    mult: np.ndarray


class Layout(NamedTuple):
    offsets: np.ndarray
    a_len: np.ndarray
    roff: np.ndarray
    goff: np.ndarray
    assign: np.ndarray
    aoff: np.ndarray
    inv_out: np.ndarray
    scales: np.ndarray
    ratio: float
    chunks: Chunks


class State(NamedTuple):
    W: np.ndarray
    G: np.ndarray
    M1: np.ndarray
    M2: np.ndarray
    Fon: np.ndarray
    Fanc: np.ndarray
    Wanc: np.ndarray


class Hyper(NamedTuple):
    opt: int
    b1: float
    b2: float
    eps: float
    wd: float
    momentum: float
    decay: float
    lam: float
    max_norm: float

    @classmethod
    def of(cls, settings: TrainSettings, lam: float) -> "Hyper":
        b1, b2 = (float(b) for b in settings.betas)
        return cls(OPT_CODE[settings.optimizer], b1, b2, float(settings.eps), float(settings.weight_decay),
                   float(settings.momentum), float(settings.fisher_decay), float(lam), float(settings.max_grad_norm))


class Gather(NamedTuple):
    on: bool
    half_src: List
    half_dst: List
    float_src: List
    float_dst: List
    rsq_src: List
    rsq_dst: List
    q: np.ndarray
    local: np.ndarray
    lut: np.ndarray
    drop_p: float
    drop_key: np.uint64
    drop_x: List


def typed_list(items, item_type=None) -> List:
    out = List.empty_list(item_type) if item_type is not None else List()
    for it in items:
        out.append(it)
    return out
