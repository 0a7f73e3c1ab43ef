"""The one finiteness check: no NaN and no infinity, for float16/32/64 arrays of any shape."""

import numpy as np
from numba import njit


@njit(cache=True)
def all_finite(flat):
    """True when no value of a 1-D array is NaN or infinite (stops at the first bad one)."""
    for i in range(flat.shape[0]):
        v = flat[i]
        if not (v == v and abs(v) < np.inf):
            return False
    return True


def is_finite(arr) -> bool:
    """True when every value of `arr` is finite; non-float arrays always are. float16 is checked
    on its bits (an all-ones exponent is inf or NaN), without converting."""
    a = np.ascontiguousarray(arr).reshape(-1)
    if a.dtype == np.float16:
        return not bool(np.any((a.view(np.uint16) & 0x7C00) == 0x7C00))
    if a.dtype.kind != "f":
        return True
    return bool(all_finite(a))
