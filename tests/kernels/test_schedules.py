"""Learning-rate schedules against an independent plain-Python reference."""

import math

import numpy as np
import pytest

from ruv_kernels.schedules import SCHEDULES, lr_at, lr_table


def reference(name, step, total, base, warmup, min_lr_ratio=0.0, gamma=None, step_size=0,
              pct_start=0.3, div_factor=25.0, final_div_factor=1e4):
    """The schedules written out the long way, one formula per branch."""
    w = min(warmup, total)
    if gamma is None:
        gamma = 0.01 if name == "exponential" else 0.1
    if step_size == 0:
        step_size = max(1, (total - w) // 3)

    def plain(t):
        p = (t - w) / max(1, total - w)
        if name == "constant":
            return base
        if name == "linear":
            return base * min_lr_ratio + base * (1 - min_lr_ratio) * (1 - p)
        if name == "cosine":
            return base * min_lr_ratio + base * (1 - min_lr_ratio) * (1 + math.cos(math.pi * p)) / 2
        if name == "exponential":
            return base * math.exp(p * math.log(gamma))
        if name == "step":
            drops = (t - w) // step_size
            return base * gamma ** drops
        if name == "one_cycle":
            start = base / div_factor
            end = start / final_div_factor
            if p < pct_start:
                return start + (base - start) * (1 - math.cos(math.pi * p / pct_start)) / 2
            return end + (base - end) * (1 + math.cos(math.pi * (p - pct_start) / (1 - pct_start))) / 2
        raise AssertionError(name)

    if step < w:
        return plain(w) * (step + 1) / (w + 1)
    return plain(step)


CASES = [
    (100, 0, {}),
    (100, 10, {}),
    (37, 5, {"min_lr_ratio": 0.1}),
    (250, 0, {"gamma": 0.5, "step_size": 40}),
    (60, 59, {}),
    (1, 0, {}),
    (5, 20, {}),
    (80, 8, {"pct_start": 0.25, "div_factor": 10.0, "final_div_factor": 100.0}),
]


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("total,warmup,params", CASES)
def test_lr_at_and_table_match_reference(name, total, warmup, params):
    base = 3e-3
    table = lr_table(name, total, base, warmup, **params)
    assert table.shape == (total,)
    for t in range(total):
        ref = reference(name, t, total, base, warmup, **params)
        assert lr_at(name, t, total, base, warmup, **params) == pytest.approx(ref, rel=1e-12, abs=1e-18)
        assert table[t] == pytest.approx(ref, rel=1e-12, abs=1e-18)


def test_schedules_are_defined_over_the_run_not_a_fixed_horizon():
    short = lr_table("cosine", 10, 1.0)
    long = lr_table("cosine", 1000, 1.0)
    # both runs go from the peak to near zero over their own length
    assert short[0] == pytest.approx(1.0) and long[0] == pytest.approx(1.0)
    assert short[-1] < 0.05 and long[-1] < 1e-4
    assert lr_table("linear", 4, 1.0).tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25])


def test_warmup_ramps_linearly_to_the_schedule():
    t = lr_table("constant", 50, 0.1, warmup_steps=9)
    assert np.allclose(t[:9], 0.1 * np.arange(1, 10) / 10)
    assert np.all(t[9:] == 0.1)
    assert np.all(np.diff(t[:10]) > 0)


def test_step_and_exponential_decay_shape():
    st = lr_table("step", 90, 1.0, gamma=0.5, step_size=30)
    assert set(np.round(st, 12)) == {1.0, 0.5, 0.25}
    ex = lr_table("exponential", 101, 1.0, gamma=0.01)
    assert ex[0] == pytest.approx(1.0) and ex[-1] == pytest.approx(0.01 ** (100 / 101))
    assert np.all(np.diff(ex) < 0)


def test_one_cycle_rises_then_falls():
    oc = lr_table("one_cycle", 100, 1.0)
    peak = int(np.argmax(oc))
    assert oc[0] == pytest.approx(1 / 25)
    assert 25 <= peak <= 35
    assert np.all(np.diff(oc[: peak + 1]) >= 0) and np.all(np.diff(oc[peak:]) <= 0)


def test_aliases_and_errors():
    assert lr_at("one-cycle", 0, 10, 1.0) == lr_at("one_cycle", 0, 10, 1.0)
    with pytest.raises(ValueError, match="schedule.*'warmup_cosine'"):
        lr_at("warmup_cosine", 0, 10, 1.0)
    with pytest.raises(ValueError, match="schedule.*'nope'"):
        lr_table("nope", 10, 1.0)
    with pytest.raises(ValueError, match="total_steps"):
        lr_table("cosine", 0, 1.0)
    with pytest.raises(ValueError, match="learning_rate"):
        lr_table("cosine", 10, -1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        lr_table("cosine", 10, 1.0, warmup_steps=-1)
    with pytest.raises(ValueError, match="gamma"):
        lr_table("step", 10, 1.0, gamma=0.0)
    with pytest.raises(ValueError, match="unknown parameter"):
        lr_table("step", 10, 1.0, decay=0.5)
