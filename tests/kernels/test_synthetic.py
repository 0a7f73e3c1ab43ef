"""Synthetic task data: determinism, per-task differences, shapes, truth, quality, noise floor,
and the name hash (user data is validated by resources.dataset_format)."""


import numpy as np
import pytest

from ruv_kernels.modules import module_shape
from ruv_kernels.quality import QUALITY_TASKS, quality_scores
from ruv_kernels.synthetic import (
    NOISE_SLOPE,
    generate_task,
    stable_hash,
)

SMALL = dict(rank=8, hidden_size=64, intermediate_size=160, num_layers=2, n_examples=200)


def small(task="coder", targets=("q_proj", "v_proj", "o_proj", "down_proj"), seed=0, **kw):
    args = dict(SMALL)
    args.update(kw)
    return generate_task(task, list(targets), seed=seed, **args)


# ---------------------------------------------------------------------------------------------
# quality formulas


def _reference_quality(task, X):
    d = X.shape[1]
    out = []
    for x in X.astype(np.float64):
        if task == "coder":
            v = 0.6 + 0.4 * np.abs(x[: max(1, d // 4)]).mean()
        elif task == "researcher":
            v = 0.5 + 0.5 * np.abs(x).mean()
        elif task == "security":
            v = 0.7 + 0.3 * np.abs(x[0::2]).sum() / (d / 2)
        elif task == "architect":
            v = 0.6 + 0.4 * (1 - np.abs(np.diff(x)).mean())
        elif task == "reviewer":
            v = 0.5 + 0.5 * (1 - abs(x.mean()))
        out.append(min(1.0, max(0.0, v)))
    return np.array(out)


@pytest.mark.parametrize("task", QUALITY_TASKS)
def test_quality_formulas_match_the_original(task):
    rng = np.random.default_rng(3)
    X = rng.uniform(-1, 1, (50, 37)).astype(np.float32)
    X[:10] *= 3.0  # some rows push the formulas past the cap
    X[10:20] += 0.7
    q = quality_scores(task, X)
    assert q.dtype == np.float32 and q.shape == (50,)
    np.testing.assert_allclose(q, _reference_quality(task, X), rtol=1e-5, atol=1e-6)
    assert q.max() <= 1.0 and q.min() >= 0.0


def test_unknown_task_quality_is_seeded_uniform():
    X = np.zeros((5000, 8), np.float32)
    q1 = quality_scores("translator", X, seed=7)
    q2 = quality_scores("translator", X, seed=7)
    q3 = quality_scores("translator", X, seed=8)
    assert np.array_equal(q1, q2) and not np.array_equal(q1, q3)
    assert q1.min() >= 0.5 and q1.max() < 1.0
    assert abs(q1.mean() - 0.75) < 0.01


# ---------------------------------------------------------------------------------------------
# the generator


def test_bit_identical_for_a_seed_and_different_across_seeds():
    a = small(seed=11)
    b = small(seed=11)
    c = small(seed=12)
    for name in a.inputs:
        assert np.array_equal(a.inputs[name], b.inputs[name])
        assert not np.array_equal(a.inputs[name], c.inputs[name])
    for key in a.targets:
        assert np.array_equal(a.targets[key], b.targets[key])
        assert np.array_equal(a.truth[key][0], b.truth[key][0])
        assert np.array_equal(a.truth[key][1], b.truth[key][1])
    assert np.array_equal(a.quality, b.quality) and np.array_equal(a.train_idx, b.train_idx)
    assert a.noise_floor == b.noise_floor
    assert not np.array_equal(a.train_idx, c.train_idx)


def test_keys_shapes_and_only_needed_inputs():
    t = small(targets=("q_proj", "k_proj", "down_proj"))
    assert set(t.inputs) == {"layers.0.hidden", "layers.0.mlp_act", "layers.1.hidden", "layers.1.mlp_act"}
    assert set(t.targets) == {f"layers.{i}.{m}" for i in range(2) for m in ("q_proj", "k_proj", "down_proj")}
    for key, R in t.targets.items():
        module = key.rsplit(".", 1)[1]
        d_in, d_out = module_shape(module, 64, 160)
        assert R.shape == (200, d_out) and R.dtype == np.float32
        assert t.inputs[t.input_key(key)].shape == (200, d_in)
        U, V = t.truth[key]
        assert U.shape == (d_out, t.truth_rank) and V.shape == (t.truth_rank, d_in)
    assert t.truth_rank <= t.rank
    assert t.quality.shape == (200,) and t.noise_std.shape == (200,)
    for arr in list(t.inputs.values()) + list(t.targets.values()):
        assert np.all(np.isfinite(arr))


def test_split_is_80_20_disjoint_and_complete():
    t = small(n_examples=203)
    assert len(t.train_idx) == 162 and len(t.val_idx) == 41
    both = np.concatenate([t.train_idx, t.val_idx])
    assert np.array_equal(np.sort(both), np.arange(203))


def test_truth_has_low_rank_and_targets_follow_it():
    t = small(noise=0.0)
    for key, R in t.targets.items():
        W = t.dense_truth(key)
        assert np.linalg.matrix_rank(W.astype(np.float64), tol=1e-3 * np.abs(W).max()) == t.truth_rank
        X = t.inputs[t.input_key(key)].astype(np.float64)
        pred = X @ W.T.astype(np.float64)
        # noise-free targets are the truth applied to the inputs (to float32 rounding)
        assert np.abs(pred - R).max() <= 1e-4 * np.abs(R).max()


def test_noise_grows_as_quality_falls_and_floor_is_weighted_mean():
    t = small(noise=2.0)
    np.testing.assert_allclose(t.noise_std, 2.0 * (1 + NOISE_SLOPE * (1 - t.quality)), rtol=1e-6)
    qv = t.quality[t.val_idx].astype(np.float64)
    sv = t.noise_std[t.val_idx].astype(np.float64)
    assert t.noise_floor == pytest.approx((qv * sv**2).sum() / qv.sum())
    # the realised residual of the truth matches the per-example noise level
    key = "layers.0.q_proj"
    X = t.inputs["layers.0.hidden"].astype(np.float64)
    resid = t.targets[key] - X @ t.dense_truth(key).T
    per_row = np.sqrt((resid**2).mean(axis=1))
    np.testing.assert_allclose(per_row, t.noise_std, rtol=0.25)
    assert np.corrcoef(per_row, t.quality)[0, 1] < -0.8


def test_tasks_really_differ():
    kw = dict(targets=("q_proj",), seed=5)
    tasks = {name: small(name, **kw) for name in ("coder", "researcher", "security", "architect", "reviewer", "mytask")}
    X = {name: t.inputs["layers.0.hidden"] for name, t in tasks.items()}
    names = list(X)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not np.allclose(X[a], X[b])
            assert not np.allclose(tasks[a].truth["layers.0.q_proj"][1], tasks[b].truth["layers.0.q_proj"][1])
    # different distributions, not just different draws: sparsity, offsets and spread differ
    zero_frac = {n: float(np.mean(x == 0)) for n, x in X.items()}
    assert zero_frac["security"] > 0.2 and zero_frac["coder"] < 0.01
    assert abs(X["reviewer"].mean(axis=1)).mean() > 3 * abs(X["coder"].mean(axis=1)).mean()
    kurt = {n: float(((x - x.mean()) ** 4).mean() / x.var() ** 2) for n, x in X.items()}
    assert kurt["architect"] > kurt["coder"]
    # quality comes from the task's own formula on layer-0 hidden inputs
    for name in ("coder", "researcher", "security", "architect", "reviewer"):
        np.testing.assert_array_equal(tasks[name].quality, quality_scores(name, X[name]))
    assert tasks["mytask"].quality.min() >= 0.5


def test_quality_spreads_for_every_preset_task():
    for name in ("coder", "researcher", "security", "architect", "reviewer"):
        q = small(name, targets=("q_proj",), hidden_size=256, n_examples=400).quality
        assert q.max() - q.min() > 0.2, name


def test_inputs_live_on_a_low_dimensional_subspace():
    t = small(hidden_size=128, n_examples=300, targets=("q_proj",))
    X = t.inputs["layers.0.hidden"].astype(np.float64)
    sv = np.linalg.svd(X, compute_uv=False)
    rank = int((sv > 1e-4 * sv[0]).sum())
    assert rank < 128 // 2 + 1
    # and the truth's input directions lie inside it
    _, V = t.truth["layers.0.q_proj"]
    P = np.linalg.pinv(X) @ X
    np.testing.assert_allclose(V @ P, V, atol=1e-4)


def test_stable_hash_is_fnv1a():
    assert stable_hash("") == 0xCBF29CE484222325
    assert stable_hash("a") == 0xAF63DC4C8601EC8C


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(targets=[]), "targets"),
        (dict(targets=["q_proj", "nope"]), "targets: unknown module 'nope'"),
        (dict(rank=0), "rank"),
        (dict(n_examples=3), "n_examples"),
        (dict(noise=-1.0), "noise"),
        (dict(num_layers=0), "num_layers"),
        (dict(task=""), "task"),
    ],
)
def test_generator_argument_errors(kwargs, match):
    args = dict(task="coder", targets=["q_proj"], seed=0, **SMALL)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        generate_task(**args)
