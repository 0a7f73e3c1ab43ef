"""The optimality certificate against dense numpy optima (including singular Grams)."""

import numpy as np
import pytest

from ruv_kernels.exact import ExactSolveError, LayerStats, ModuleStats, certificate, solve_reduced_rank
from tests.kernels.exact_reference import problem, reduced_rank_eigh, stats, weighted_loss


def _module(n, d, o, seed):
    X, R, q = problem(n, d, o, seed=seed, rank_true=3, zero_every=6)
    return X, R, q, ModuleStats(d, o).update(X, R, q)


def _pinv_optimum(X, R, q, rank):
    """The unregularised rank-r optimum's loss from the pseudo-inverse (works for singular G)."""
    G, C, *_ = stats(X, R, q)
    M = np.linalg.pinv(G, rcond=1e-10, hermitian=True) @ C
    w, V = np.linalg.eigh(C.T @ M)
    V = V[:, np.argsort(w)[::-1][:rank]]
    return weighted_loss(X, R, q, (M @ V @ V.T).T)


def test_the_optimum_itself_has_zero_gap():
    X, R, q, st = _module(300, 9, 6, seed=1)
    sol = solve_reduced_rank(st.G, st.C, 2, 4.0)
    cert = certificate({"m": (sol.A, sol.B, 4.0)}, {"m": st})
    assert abs(cert.optimality_gap) < 1e-6
    ref = weighted_loss(X, R, q, reduced_rank_eigh(*stats(X, R, q)[:2], 0.0, 2))
    assert cert.optimal_train_loss == pytest.approx(ref, rel=1e-8)


@pytest.mark.parametrize("n,d,o,rank", [(300, 9, 6, 1), (5, 12, 4, 2), (40, 30, 50, 3)])
def test_gap_of_other_adapters_is_measured_against_the_true_optimum(n, d, o, rank):
    X, R, q, st = _module(n, d, o, seed=n + d)
    opt = _pinv_optimum(X, R, q, rank)
    rng = np.random.default_rng(2)
    for trial in range(10):
        A = rng.standard_normal((rank, d)).astype(np.float32) * 0.3
        B = rng.standard_normal((o, rank)).astype(np.float32) * 0.3
        cert = certificate({"layers.0.q_proj": (A, B, 2.0)}, {"layers.0.q_proj": st})
        loss = weighted_loss(X, R, q, 2.0 * B.astype(np.float64) @ A)
        assert cert.train_loss == pytest.approx(loss, rel=1e-9)
        assert cert.optimal_train_loss == pytest.approx(opt, rel=1e-6)
        assert cert.optimality_gap == pytest.approx(loss / opt - 1, rel=1e-6)
        assert cert.optimality_gap > 0


def test_gradient_descent_closes_the_gap():
    """Plain gradient descent on the factors: the certificate's gap falls towards 0."""
    X, R, q, st = _module(400, 8, 5, seed=3)
    rng = np.random.default_rng(4)
    A = rng.standard_normal((2, 8)) * 0.1
    B = np.zeros((5, 2))
    X64, R64, w = X.astype(np.float64), R.astype(np.float64), q.astype(np.float64) / q.sum()
    gaps = []
    for step in range(3001):
        if step in (0, 100, 3000):
            gaps.append(certificate({"m": (A, B, 1.0)}, {"m": st}).optimality_gap)
        E = (X64 @ A.T) @ B.T - R64
        gB = 2 * (w[:, None] * E).T @ (X64 @ A.T)
        gA = 2 * B.T @ (w[:, None] * E).T @ X64
        A, B = A - 0.02 * gA, B - 0.02 * gB
    assert gaps[0] > gaps[1] > gaps[2] >= -1e-9
    assert gaps[2] < 1e-4


def test_layer_modules_share_one_factorisation_and_average():
    Xa, Rq, q = problem(200, 10, 4, seed=5)
    _, Rk, _ = problem(200, 10, 6, seed=6)
    layer = LayerStats(10, {"q_proj": 4, "k_proj": 6}).update(Xa, {"q_proj": Rq, "k_proj": Rk}, q)
    Xv, Rqv, qv = problem(80, 10, 4, seed=7)
    _, Rkv, _ = problem(80, 10, 6, seed=8)
    val = LayerStats(10, {"q_proj": 4, "k_proj": 6}).update(Xv, {"q_proj": Rqv, "k_proj": Rkv}, qv)
    rng = np.random.default_rng(9)
    adapter = {"q_proj": (rng.standard_normal((2, 10)), rng.standard_normal((4, 2)), 1.0),
               "k_proj": (rng.standard_normal((3, 10)), rng.standard_normal((6, 3)), 0.5)}
    stats_ = {k: layer.module(k) for k in adapter}
    cert = certificate(adapter, stats_, val_stats={k: val.module(k) for k in adapter})
    opt_q, opt_k = _pinv_optimum(Xa, Rq, q, 2), _pinv_optimum(Xa, Rk, q, 3)
    assert cert.modules["q_proj"].optimal_train_loss == pytest.approx(opt_q, rel=1e-6)
    assert cert.modules["k_proj"].optimal_train_loss == pytest.approx(opt_k, rel=1e-6)
    assert cert.optimal_train_loss == pytest.approx((opt_q + opt_k) / 2, rel=1e-6)
    sol_q = cert.modules["q_proj"].solution
    assert cert.modules["q_proj"].optimal_val_loss == pytest.approx(weighted_loss(Xv, Rqv, qv, sol_q.delta()), rel=1e-6)
    assert set(cert.metadata()) == {"optimal_train_loss", "optimality_gap", "optimal_val_loss"}


def test_certificate_bad_input():
    X, R, q, st = _module(100, 6, 4, seed=10)
    A, B = np.ones((2, 6)), np.ones((4, 2))
    with pytest.raises(ExactSolveError, match=r"^k_proj: adapter modules and statistics differ"):
        certificate({"k_proj": (A, B, 1.0)}, {"q_proj": st})
    with pytest.raises(ExactSolveError, match=r"^q_proj: adapter shape 4x5 does not match statistics 4x6$"):
        certificate({"q_proj": (A[:, :5], B, 1.0)}, {"q_proj": st})
    with pytest.raises(ExactSolveError, match="NaN or infinity in the adapter"):
        certificate({"q_proj": (A * np.nan, B, 1.0)}, {"q_proj": st})
    with pytest.raises(ExactSolveError, match="rank 5 must be between 1 and min"):
        certificate({"q_proj": (np.ones((5, 6)), np.ones((4, 5)), 1.0)}, {"q_proj": st})


def test_validation_loss_from_rows_equals_from_statistics():
    from ruv_kernels.exact import ValidationData, loss_from_rows

    X, R, q, st = _module(200, 9, 6, seed=20)
    Xv, Rv, qv, vst = _module(90, 9, 6, seed=21)
    rng = np.random.default_rng(22)
    A, B = rng.standard_normal((2, 9)).astype(np.float32), rng.standard_normal((6, 2)).astype(np.float32)
    assert loss_from_rows(Xv, Rv, qv, A, B, 1.5) == pytest.approx(weighted_loss(Xv, Rv, qv, 1.5 * B.astype(np.float64) @ A), rel=1e-10)
    a = certificate({"m": (A, B, 1.5)}, {"m": st}, val_stats={"m": vst})
    b = certificate({"m": (A, B, 1.5)}, {"m": st}, val_stats={"m": ValidationData(Xv.astype(np.float16), Rv, qv)})
    assert b.optimal_val_loss == pytest.approx(a.optimal_val_loss, rel=1e-2)  # float16 rows
    c = certificate({"m": (A, B, 1.5)}, {"m": st}, val_stats={"m": ValidationData(Xv, Rv, qv)})
    assert c.optimal_val_loss == pytest.approx(a.optimal_val_loss, rel=1e-9)
