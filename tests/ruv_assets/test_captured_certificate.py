"""A teacher-forced capture's adapter carries the optimality certificate too: fitted from per-layer
statistics files as the capture writes them (no model needed), with its gap to the rank-r optimum
and the optimum's held-out loss; bad statistics fail with one line naming the module."""

import numpy as np
import pytest

from ruv_kernels.adapter import AdapterSpec
from ruv_kernels.exact import ExactSolveError
from ruv_resources.capture.files import save_layer_stats
from ruv_resources.capture.fit import LayerStats
from ruv_assets.realmodel.captured import certify_on_statistics, fit_from_statistics

SPEC = AdapterSpec(rank=2, alpha=4.0, targets=("q_proj", "v_proj"), hidden_size=16, intermediate_size=24, num_layers=2)


def write_statistics(directory, seed=0, noise=0.05):
    """Both layers' statistics of X -> R = X D^T + noise, D of rank 2 per module; returns {key: D}."""
    rng = np.random.default_rng(seed)
    truth = {}
    for layer in range(SPEC.num_layers):
        stats = LayerStats(layer)
        X = {split: rng.standard_normal((n, 16)) for split, n in (("train", 300), ("val", 120))}
        for split, Xs in X.items():
            stats.n[split] = Xs.shape[0]
            stats.gram[split] = {"hidden": Xs.T @ Xs}
            stats.cross[split], stats.rr[split] = {}, {}
        for module in SPEC.targets:
            key = f"layers.{layer}.{module}"
            d_in, d_out = SPEC.shape_of(key)
            truth[key] = rng.standard_normal((d_out, 2)) @ rng.standard_normal((2, d_in)) / 4
            for split, Xs in X.items():
                R = Xs @ truth[key].T + noise * rng.standard_normal((Xs.shape[0], d_out))
                stats.cross[split][key] = Xs.T @ R
                stats.rr[split][key] = float(np.sum(R * R))
        save_layer_stats(directory, stats)
    return truth


def test_the_fit_is_certified_optimal(tmp_path):
    truth = write_statistics(tmp_path)
    logged = []
    adapter, metrics = fit_from_statistics(tmp_path, SPEC, 1e-6, logged.append)
    for key, D in truth.items():
        assert np.linalg.norm(adapter.delta(key) - D) < 0.02 * np.linalg.norm(D)
    # the fit is the rank-r optimum (up to the tiny ridge and float32 factors)
    assert 0 <= metrics["optimality_gap"] < 1e-5
    assert metrics["train_loss"] == pytest.approx(metrics["optimal_train_loss"], rel=1e-5)
    assert metrics["optimal_train_loss"] == pytest.approx(0.05 ** 2, rel=0.2)  # the noise per output element
    assert metrics["val_loss"] == pytest.approx(metrics["optimal_val_loss"], rel=1e-4)
    assert logged == ["solved layer 1/2", "solved layer 2/2"]


def test_the_optimum_is_that_of_the_adapters_rank(tmp_path):
    """A rank-1 spec is certified against the rank-1 optimum (gap ~0), whose loss is far above rank 2's."""
    write_statistics(tmp_path)
    _, rank2 = fit_from_statistics(tmp_path, SPEC, 1e-6, lambda _: None)
    spec1 = AdapterSpec(rank=1, alpha=2.0, targets=SPEC.targets, hidden_size=16, intermediate_size=24, num_layers=2)
    _, rank1 = fit_from_statistics(tmp_path, spec1, 1e-6, lambda _: None)
    assert rank1["optimal_train_loss"] > 5 * rank2["optimal_train_loss"]
    assert 0 <= rank1["optimality_gap"] < 1e-5


def test_a_strongly_regularised_fit_shows_its_gap(tmp_path):
    """The certificate measures the stored factors against the least-regularised optimum: a fit at
    ridge_rel 1 is shrunk, and its gap says by how much (its training loss against the optimum's)."""
    write_statistics(tmp_path)
    _, fit = fit_from_statistics(tmp_path, SPEC, 1.0, lambda _: None)
    assert fit["certificate_ridge_rel"] == pytest.approx(1e-9)  # these Grams are well conditioned
    assert fit["optimality_gap"] > 0.05
    assert fit["train_loss"] == pytest.approx(fit["optimal_train_loss"] * (1 + fit["optimality_gap"]), rel=1e-9)


@pytest.mark.parametrize("tensor", ["cross.train.layers.1.v_proj", "cross.val.layers.1.v_proj", "gram.val.hidden"])
def test_nan_in_the_statistics_names_the_module(tmp_path, tensor):
    from safetensors.numpy import load_file, save_file

    write_statistics(tmp_path)
    path = tmp_path / "stats.layers.1.safetensors"
    tensors = load_file(str(path))
    tensors[tensor][0, 0] = np.nan
    save_file(tensors, str(path), metadata={"format": "ruv-stats"})
    module = "v_proj" if "v_proj" in tensor else "q_proj"  # a NaN Gram is met by its first module
    with pytest.raises(ExactSolveError, match=rf"^layers\.1\.{module}: .*NaN"):
        fit_from_statistics(tmp_path, SPEC, 1e-6, lambda _: None)


def test_any_adapter_of_the_shapes_is_certified(tmp_path):
    """Another adapter (here the fit with B shrunk by 10%, as a weight-space approximation might be)
    is measured against the same optimum: the same optimal losses, a larger gap."""
    from ruv_kernels.adapter import LoraAdapter

    write_statistics(tmp_path)
    fitted, best = fit_from_statistics(tmp_path, SPEC, 1e-6, lambda _: None)
    shrunk = LoraAdapter(SPEC, fitted.A, {k: 0.9 * b for k, b in fitted.B.items()})
    other = certify_on_statistics(tmp_path, shrunk, 1e-6)
    assert other["optimal_train_loss"] == pytest.approx(best["optimal_train_loss"], rel=1e-12)
    assert other["optimal_val_loss"] == pytest.approx(best["optimal_val_loss"], rel=1e-12)
    assert other["optimality_gap"] > 0.5 and other["val_loss"] > best["val_loss"]


def test_a_gram_singular_to_its_float32_rounding_is_certified_at_a_larger_ridge(tmp_path):
    """Fewer training rows than inputs, stored as float32: the vanishing certificate ridge does not
    factor; the certificate says which ridge it used, never more than the fit's own."""
    rng = np.random.default_rng(5)
    for layer in range(SPEC.num_layers):
        stats = LayerStats(layer)
        X = {"train": rng.standard_normal((6, 16)) * np.logspace(0, 3, 16), "val": rng.standard_normal((40, 16))}
        for split, Xs in X.items():
            stats.n[split] = Xs.shape[0]
            stats.gram[split] = {"hidden": Xs.T @ Xs}
            stats.cross[split] = {f"layers.{layer}.{m}": Xs.T @ rng.standard_normal((Xs.shape[0], 16)) for m in SPEC.targets}
            stats.rr[split] = {key: 1.0e3 for key in stats.cross[split]}
        save_layer_stats(tmp_path, stats)
    _, metrics = fit_from_statistics(tmp_path, SPEC, 1e-4, lambda _: None)
    assert 1e-9 < metrics["certificate_ridge_rel"] < 1e-4  # neither the vanishing ridge nor the fit's own
    assert np.isfinite(metrics["optimality_gap"]) and metrics["optimal_val_loss"] > 0
