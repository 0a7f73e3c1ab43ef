"""The fast-math flags every kernel uses, defined once.

LLVM may reassociate sums (so reductions vectorise), contract multiply-adds into FMAs, use
reciprocals and ignore the sign of zero. Never "nnan"/"ninf" (which `fastmath=True` implies): a
NaN in the data must still come out as NaN, so that the finiteness checks catch it.
"""

FASTMATH = {"reassoc", "contract", "arcp", "nsz"}  # a set: Numba takes set or dict, not frozenset
# The optimiser's sqrt and divide may also use the fast approximate forms.
FASTMATH_APPROX = FASTMATH | {"afn"}
