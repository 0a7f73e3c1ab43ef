"""Learning-rate schedules with a linear warmup, defined over the run's own total number of steps.

(The original defined them over a hard-coded 10,000 steps whatever the run's length.)

For step `t` in `[0, total_steps)` and `W = min(warmup_steps, total_steps)`:

- warmup (t < W): `lr = peak * (t + 1) / (W + 1)`, where `peak` is the schedule's value at the
  end of warmup (the first step already moves; warmup ends just below the peak);
- afterwards, with progress `p = (t - W) / max(1, total_steps - W)` in `[0, 1)`:
  - constant:    `base`
  - linear:      `base * (m + (1 - m) * (1 - p))`                    (m = min_lr_ratio)
  - cosine:      `base * (m + (1 - m) * 0.5 * (1 + cos(pi * p)))`
  - exponential: `base * gamma ** p`     (gamma = the total decay factor over the run)
  - step:        `base * gamma ** floor((t - W) / step_size)`      (step_size 0 = a third of the run)
  - one_cycle:   torch's OneCycleLR shape: cosine from `base / div_factor` up to `base` over
                 the first `pct_start` of the run, then cosine down to
                 `base / (div_factor * final_div_factor)`.

`lr_at` is the plain-Python definition; `lr_table` fills the whole run at once (Numba, float64) and
matches it to rounding.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

SCHEDULES = ("constant", "linear", "cosine", "exponential", "step", "one_cycle")
_CODES = {name: i for i, name in enumerate(SCHEDULES)}
_ALIASES = {"onecycle": "one_cycle", "one-cycle": "one_cycle", "exp": "exponential"}

DEFAULT_PARAMS = {
    "min_lr_ratio": 0.0,
    "gamma": None,  # exponential: 0.01 over the run; step: 0.1 per drop
    "step_size": 0,
    "pct_start": 0.3,
    "div_factor": 25.0,
    "final_div_factor": 1e4,
}


def schedule_name(schedule: str) -> str:
    """Canonical name of a schedule; ValueError naming it if unknown."""
    name = _ALIASES.get(str(schedule).lower(), str(schedule).lower())
    if name not in _CODES:
        raise ValueError(f"schedule: unknown schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")
    return name


def resolve_schedule(schedule: str, total_steps: int, base_lr: float, warmup_steps: int, params: dict):
    """Check a schedule and its parameters; return (name, warmup, step size, parameters with
    defaults filled in). Raises ValueError naming the bad parameter."""
    name = schedule_name(schedule)
    unknown = set(params) - set(DEFAULT_PARAMS)
    if unknown:
        raise ValueError(f"schedule: unknown parameter(s) {sorted(unknown)}; expected {sorted(DEFAULT_PARAMS)}")
    p = {k: params.get(k, v) for k, v in DEFAULT_PARAMS.items()}
    if p["gamma"] is None:
        p["gamma"] = 0.01 if name == "exponential" else 0.1
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not (base_lr >= 0.0 and math.isfinite(base_lr)):
        raise ValueError(f"learning_rate must be a finite number >= 0, got {base_lr}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if not 0.0 <= p["min_lr_ratio"] <= 1.0:
        raise ValueError(f"min_lr_ratio must lie in [0, 1], got {p['min_lr_ratio']}")
    if not 0.0 < p["gamma"] <= 1.0:
        raise ValueError(f"gamma must lie in (0, 1], got {p['gamma']}")
    if p["step_size"] < 0:
        raise ValueError(f"step_size must be >= 0, got {p['step_size']}")
    if not 0.0 < p["pct_start"] < 1.0:
        raise ValueError(f"pct_start must lie in (0, 1), got {p['pct_start']}")
    if p["div_factor"] <= 0 or p["final_div_factor"] <= 0:
        raise ValueError("div_factor and final_div_factor must be > 0")
    w = min(int(warmup_steps), int(total_steps))
    step_size = int(p["step_size"]) or max(1, (int(total_steps) - w) // 3)
    return name, w, step_size, p


def _after_warmup(name: str, t: int, total: int, w: int, base: float, step_size: int, p: dict) -> float:
    prog = (t - w) / max(1, total - w)
    m = p["min_lr_ratio"]
    if name == "constant":
        return base
    if name == "linear":
        return base * (m + (1.0 - m) * (1.0 - prog))
    if name == "cosine":
        return base * (m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * prog)))
    if name == "exponential":
        return base * p["gamma"] ** prog
    if name == "step":
        return base * p["gamma"] ** ((t - w) // step_size)
    # one_cycle
    lo = base / p["div_factor"]
    end = lo / p["final_div_factor"]
    ps = p["pct_start"]
    if prog < ps:
        f = prog / ps
        return lo + (base - lo) * 0.5 * (1.0 - math.cos(math.pi * f))
    f = (prog - ps) / (1.0 - ps)
    return end + (base - end) * 0.5 * (1.0 + math.cos(math.pi * f))


def lr_at(schedule: str, step: int, total_steps: int, base_lr: float, warmup_steps: int = 0, **params) -> float:
    """Learning rate at 0-based `step` of a run of `total_steps` (see the module docstring)."""
    name, w, step_size, p = resolve_schedule(schedule, total_steps, base_lr, warmup_steps, params)
    t = min(max(int(step), 0), int(total_steps) - 1)
    if t < w:
        peak = _after_warmup(name, w, total_steps, w, base_lr, step_size, p)
        return peak * (t + 1) / (w + 1)
    return _after_warmup(name, t, total_steps, w, base_lr, step_size, p)


@njit(cache=True)
def _table(code, total, w, base, m, gamma, step_size, pct, div, final_div):
    out = np.empty(total, np.float64)
    span = max(1, total - w)
    lo = base / div
    end = lo / final_div
    for t in range(total):
        tt = max(t, w)
        prog = (tt - w) / span
        if code == 0:
            v = base
        elif code == 1:
            v = base * (m + (1.0 - m) * (1.0 - prog))
        elif code == 2:
            v = base * (m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * prog)))
        elif code == 3:
            v = base * gamma ** prog
        elif code == 4:
            v = base * gamma ** ((tt - w) // step_size)
        else:
            if prog < pct:
                v = lo + (base - lo) * 0.5 * (1.0 - math.cos(math.pi * prog / pct))
            else:
                v = end + (base - end) * 0.5 * (1.0 + math.cos(math.pi * (prog - pct) / (1.0 - pct)))
        if t < w:
            v = v * (t + 1) / (w + 1)
        out[t] = v
    return out


def lr_table(schedule: str, total_steps: int, base_lr: float, warmup_steps: int = 0, **params) -> np.ndarray:
    """Learning rate of every step of the run: float64 [total_steps]."""
    name, w, step_size, p = resolve_schedule(schedule, total_steps, base_lr, warmup_steps, params)
    return _table(_CODES[name], int(total_steps), w, float(base_lr), float(p["min_lr_ratio"]),
                  float(p["gamma"]), step_size, float(p["pct_start"]), float(p["div_factor"]),
                  float(p["final_div_factor"]))
