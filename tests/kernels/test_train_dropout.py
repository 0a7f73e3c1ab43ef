"""SGD's input dropout (PEFT's lora_dropout) and the exact solver's ridge: each changes the fit as
the expected-value theory says (E over masks of the loss = clean loss + tr(D diag(p/(1-p) diag G) D^T))."""

import numpy as np
import pytest

from ruv_kernels.exact import dropout_ridge, solve_adapter, solve_reduced_rank
from ruv_kernels.exact.stats import ModuleStats
from ruv_kernels.train import ModuleProblem, TrainSettings, train
from tests.kernels.exact_reference import problem, ridge_lstsq, stats

P = 0.3
SETTINGS = dict(epochs=250, batch_size=25, learning_rate=0.01, optimizer="adam", weight_decay=0.0,
                schedule="cosine", warmup_steps=0, patience=250, min_delta=0.0, quality_threshold=0.0)


def _fit(X, R, q, dropout, seed=0):
    d, o = X.shape[1], R.shape[1]
    prob = ModuleProblem("layers.0.q_proj", X, R, X, R)  # validation on the clean training rows
    rng = np.random.default_rng(5)
    A = {prob.key: (rng.standard_normal((o, d)) / np.sqrt(d)).astype(np.float32)}
    B = {prob.key: np.zeros((o, o), np.float32)}
    res = train([prob], A, B, 1.0, q, q, TrainSettings(**SETTINGS, dropout=dropout, seed=seed, num_threads=1))
    return res.B[prob.key].astype(np.float64) @ res.A[prob.key].astype(np.float64)


@pytest.fixture(scope="module")
def data():
    return problem(400, 6, 4, seed=3, rank_true=4, noise=0.3)


def test_sgd_dropout_lands_on_the_ridge_solution(data):
    X, R, q = data
    G, C, *_ = stats(X, R, q)
    D_clean = ridge_lstsq(X, R, q, 0.0)  # [out, in]
    D_ridge = solve_reduced_rank(G, C, 4, 1.0, ridge=dropout_ridge(G, P)).delta()
    gap = np.linalg.norm(D_clean - D_ridge)
    D_drop = _fit(X, R, q, P)
    D_plain = _fit(X, R, q, 0.0)
    # without dropout SGD finds the clean least-squares fit; with it, the shrunk ridge fit
    assert np.linalg.norm(D_plain - D_clean) < 0.05 * gap
    assert np.linalg.norm(D_drop - D_ridge) < 0.25 * gap
    assert np.linalg.norm(D_drop) < np.linalg.norm(D_plain)  # dropout shrinks the delta


def test_sgd_dropout_is_seeded(data):
    X, R, q = data
    s = dict(SETTINGS, epochs=3)
    prob = ModuleProblem("layers.0.q_proj", X, R, X, R)

    def run(seed, dropout):
        A = {prob.key: np.full((4, 6), 0.1, np.float32)}
        B = {prob.key: np.zeros((4, 4), np.float32)}
        return train([prob], A, B, 1.0, q, q, TrainSettings(**s, dropout=dropout, seed=seed, num_threads=1)).B[prob.key]

    np.testing.assert_array_equal(run(1, P), run(1, P))
    assert not np.array_equal(run(1, P), run(2, P))
    assert not np.array_equal(run(1, P), run(1, 0.0))


def test_sgd_dropout_validation():
    with pytest.raises(ValueError, match="^dropout must lie in"):
        TrainSettings(dropout=1.0).validate()


def test_exact_dropout_is_the_expected_loss_minimiser(data):
    """solve_adapter(dropout=p) minimises the clean loss plus dropout's ridge, and its clean
    training loss is higher than the dropout-free optimum's (the bias it buys robustness with)."""
    X, R, q = data
    st = ModuleStats(6, 4).update(X, R, q)
    clean = solve_adapter({"layers.0.q_proj": st}, 4, 1.0, ridge_rel=1e-12)["layers.0.q_proj"]
    drop = solve_adapter({"layers.0.q_proj": st}, 4, 1.0, ridge_rel=1e-12, dropout=P)["layers.0.q_proj"]
    G = st.G
    np.testing.assert_allclose(drop.delta(), ridge_lstsq(X, R, q, dropout_ridge(G, P)), rtol=1e-4, atol=1e-5)
    assert drop.train_loss > clean.train_loss
    assert np.linalg.norm(drop.delta()) < np.linalg.norm(clean.delta())
