"""`trained_adapter` through Dagster with either solver, on a small geometry: the exact solver
(float16 storage included), the optimality certificate on every checkpoint, exact consolidation
from the stored Gram, and the bad configurations that must fail before anything is stored."""

from pathlib import Path

import numpy as np
import pytest
from dagster import DagsterInstance, materialize

from ruv_resources.dagster_resources import StoreIOManager, StoreResource
from ruv_resources.ewc_format import GRAM_NAME, load_gram_state
from ruv_resources.peft_format import load_adapter
from ruv_resources.store import ArtifactStore
from ruv_assets.assets.dataset import synthetic_dataset
from ruv_assets.assets.preset import preset_adapter
from ruv_assets.assets.trained import trained_adapter
from ruv_assets.catalogue.geometry import GeometryResource

NAME = "reviewer"  # rank 8, q_proj and v_proj, lora_dropout 0.1


def run(root, train_config=None, *, dataset_config=None, assets=("preset", "dataset", "trained"), instance=None):
    instance = instance or DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("adapters", [NAME])
    chosen = {"preset": preset_adapter, "dataset": synthetic_dataset, "trained": trained_adapter}
    ops = {"trained_adapter": {"config": {"num_threads": 1, **(train_config or {})}}} if "trained" in assets else {}
    if dataset_config:
        ops["synthetic_dataset"] = {"config": dataset_config}
    return materialize(
        list(chosen.values()), selection=[chosen[a] for a in assets], partition_key=NAME, instance=instance, raise_on_error=False,
        resources={"store": StoreResource(root=str(root)), "store_io": StoreIOManager(root=str(root)),
                   "geometry": GeometryResource(hidden_size=64, intermediate_size=96, num_layers=1)},
        run_config={"ops": ops},
    )


def trained_meta(result):
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key.path == ["trained_adapter"]]
    return {k: v.value for k, v in event.materialization.metadata.items()}


@pytest.mark.parametrize("float16", [False, True])
def test_exact_solver_reaches_the_optimum(tmp_path, float16):
    result = run(tmp_path, {"solver": "exact", "select_rank": False, "dropout": 0.0, "mixed_precision": float16},
                 dataset_config={"n_examples": 600, "float16": float16})
    assert result.success
    meta = trained_meta(result)
    assert meta["solver"] == "exact" and meta["epochs_run"] == 0
    # the full rank-r exact solution is the certificate's optimum, up to the ridge and float16 rounding
    assert abs(meta["optimality_gap"]) < (2e-3 if float16 else 1e-4)
    assert meta["val_loss"] == pytest.approx(meta["optimal_val_loss"], rel=5e-3 if float16 else 1e-4)
    assert meta["val_over_floor"] < 1.25 and meta["dtype"] == ("float16" if float16 else "float32")
    loaded = load_adapter(meta["path"])
    assert loaded.adapter.spec.rank == 8 and loaded.metadata["custom"]["optimality_gap"] == meta["optimality_gap"]
    assert (Path(meta["path"]) / GRAM_NAME).is_file()


def test_statistics_in_the_datas_precision_solve_like_float64(tmp_path):
    """The default (`statistics_precision: auto`) computes a float32 dataset's Gram with float32
    products, as BLAS on it would; the solution and its certificate agree with float64 products."""
    metas = {}
    for precision in ("auto", "float64"):
        root = tmp_path / precision
        result = run(root, {"solver": "exact", "select_rank": False, "dropout": 0.0, "statistics_precision": precision},
                     dataset_config={"n_examples": 600})
        assert result.success
        meta = trained_meta(result)
        metas[precision] = (meta, load_adapter(meta["path"]).adapter)
    (auto, a), (f64, b) = metas["auto"], metas["float64"]
    assert auto["statistics_precision"] == "mixed" and f64["statistics_precision"] == "float64"
    # training losses come from the statistics (rr - 2 tr(D C) + tr(D G D^T): float32 products
    # cancel against rr, 2e-5 here); validation losses from the raw rows
    for key, rel in (("optimal_train_loss", 1e-4), ("train_loss", 1e-4), ("optimal_val_loss", 1e-6), ("val_loss", 1e-6)):
        assert auto[key] == pytest.approx(f64[key], rel=rel)
        assert auto[key] != f64[key]  # really computed another way
    for key in a.keys():
        D = b.delta(key).astype(np.float64)
        assert np.linalg.norm(a.delta(key) - D) < 1e-4 * np.linalg.norm(D)


def test_sgd_checkpoint_carries_its_certificate(tmp_path):
    result = run(tmp_path, {"epochs": 5, "use_lora_dropout": True})  # stored, though too short to pass the noise-floor gate
    meta = trained_meta(result)
    assert meta["solver"] == "sgd" and meta["dropout"] == pytest.approx(0.1)  # the preset's lora_dropout
    assert meta["optimal_train_loss"] > 0 and meta["optimality_gap"] > 0  # 5 epochs: short of the optimum
    assert meta["train_loss"] == pytest.approx(meta["optimal_train_loss"] * (1 + meta["optimality_gap"]), rel=1e-9)
    assert meta["optimal_val_loss"] > 0


def test_exact_consolidation_stays_with_the_old_task(tmp_path):
    instance = DagsterInstance.ephemeral()
    first = run(tmp_path, {"solver": "exact", "dropout": 0.0}, instance=instance)
    assert first.success
    old = load_adapter(trained_meta(first)["path"]).adapter
    grams = load_gram_state(Path(trained_meta(first)["path"]))
    assert set(grams) == set(old.keys()) and grams["layers.0.q_proj"][0] is grams["layers.0.v_proj"][0]
    # a new task: the same geometry, other data; a strong penalty keeps the old delta
    ds = {"seed": 7}
    assert run(tmp_path, dataset_config=ds, assets=("dataset",), instance=instance).success
    strong = run(tmp_path, {"solver": "exact", "dropout": 0.0, "consolidation": "exact", "consolidation_lambda": 1e6},
                 assets=("trained",), instance=instance)
    meta = trained_meta(strong)  # stored, but it fails the new task's gates: the old task won
    assert not strong.success
    assert meta["consolidation"] == "exact" and meta["resumed_from"] != "preset"
    assert "data:image/png;base64," in meta["consolidation_sweep"] and "old_loss_increase" in meta["consolidation_sweep"]
    new = load_adapter(meta["path"]).adapter
    for k in old.keys():  # on the old task's inputs the new delta acts as the old one (the penalty is ~0)
        G, E, D = grams[k][0], new.delta(k).astype(np.float64) - old.delta(k), old.delta(k).astype(np.float64)
        assert np.sum((E @ G) * E) < 1e-6 * np.sum((D @ G) * D)
    fresh = run(tmp_path, {"solver": "exact", "dropout": 0.0, "continue_from_last": False}, assets=("trained",), instance=instance)
    assert trained_meta(fresh)["optimality_gap"] < meta["optimality_gap"]  # the new task alone fits it better


@pytest.mark.parametrize("config, message", [
    ({"consolidation": "exact"}, "consolidation: exact needs solver: exact"),
    ({"solver": "exact", "ridge_rel": -1.0}, "ridge_rel"),
    ({"dropout": 1.0}, "dropout"),
    ({"solver": "exact", "quality_threshold": 1.0}, "layers.0.q_proj: no examples above the quality threshold"),
])
def test_bad_solver_config_fails_before_writing(tmp_path, config, message):
    assert run(tmp_path, assets=("preset", "dataset")).success
    result = run(tmp_path, config, assets=("trained",))
    assert not result.success
    error = str(result.all_events)
    assert message in error
    assert ArtifactStore(tmp_path).versions("trained_adapter", NAME) == []


def test_an_unknown_statistics_precision_is_refused_at_launch(tmp_path):
    from dagster import DagsterInvalidConfigError

    with pytest.raises(DagsterInvalidConfigError, match="statistics_precision"):
        run(tmp_path, {"solver": "exact", "statistics_precision": "half"})
    assert ArtifactStore(tmp_path).versions("trained_adapter", NAME) == []


def test_exact_solver_on_a_user_folder(tmp_path):
    """Your own X/R files: the exact solver recovers the low-rank map behind them."""
    from safetensors.numpy import save_file

    from ruv_assets.catalogue.catalogue import current_catalogue, current_geometry

    spec = current_catalogue().adapter(NAME).spec(current_geometry(hidden_size=64, intermediate_size=96, num_layers=1))
    folder = tmp_path / "user"
    folder.mkdir()
    rng = np.random.default_rng(3)
    truth = {}
    for key in spec.keys():
        d_in, d_out = spec.shape_of(key)
        X = rng.standard_normal((400, d_in)).astype(np.float32)
        truth[key] = rng.standard_normal((d_out, 2)) @ rng.standard_normal((2, d_in)) / np.sqrt(d_in)
        R = (X @ truth[key].T + 0.01 * rng.standard_normal((400, d_out))).astype(np.float32)
        save_file({"X": X, "R": R}, str(folder / f"{key}.safetensors"))
    result = run(tmp_path / "store", {"solver": "exact"}, dataset_config={"user_folder": str(folder)})
    assert result.success
    meta = trained_meta(result)
    adapter = load_adapter(meta["path"]).adapter
    for key, D in truth.items():
        assert np.linalg.norm(adapter.delta(key) - D) < 0.02 * np.linalg.norm(D)
    assert meta["kept_rank"] == 2  # rank selection on the validation rows finds the true rank
