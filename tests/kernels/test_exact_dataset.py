"""Dataset statistics: splits as weights over all rows equal statistics of the gathered split."""

import numpy as np
import pytest

from ruv_kernels.exact import ExactSolveError, dataset_stats, split_weights
from tests.kernels.exact_reference import stats


def _dataset(n=90, hidden=8, inter=12, seed=0):
    rng = np.random.default_rng(seed)
    inputs = {"layers.0.hidden": rng.standard_normal((n, hidden)).astype(np.float16),
              "layers.0.mlp_act": rng.standard_normal((n, inter)).astype(np.float32)}
    targets = {"layers.0.q_proj": rng.standard_normal((n, hidden)).astype(np.float16),
               "layers.0.v_proj": rng.standard_normal((n, hidden)).astype(np.float16),
               "layers.0.up_proj": rng.standard_normal((n, inter)).astype(np.float32),
               "layers.0.down_proj": rng.standard_normal((n, hidden)).astype(np.float32)}
    quality = rng.uniform(0, 1, n).astype(np.float32)
    return inputs, targets, quality


def test_split_weights_filter_and_place():
    q = np.array([0.9, 0.2, 0.5, 0.7, 0.1], np.float32)
    np.testing.assert_array_equal(split_weights(5, [0, 1, 3], q, threshold=0.5), q * [1, 0, 0, 1, 0])
    np.testing.assert_array_equal(split_weights(5, [1, 2], q), q * [0, 1, 1, 0, 0])
    with pytest.raises(ExactSolveError, match="split rows must lie"):
        split_weights(5, [5], q)


def test_dataset_stats_equal_the_gathered_split():
    inputs, targets, quality = _dataset()
    train = np.arange(0, 90, 3)
    w = split_weights(90, train, quality, threshold=0.3)
    got = dataset_stats(inputs, targets, w)
    assert got["layers.0.q_proj"].G is got["layers.0.v_proj"].G is got["layers.0.up_proj"].G
    assert got["layers.0.down_proj"].G is not got["layers.0.q_proj"].G
    keep = train[quality[train] >= 0.3]
    for key, st in got.items():
        ik = "layers.0.mlp_act" if key.endswith("down_proj") else "layers.0.hidden"
        G, C, rr, qs, n = stats(inputs[ik][keep], targets[key][keep], quality[keep])
        np.testing.assert_allclose(st.G, G, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(st.C, C, rtol=1e-12, atol=1e-12)
        assert st.rr == pytest.approx(rr, rel=1e-12) and st.n == n == keep.size
        assert st.q_sum == pytest.approx(qs, rel=1e-6)


def test_missing_input_or_unknown_module():
    inputs, targets, quality = _dataset()
    del inputs["layers.0.mlp_act"]
    with pytest.raises(ExactSolveError, match=r"^layers\.0\.down_proj: needs input layers\.0\.mlp_act"):
        dataset_stats(inputs, targets, quality)
    with pytest.raises(ExactSolveError, match="unknown module 'w_proj'"):
        dataset_stats(inputs, {"layers.0.w_proj": targets["layers.0.q_proj"]}, quality)


def test_solve_adapter_shares_factors_and_matches_single_solves():
    from ruv_kernels.exact import dropout_ridge, solve_adapter, solve_reduced_rank

    inputs, targets, quality = _dataset(n=120)
    tr = dataset_stats(inputs, targets, split_weights(120, np.arange(90), quality, threshold=0.2))
    va = dataset_stats(inputs, targets, split_weights(120, np.arange(90, 120), quality))
    sols = solve_adapter(tr, 3, 2.0, val=va, ridge_rel=1e-3, dropout=0.1, select_rank=True)
    assert set(sols) == set(targets)
    for key, sol in sols.items():
        st = tr[key]
        ref = solve_reduced_rank(st.G, st.C, 3, 2.0, ridge=dropout_ridge(st.G, 0.1), ridge_rel=1e-3, val=va[key],
                                 select_rank=True)
        np.testing.assert_array_equal(sol.A, ref.A)
        assert sol.val_loss == pytest.approx(va[key].loss(sol.delta()), rel=1e-6)
    with pytest.raises(ExactSolveError, match="validation statistics name other modules"):
        solve_adapter(tr, 3, 2.0, val={k: va[k] for k in list(va)[:2]})


def test_pack_and_unpack_store_each_shared_gram_once():
    from ruv_kernels.exact import pack_stats, unpack_stats

    inputs, targets, quality = _dataset()
    st = dataset_stats(inputs, targets, quality)
    arrays, meta = pack_stats(st)
    assert sorted(k for k in arrays if k.endswith(".G")) == ["layers.0.hidden.G", "layers.0.mlp_act.G"]
    assert meta["layers.0.q_proj"] == meta["layers.0.up_proj"] == "layers.0.hidden"
    back = unpack_stats(arrays, meta)
    assert back["layers.0.q_proj"].G is back["layers.0.v_proj"].G
    for key, s in st.items():
        b = back[key]
        np.testing.assert_array_equal(b.G, s.G)
        np.testing.assert_array_equal(b.C, s.C)
        assert (b.rr, b.q_sum, b.n) == (s.rr, s.q_sum, s.n)
        assert b.solve(2, 1.0, ridge_rel=1e-3).A.tobytes() == s.solve(2, 1.0, ridge_rel=1e-3).A.tobytes()
    del arrays["layers.0.mlp_act.G"]
    with pytest.raises(ExactSolveError, match=r"^layers\.0\.down_proj: stored statistics lack layers\.0\.mlp_act\.G$"):
        unpack_stats(arrays, meta)


def test_an_unpacked_module_with_its_own_gram_keeps_accumulating():
    from ruv_kernels.exact import ModuleStats, pack_stats, unpack_stats

    inputs, targets, quality = _dataset()
    X, R = inputs["layers.0.mlp_act"], targets["layers.0.up_proj"][:, :8].copy()
    one = ModuleStats(12, 8, name="m").update(X[:40], R[:40], quality[:40])
    back = unpack_stats(*pack_stats({"m": one}))["m"]
    back.update(X[40:], R[40:], quality[40:])
    whole = ModuleStats(12, 8).update(X, R, quality)
    np.testing.assert_allclose(back.G, whole.G, rtol=1e-12)
    assert back.n == whole.n


def test_validation_from_raw_rows_equals_validation_from_statistics():
    from ruv_kernels.exact import ValidationData, dataset_rows, solve_adapter

    inputs, targets, quality = _dataset(n=150)
    tr = dataset_stats(inputs, targets, split_weights(150, np.arange(100), quality, threshold=0.2))
    wv = split_weights(150, np.arange(100, 150), quality)
    by_stats = solve_adapter(tr, 4, 2.0, val=dataset_stats(inputs, targets, wv), select_rank=True)
    rows = dataset_rows(inputs, targets, wv)
    assert rows["layers.0.q_proj"].X is inputs["layers.0.hidden"]  # referenced, not copied
    by_rows = solve_adapter(tr, 4, 2.0, val=rows, select_rank=True)
    for key in targets:
        np.testing.assert_allclose(by_rows[key].val_losses, by_stats[key].val_losses, rtol=1e-9)
        assert by_rows[key].effective_rank == by_stats[key].effective_rank
    with pytest.raises(ExactSolveError, match="no validation examples"):
        tr["layers.0.q_proj"].solve(2, 1.0, ridge=1.0, val=ValidationData(inputs["layers.0.hidden"], targets["layers.0.q_proj"], np.zeros(150)))
    with pytest.raises(ExactSolveError, match="validation data shapes"):
        tr["layers.0.q_proj"].solve(2, 1.0, ridge=1.0, val=ValidationData(inputs["layers.0.mlp_act"], targets["layers.0.q_proj"], wv))
