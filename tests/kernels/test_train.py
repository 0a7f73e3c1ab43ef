"""The training engine: fused gradients, optimisers, clipping, weight decay, LoRA+, early stopping,
best checkpoint, quality threshold and weighting, EWC++, mixed precision, determinism, errors."""

import math

import numpy as np
import pytest

from ruv_kernels.modules import lora_scale
from ruv_kernels.synthetic import generate_task
from ruv_kernels.train import (
    OPT_CODE,
    EwcState,
    ModuleProblem,
    TrainSettings,
    build_problems,
    evaluate,
    evaluate_modules,
    module_gradients,
    train,
    zero_adapter_loss,
)
from ruv_kernels.train.optimizer import update
from ruv_kernels.train.bundles import Chunks, Hyper, State


def peft_init(problems, rank, seed=1):
    """A Kaiming-uniform like PEFT (bound 1/sqrt(in)), B zero."""
    rng = np.random.default_rng(seed)
    A, B = {}, {}
    for p in problems:
        d_in, d_out = p.X_train.shape[1], p.R_train.shape[1]
        A[p.key] = rng.uniform(-1, 1, (rank, d_in)).astype(np.float32) / np.float32(math.sqrt(d_in))
        B[p.key] = np.zeros((d_out, rank), np.float32)
    return A, B


def small_task(task="reviewer", targets=("q_proj", "v_proj"), rank=4, hidden=32, n=300, seed=0, **kw):
    t = generate_task(task, list(targets), rank, hidden, 2 * hidden, 1, n, seed, **kw)
    probs = build_problems(t.inputs, t.targets, t.train_idx, t.val_idx)
    return t, probs, t.quality[t.train_idx], t.quality[t.val_idx]


FAST = TrainSettings(epochs=30, batch_size=16, learning_rate=0.02, patience=100, warmup_steps=0)


# ---------------------------------------------------------------------------------------------
# the fused kernel


def numpy_loss_and_grads(X, R, q, A, B, s, M):
    X, R, q, A, B = (a.astype(np.float64) for a in (X, R, q, A, B))
    w = q / (M * q.sum() * R.shape[1])
    H = X @ A.T
    E = s * H @ B.T - R
    loss = float((w * (E**2).sum(1)).sum())
    gB = 2 * s * (E * w[:, None]).T @ H
    gA = 2 * s * ((E * w[:, None]) @ B).T @ X
    return loss, gA, gB


@pytest.mark.parametrize("n,d_in,d_out,r", [(7, 5, 3, 1), (13, 9, 11, 3), (5, 17, 4, 2), (33, 31, 29, 5),
                                            (1, 3, 2, 1), (66, 40, 24, 16)])
def test_fused_gradients_match_numpy(n, d_in, d_out, r):
    rng = np.random.default_rng(n * 1000 + d_in)
    X = rng.standard_normal((n, d_in)).astype(np.float32)
    R = rng.standard_normal((n, d_out)).astype(np.float32)
    q = rng.uniform(0.2, 1.0, n).astype(np.float32)
    A = rng.standard_normal((r, d_in)).astype(np.float32)
    B = rng.standard_normal((d_out, r)).astype(np.float32)
    loss, gA, gB = module_gradients(X, R, q, A, B, 1.7, n_modules=3)
    ref_loss, ref_gA, ref_gB = numpy_loss_and_grads(X, R, q, A, B, 1.7, 3)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(gA, ref_gA, rtol=1e-4, atol=1e-5 * np.abs(ref_gA).max())
    np.testing.assert_allclose(gB, ref_gB, rtol=1e-4, atol=1e-5 * np.abs(ref_gB).max())


def test_numpy_reference_against_finite_differences():
    rng = np.random.default_rng(0)
    X, R = rng.standard_normal((6, 5)), rng.standard_normal((6, 3))
    q, A, B = rng.uniform(0.3, 1, 6), rng.standard_normal((1, 5)), rng.standard_normal((3, 1))
    _, gA, gB = numpy_loss_and_grads(X, R, q, A, B, 2.0, 1)
    eps = 1e-6
    for P, G in ((A, gA), (B, gB)):
        for idx in np.ndindex(P.shape):
            old = P[idx]
            P[idx] = old + eps
            up = numpy_loss_and_grads(X, R, q, A, B, 2.0, 1)[0]
            P[idx] = old - eps
            down = numpy_loss_and_grads(X, R, q, A, B, 2.0, 1)[0]
            P[idx] = old
            assert (up - down) / (2 * eps) == pytest.approx(G[idx], rel=1e-5, abs=1e-8)


def test_evaluate_is_the_normalised_weighted_loss_averaged_over_modules():
    t, probs, qt, qv = small_task(targets=("q_proj", "down_proj"))
    rng = np.random.default_rng(0)
    A = {p.key: rng.standard_normal((4, p.X_val.shape[1])).astype(np.float32) for p in probs}
    B = {p.key: rng.standard_normal((p.R_val.shape[1], 4)).astype(np.float32) for p in probs}
    per = {}
    for p in probs:
        E = 2.0 * p.X_val.astype(np.float64) @ A[p.key].T @ B[p.key].T - p.R_val
        per[p.key] = float((qv * (E**2).sum(1)).sum() / (qv.sum() * p.R_val.shape[1]))
    got = evaluate_modules(probs, A, B, 2.0, qv)
    for k in per:
        assert got[k] == pytest.approx(per[k], rel=1e-5)
    assert evaluate(probs, A, B, 2.0, qv) == pytest.approx(np.mean(list(per.values())), rel=1e-5)
    zero = np.mean([float((qv * (p.R_val.astype(np.float64) ** 2).sum(1)).sum() / (qv.sum() * p.R_val.shape[1]))
                    for p in probs])
    assert zero_adapter_loss(probs, qv) == pytest.approx(zero, rel=1e-6)


# ---------------------------------------------------------------------------------------------
# optimisers


def _one_update(opt, W, G, M1, M2, step, lr=0.1, wd=0.0, momentum=0.0, b1=0.9, b2=0.999, eps=1e-8):
    P = W.shape[0]
    zero = np.zeros(P, np.float32)  # online Fisher (updated), EWC anchor (unread: lam 0)
    state = State(W, G, M1, M2, zero.copy(), zero, zero)
    hyper = Hyper(opt, b1, b2, eps, wd, momentum, 0.999, 0.0, 0.0)
    chunks = Chunks(np.array([0, P // 3], np.int64), np.array([P // 3, P], np.int64), np.ones(2))
    update(state, hyper, chunks, 1.0, lr, step)


def _reference_optimizer(name, w, grads, lr, wd, momentum, b1=0.9, b2=0.999, eps=1e-8):
    """torch.optim semantics, written in numpy float64."""
    w = w.astype(np.float64).copy()
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    buf = None
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float64)
        if name == "adamw":
            w *= 1 - lr * wd
        else:
            g = g + wd * w
        if name == "sgd":
            if momentum:
                buf = g.copy() if buf is None else momentum * buf + g
                g = buf
            w -= lr * g
            continue
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w -= lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
    return w


@pytest.mark.parametrize("name,wd,momentum", [("adamw", 0.1, 0.0), ("adam", 0.1, 0.0), ("sgd", 0.05, 0.0),
                                              ("sgd", 0.0, 0.9), ("adamw", 0.0, 0.0)])
def test_update_kernel_matches_torch_semantics(name, wd, momentum):
    rng = np.random.default_rng(1)
    P = 1000
    w0 = rng.standard_normal(P).astype(np.float32)
    grads = [rng.standard_normal(P).astype(np.float32) for _ in range(5)]
    W, M1, M2 = w0.copy(), np.zeros(P, np.float32), np.zeros(P, np.float32)
    for t, g in enumerate(grads, start=1):
        _one_update(OPT_CODE[name], W, g.copy(), M1, M2, t, lr=0.01, wd=wd, momentum=momentum)
    np.testing.assert_allclose(W, _reference_optimizer(name, w0, grads, 0.01, wd, momentum), rtol=1e-5, atol=1e-6)


def test_weight_decay_actually_shrinks_weights():
    P = 64
    w0 = (np.linspace(0.5, 2, P) * np.where(np.arange(P) % 2, 1, -1)).astype(np.float32)
    zero = np.zeros(P, np.float32)
    # AdamW, zero gradient: exactly w * (1 - lr * wd) per step
    W = w0.copy()
    for t in range(1, 4):
        _one_update(0, W, zero.copy(), np.zeros(P, np.float32), np.zeros(P, np.float32), t, lr=0.1, wd=0.5)
    np.testing.assert_allclose(W, w0 * (1 - 0.05) ** 3, rtol=1e-6)
    # Adam and SGD: the L2 term pulls every weight towards zero
    for opt in (1, 2):
        W = w0.copy()
        _one_update(opt, W, zero.copy(), np.zeros(P, np.float32), np.zeros(P, np.float32), 1, lr=0.1, wd=0.5)
        assert np.all(np.abs(W) <= np.abs(w0)) and np.abs(W).sum() < np.abs(w0).sum()
    # end to end: a run with weight decay ends with smaller weights
    _, probs, qt, qv = small_task()
    A, B = peft_init(probs, 4)
    plain = train(probs, A, B, 2.0, qt, qv, FAST.replace(epochs=10, weight_decay=0.0))
    decayed = train(probs, A, B, 2.0, qt, qv, FAST.replace(epochs=10, weight_decay=2.0))
    norm = lambda res: sum(float(np.square(res.A[k]).sum() + np.square(res.B[k]).sum()) for k in res.A)  # noqa: E731
    assert norm(decayed) < 0.9 * norm(plain)


def _single_step(settings, probs, A, B, scale, qt, qv, ewc=None):
    """Run exactly one optimiser step over the whole training set; return the result."""
    s = settings.replace(epochs=1, batch_size=len(qt), warmup_steps=0, schedule="constant", patience=5)
    return train(probs, A, B, scale, qt, qv, s, ewc=ewc)


def _flat(A, B, keys):
    return np.concatenate([np.concatenate([A[k].ravel(), B[k].ravel()]) for k in keys]).astype(np.float64)


def _ulp_tol(*weights):
    """Absolute tolerance for differences of float32 weights: a few ulps of the largest weight."""
    return 4 * float(np.finfo(np.float32).eps) * max(float(np.abs(w).max()) for w in weights)


def _full_gradient(probs, A, B, scale, qt):
    g = []
    for p in probs:
        _, gA, gB = module_gradients(p.X_train, p.R_train, qt, A[p.key], B[p.key], scale, n_modules=len(probs))
        g.append(np.concatenate([gA.ravel(), gB.ravel()]))
    return np.concatenate(g).astype(np.float64)


def test_clipping_bounds_the_update_like_clip_grad_norm():
    _, probs, qt, qv = small_task(n=120)
    rng = np.random.default_rng(3)
    A, _ = peft_init(probs, 4)
    B = {p.key: rng.standard_normal((p.R_train.shape[1], 4)).astype(np.float32) * 0.1 for p in probs}
    keys = [p.key for p in probs]
    g = _full_gradient(probs, A, B, 2.0, qt)
    gnorm = np.linalg.norm(g)
    clip = gnorm / 50
    sgd = TrainSettings(optimizer="sgd", learning_rate=1e-3, weight_decay=0.0, quality_threshold=0.0)
    res = _single_step(sgd.replace(max_grad_norm=clip), probs, A, B, 2.0, qt, qv)
    delta = _flat(res.A, res.B, keys) - _flat(A, B, keys)
    # torch: coef = max_norm / (norm + 1e-6); the step is lr * coef * g
    np.testing.assert_allclose(delta, -1e-3 * g * clip / (gnorm + 1e-6), rtol=2e-3, atol=_ulp_tol(_flat(A, B, keys)))
    assert np.linalg.norm(delta) <= 1e-3 * clip * (1 + 1e-4)
    unclipped = _single_step(sgd, probs, A, B, 2.0, qt, qv)
    assert np.linalg.norm(_flat(unclipped.A, unclipped.B, keys) - _flat(A, B, keys)) > 40 * np.linalg.norm(delta)


def test_loraplus_scales_the_learning_rate_of_B():
    _, probs, qt, qv = small_task(n=120)
    rng = np.random.default_rng(4)
    A, _ = peft_init(probs, 4)
    B = {p.key: rng.standard_normal((p.R_train.shape[1], 4)).astype(np.float32) * 0.1 for p in probs}
    sgd = TrainSettings(optimizer="sgd", learning_rate=1e-4, weight_decay=0.0, quality_threshold=0.0)
    base = _single_step(sgd, probs, A, B, 2.0, qt, qv)
    plus = _single_step(sgd.replace(loraplus_ratio=16.0), probs, A, B, 2.0, qt, qv)
    for k in A:
        np.testing.assert_allclose(plus.A[k] - A[k], base.A[k] - A[k], rtol=1e-4, atol=_ulp_tol(A[k]))
        np.testing.assert_allclose(plus.B[k] - B[k], 16.0 * (base.B[k] - B[k]), rtol=1e-3, atol=16 * _ulp_tol(B[k]))
        assert np.abs(plus.B[k] - B[k]).max() > 10 * np.abs(base.B[k] - B[k]).max()


# ---------------------------------------------------------------------------------------------
# the loop


def test_training_learns_the_truth_on_a_small_task():
    t, probs, qt, qv = small_task(hidden=48, n=400, truth_scale=60.0, noise=0.5)
    A, B = peft_init(probs, 4)
    zero = zero_adapter_loss(probs, qv)
    res = train(probs, A, B, lora_scale(8, 4), qt, qv, FAST.replace(epochs=60))
    assert res.val_loss < 1.15 * t.noise_floor < 0.01 * zero
    assert res.val_loss == pytest.approx(evaluate(probs, res.A, res.B, lora_scale(8, 4), qv), rel=1e-6)
    q_kept = np.where(qt >= FAST.quality_threshold, qt, 0).astype(np.float32)  # dropped rows weigh nothing
    assert res.train_loss == pytest.approx(evaluate(probs, res.A, res.B, lora_scale(8, 4), q_kept, split="train"),
                                           rel=1e-6)
    # inputs untouched, outputs in the caller's layout
    for p in probs:
        assert np.all(B[p.key] == 0) and res.B[p.key].shape == B[p.key].shape and res.A[p.key].shape == A[p.key].shape


def test_history_and_progress_callback():
    _, probs, qt, qv = small_task(n=160)
    A, B = peft_init(probs, 4)
    rows = []
    res = train(probs, A, B, 2.0, qt, qv, FAST.replace(epochs=3, eval_every_steps=4), progress=rows.append)
    assert rows == res.history
    assert res.history[0]["kind"] == "init" and res.history[0]["epoch"] == 0
    epochs = [h for h in res.history if h["kind"] == "epoch"]
    steps = [h for h in res.history if h["kind"] == "step"]
    assert [h["epoch"] for h in epochs] == [1, 2, 3]
    assert all(h["step"] % 4 == 0 for h in steps) and len(steps) >= 3
    for h in res.history:
        assert set(h) == {"epoch", "step", "train_loss", "val_loss", "lr", "ewc_penalty", "kind"}
    assert res.steps == epochs[-1]["step"] == 3 * math.ceil(res.n_train_used / 16)
    assert epochs[-1]["lr"] < epochs[0]["lr"]  # cosine


def test_early_stopping_fires_on_a_plateau():
    t, probs, qt, qv = small_task(n=300, truth_scale=30.0, noise=1.0)
    A, B = peft_init(probs, 4)
    s = FAST.replace(epochs=200, schedule="constant", patience=3, min_delta=0.002 * t.noise_floor)
    res = train(probs, A, B, 2.0, qt, qv, s)
    assert res.early_stopped and res.epochs_run < 200
    vals = [h["val_loss"] for h in res.history if h["kind"] == "epoch"]
    # it stopped because the last `patience` evaluations did not beat the reference by min_delta
    assert min(vals[-3:]) > min(vals[:-3]) - s.min_delta


def test_early_stopping_does_not_fire_on_steady_improvement():
    _, probs, qt, qv = small_task(n=300)
    A, B = peft_init(probs, 4)
    s = FAST.replace(epochs=12, schedule="constant", learning_rate=2e-4, patience=1, min_delta=0.0)
    res = train(probs, A, B, 2.0, qt, qv, s)
    vals = [h["val_loss"] for h in res.history]
    assert all(b < a for a, b in zip(vals, vals[1:]))
    assert not res.early_stopped and res.epochs_run == 12 and res.best_epoch == 12


def test_best_checkpoint_is_returned():
    _, probs, qt, qv = small_task(n=300, truth_scale=30.0, noise=1.0)
    A, B = peft_init(probs, 4)
    # a learning rate that is far too high for the end of the run: the loss gets worse again
    s = FAST.replace(epochs=25, schedule="linear", learning_rate=0.3, min_lr_ratio=1.0, patience=100)
    res = train(probs, A, B, 2.0, qt, qv, s)
    vals = [h["val_loss"] for h in res.history]
    assert res.val_loss == min(vals)
    assert res.best_epoch < res.epochs_run and vals[-1] > res.val_loss
    assert evaluate(probs, res.A, res.B, 2.0, qv) == pytest.approx(res.val_loss, rel=1e-6)


def test_quality_threshold_drops_examples_exactly():
    t, probs, qt, qv = small_task(n=300)
    A, B = peft_init(probs, 4)
    thr = float(np.quantile(qt, 0.4))
    keep = qt >= thr
    res = train(probs, A, B, 2.0, qt, qv, FAST.replace(epochs=3, quality_threshold=thr))
    assert res.n_train_used == int(keep.sum()) < len(qt)
    # identical to training on the kept rows only
    sub = [ModuleProblem(p.key, p.X_train[keep], p.R_train[keep], p.X_val, p.R_val) for p in probs]
    res_sub = train(sub, A, B, 2.0, qt[keep], qv, FAST.replace(epochs=3, quality_threshold=0.0))
    for k in A:
        np.testing.assert_array_equal(res.A[k], res_sub.A[k])
        np.testing.assert_array_equal(res.B[k], res_sub.B[k])


def test_quality_threshold_that_drops_everything_raises():
    _, probs, qt, qv = small_task(n=100)
    A, B = peft_init(probs, 4)
    with pytest.raises(ValueError, match="quality_threshold .* drops all 80 training examples"):
        train(probs, A, B, 2.0, np.minimum(qt, 0.5), qv, FAST.replace(quality_threshold=0.9))


def test_quality_weighting_beats_unweighted_training():
    """Noise grows as quality falls, so the quality-weighted estimator generalises better."""
    excess = {"weighted": [], "unweighted": []}
    for seed in range(3):
        t, probs, qt, qv = small_task(hidden=64, n=200, seed=seed, rank=8)
        A, B = peft_init(probs, 8, seed=seed + 1)
        s = TrainSettings(epochs=150, batch_size=16, patience=1000, quality_threshold=0.0)
        for name, w in (("weighted", qt), ("unweighted", np.ones_like(qt))):
            res = train(probs, A, B, 2.0, w, qv, s)
            excess[name].append(res.val_loss / t.noise_floor - 1.0)
    w, u = np.array(excess["weighted"]), np.array(excess["unweighted"])
    assert np.all(w < u), excess
    assert w.mean() < 0.85 * u.mean(), excess


def test_determinism_for_a_seed():
    _, probs, qt, qv = small_task(n=200)
    A, B = peft_init(probs, 4)
    r1 = train(probs, A, B, 2.0, qt, qv, FAST.replace(epochs=4, seed=7))
    r2 = train(probs, A, B, 2.0, qt, qv, FAST.replace(epochs=4, seed=7))
    r3 = train(probs, A, B, 2.0, qt, qv, FAST.replace(epochs=4, seed=8))
    for k in A:
        assert np.array_equal(r1.A[k], r2.A[k]) and np.array_equal(r1.B[k], r2.B[k])
        assert not np.array_equal(r1.B[k], r3.B[k])
    assert r1.history == r2.history


def test_single_thread_run_matches_to_rounding():
    import numba

    _, probs, qt, qv = small_task(n=200)
    A, B = peft_init(probs, 4)
    default = train(probs, A, B, 2.0, qt, qv, FAST.replace(epochs=3))
    single = train(probs, A, B, 2.0, qt, qv, FAST.replace(epochs=3, num_threads=1))
    assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS  # restored
    assert single.val_loss == pytest.approx(default.val_loss, rel=1e-4)


def test_float16_storage_trains_like_float32():
    t, probs, qt, qv = small_task(hidden=48, n=400, truth_scale=60.0, noise=0.5)
    half = [ModuleProblem(p.key, p.X_train.astype(np.float16), p.R_train.astype(np.float16),
                          p.X_val.astype(np.float16), p.R_val.astype(np.float16)) for p in probs]
    # q/k/v share one input array in float16 too
    shared = half[0].X_train
    half = [ModuleProblem(h.key, shared, h.R_train, half[0].X_val, h.R_val) for h in half]
    A, B = peft_init(probs, 4)
    s = FAST.replace(epochs=40)
    r32 = train(probs, A, B, 2.0, qt, qv, s)
    r16 = train(half, A, B, 2.0, qt, qv, s)
    assert shared.dtype == np.float16
    for k in A:
        assert r16.A[k].dtype == np.float32 and np.all(np.isfinite(r16.B[k]))
    v16 = evaluate(probs, r16.A, r16.B, 2.0, qv)  # judged on the float32 data
    assert v16 < 1.2 * t.noise_floor
    assert v16 == pytest.approx(r32.val_loss, rel=0.1)


def test_scale_per_module():
    _, probs, qt, qv = small_task(n=120)
    A, B = peft_init(probs, 4)
    res = train(probs, A, B, {p.key: 2.0 for p in probs}, qt, qv, FAST.replace(epochs=2))
    same = train(probs, A, B, 2.0, qt, qv, FAST.replace(epochs=2))
    for k in A:
        np.testing.assert_array_equal(res.B[k], same.B[k])
    with pytest.raises(ValueError, match="no scale"):
        train(probs, A, B, {probs[0].key: 2.0}, qt, qv, FAST)


# ---------------------------------------------------------------------------------------------
# EWC++


def test_ewc_penalty_gradient_and_online_fisher():
    _, probs, qt, qv = small_task(n=120)
    rng = np.random.default_rng(5)
    A, _ = peft_init(probs, 4)
    B = {p.key: rng.standard_normal((p.R_train.shape[1], 4)).astype(np.float32) * 0.1 for p in probs}
    anchor_A = {k: v + rng.standard_normal(v.shape).astype(np.float32) * 0.05 for k, v in A.items()}
    anchor_B = {k: v + rng.standard_normal(v.shape).astype(np.float32) * 0.05 for k, v in B.items()}
    fisher = {k: (rng.uniform(0, 2, A[k].shape).astype(np.float32), rng.uniform(0, 2, B[k].shape).astype(np.float32))
              for k in A}
    keys = [p.key for p in probs]
    lam, lr = 3.0, 1e-3
    sgd = TrainSettings(optimizer="sgd", learning_rate=lr, weight_decay=0.0, quality_threshold=0.0,
                        ewc_lambda=lam, fisher_decay=0.9)
    res = _single_step(sgd, probs, A, B, 2.0, qt, qv, ewc=EwcState(anchor_A, anchor_B, fisher))
    g = _full_gradient(probs, A, B, 2.0, qt)
    F = np.concatenate([np.concatenate([fisher[k][0].ravel(), fisher[k][1].ravel()]) for k in keys])
    w, w_star = _flat(A, B, keys), _flat(anchor_A, anchor_B, keys)
    expected = -lr * (g + lam * F * (w - w_star))
    np.testing.assert_allclose(_flat(res.A, res.B, keys) - w, expected, rtol=2e-3, atol=_ulp_tol(w))
    # online Fisher: starts from the anchor's, F <- d F + (1 - d) g^2 with the data gradient
    F_new = np.concatenate([np.concatenate([res.fisher[k][0].ravel(), res.fisher[k][1].ravel()]) for k in keys])
    np.testing.assert_allclose(F_new, 0.9 * F + 0.1 * g**2, rtol=1e-4, atol=1e-12)


def test_fisher_from_scratch_is_bias_corrected():
    _, probs, qt, qv = small_task(n=120)
    A, B = peft_init(probs, 4)
    B = {k: v + 0.01 for k, v in B.items()}
    sgd = TrainSettings(optimizer="sgd", learning_rate=1e-4, weight_decay=0.0, quality_threshold=0.0)
    res = _single_step(sgd, probs, A, B, 2.0, qt, qv)
    keys = [p.key for p in probs]
    g = _full_gradient(probs, A, B, 2.0, qt)
    F = np.concatenate([np.concatenate([res.fisher[k][0].ravel(), res.fisher[k][1].ravel()]) for k in keys])
    np.testing.assert_allclose(F, g**2, rtol=1e-3, atol=1e-12)
    for k in keys:
        assert res.fisher[k][0].shape == A[k].shape and res.fisher[k][1].shape == B[k].shape


def test_ewc_keeps_the_old_task():
    """Train task A, then task B on the same modules: with EWC task A's loss stays far lower."""
    ta, pa, qta, qva = small_task("reviewer", hidden=48, n=300, truth_scale=60.0, noise=0.5, rank=8)
    tb, pb, qtb, qvb = small_task("coder", hidden=48, n=300, truth_scale=60.0, noise=0.5, rank=8)
    A0, B0 = peft_init(pa, 8)
    s = FAST.replace(epochs=40)
    first = train(pa, A0, B0, 2.0, qta, qva, s)
    assert first.val_loss < 1.3 * ta.noise_floor
    plain = train(pb, first.A, first.B, 2.0, qtb, qvb, s)
    ewc = train(pb, first.A, first.B, 2.0, qtb, qvb, s.replace(ewc_lambda=100.0),
                ewc=EwcState(first.A, first.B, first.fisher))
    loss_a_plain = evaluate(pa, plain.A, plain.B, 2.0, qva)
    loss_a_ewc = evaluate(pa, ewc.A, ewc.B, 2.0, qva)
    assert loss_a_ewc < 0.3 * loss_a_plain
    assert ewc.history[-1]["ewc_penalty"] > 0 and plain.history[-1]["ewc_penalty"] == 0
    # EWC trades some of task B for it, but task B is still learned well beyond the zero adapter
    assert plain.val_loss <= ewc.val_loss < 0.7 * zero_adapter_loss(pb, qvb)


def test_ewc_state_errors():
    _, probs, qt, qv = small_task(n=100)
    A, B = peft_init(probs, 4)
    k = probs[0].key
    bad = EwcState(A, B, {k: (np.ones((3, 3), np.float32), np.ones(B[k].shape, np.float32))})
    with pytest.raises(ValueError, match=f"{k}: EWC fisher A has shape"):
        train(probs, A, B, 2.0, qt, qv, FAST, ewc=bad)
    nan = EwcState(A, B, {k: (np.full(A[k].shape, np.nan, np.float32), np.ones(B[k].shape, np.float32))})
    with pytest.raises(ValueError, match="NaN"):
        train(probs, A, B, 2.0, qt, qv, FAST, ewc=nan)


# ---------------------------------------------------------------------------------------------
# errors before any work


@pytest.mark.parametrize(
    "change,field",
    [
        (dict(learning_rate=-0.1), "learning_rate"),
        (dict(learning_rate=float("nan")), "learning_rate"),
        (dict(batch_size=0), "batch_size"),
        (dict(epochs=0), "epochs"),
        (dict(patience=-1), "patience"),
        (dict(schedule="warmup_linear"), "schedule"),
        (dict(optimizer="lion"), "optimizer"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(betas=(0.9, 1.0)), "betas"),
        (dict(eps=0.0), "eps"),
        (dict(momentum=1.0), "momentum"),
        (dict(loraplus_ratio=0.0), "loraplus_ratio"),
        (dict(max_grad_norm=-1.0), "max_grad_norm"),
        (dict(warmup_steps=-5), "warmup_steps"),
        (dict(quality_threshold=1.5), "quality_threshold"),
        (dict(min_delta=-1e-3), "min_delta"),
        (dict(eval_every_steps=-1), "eval_every_steps"),
        (dict(ewc_lambda=-1.0), "ewc_lambda"),
        (dict(fisher_decay=1.0), "fisher_decay"),
        (dict(gamma=2.0, schedule="step"), "gamma"),
        (dict(batch_size=2.5), "batch_size"),
        (dict(num_threads=-1), "num_threads"),
        (dict(num_threads=10_000), "num_threads"),
    ],
)
def test_bad_settings_raise_naming_the_field(change, field):
    with pytest.raises(ValueError, match=field):
        TrainSettings(**change).validate()


def test_bad_settings_raise_before_any_work():
    _, probs, qt, qv = small_task(n=60)
    A, B = peft_init(probs, 4)
    calls = []
    with pytest.raises(ValueError, match="patience"):
        train(probs, A, B, 2.0, qt, qv, TrainSettings(patience=-1), progress=calls.append)
    assert calls == []
    with pytest.raises(ValueError, match="unknown TrainSettings field"):
        TrainSettings().replace(learning_rat=0.1)


@pytest.mark.parametrize("where", ["X_train", "R_train", "X_val", "R_val"])
def test_nan_in_data_raises_before_training(where):
    _, probs, qt, qv = small_task(n=60)
    A, B = peft_init(probs, 4)
    p = probs[1]
    arr = getattr(p, where).copy()
    arr[2, 3] = np.nan
    probs[1] = ModuleProblem(**{**p.__dict__, where: arr})
    calls = []
    with pytest.raises(ValueError, match=f"{p.key}: {where} contains NaN"):
        train(probs, A, B, 2.0, qt, qv, FAST, progress=calls.append)
    assert calls == []


def test_nan_quality_and_bad_shapes_raise():
    _, probs, qt, qv = small_task(n=60)
    A, B = peft_init(probs, 4)
    bad_q = qt.copy()
    bad_q[0] = np.nan
    with pytest.raises(ValueError, match="q_train: contains NaN"):
        train(probs, A, B, 2.0, bad_q, qv, FAST)
    with pytest.raises(ValueError, match="R_train has shape"):
        train([ModuleProblem(probs[0].key, probs[0].X_train, probs[0].R_train[:, :5], probs[0].X_val,
                             probs[0].R_val)], A, B, 2.0, qt, qv, FAST)
    with pytest.raises(ValueError, match="X_train has shape"):
        train(probs, A, B, 2.0, qt[:10], qv, FAST)
    wrong = dict(A)
    wrong[probs[0].key] = np.zeros((4, 7), np.float32)
    with pytest.raises(ValueError, match="X_train has shape"):
        train(probs, wrong, B, 2.0, qt, qv, FAST)
    with pytest.raises(ValueError, match="no initial A/B"):
        train(probs, {}, B, 2.0, qt, qv, FAST)
    with pytest.raises(ValueError, match="given twice"):
        train(probs + probs[:1], A, B, 2.0, qt, qv, FAST)
    with pytest.raises(ValueError, match="no module problems"):
        train([], A, B, 2.0, qt, qv, FAST)
