"""`trained_adapter`: the best checkpoint of a quality-weighted training run on the task dataset.

`solver: sgd` (default) runs the optimiser family of kernels.train; `solver: exact` solves each
module in closed form from the dataset's statistics (ruv_assets.judging.optimum). Either way the stored
checkpoint carries its optimality certificate (optimal_train_loss, optimality_gap,
optimal_val_loss). Retraining starts from the partition's last trained version when its shapes
still fit, with EWC++ anchored there (its Fisher is stored beside the weights) or, with
`consolidation: exact`, against the old task's stored Gram; otherwise from the preset.
Blocking checks (finite weights, better than the zero adapter, near the noise floor) gate
promotion.
"""

import json
import time
from pathlib import Path

import numpy as np
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetIn,
    DataVersion,
    MetadataValue,
    Output,
    asset,
)


from ruv_kernels.adapter import LoraAdapter
from ruv_kernels.train import EwcState, TrainResult, train
from ruv_resources.dagster_resources import StoreResource
from ruv_resources.dataset_format import check_dataset, load_dataset
from ruv_resources.errors import StoreError
from ruv_resources.ewc_format import load_ewc_state, load_gram_state, save_ewc_state, save_gram_state
from ruv_resources.peft_format import load_adapter, save_adapter
from ruv_resources.store import StoredObject
from ruv_assets.judging import optimum
from ruv_assets.catalogue import versions
from ruv_assets.catalogue.config import AdapterMetadata
from ruv_assets.judging.evaluation import delta_rel_error, problems_for, validation_loss, zero_validation_loss
from ruv_assets.catalogue.partitions import adapter_partitions
from ruv_assets.judging.plots import loss_curve_png, markdown_image, markdown_table, tradeoff_png
from ruv_assets.catalogue.catalogue import current_catalogue
from ruv_assets.catalogue.geometry import GeometryResource
from ruv_assets.orchestration.worker import where_it_ran
from ruv_assets.catalogue.training_config import TrainingConfig

HISTORY_NAME = "history.json"
NOISE_FLOOR_TOLERANCE = 0.25  # promotion gate: val loss at most 25% above the noise floor
# what a captured fit records of its certificate (teacher-forced: figures; sequential: why there are none)
CERTIFICATE_FIELDS = ("optimal_train_loss", "optimality_gap", "optimal_val_loss", "certificate_ridge_rel", "certificate")

CHECKS = [
    AssetCheckSpec("weights_finite", asset="trained_adapter", blocking=True, description="every A and B value is finite"),
    AssetCheckSpec("beats_zero_adapter", asset="trained_adapter", blocking=True, description="validation loss below the zero adapter's"),
    AssetCheckSpec("near_noise_floor", asset="trained_adapter", blocking=True,
                   description=f"validation loss at most {NOISE_FLOOR_TOLERANCE:.0%} above the dataset's noise floor (synthetic data)"),
    AssetCheckSpec("removes_teacher_kl", asset="trained_adapter", blocking=True,
                   description="captured data: on held-out text, with the adapter loaded by PEFT on the base model, at least "
                               "the entry's min_kl_removed of KL(teacher || base) is removed"),
]


def previous_version(store, name: str, spec) -> tuple[LoraAdapter, EwcState | None, str, Path] | None:
    """The last trained version of this partition (adapter, EWC anchor, data version, directory),
    if its shapes still fit the declared spec."""
    try:
        last = store.get("trained_adapter", name)
    except StoreError:
        return None
    loaded = load_adapter(last.path)
    if loaded.adapter.spec != spec:
        return None
    adapter = loaded.adapter.astype(np.float32)
    return adapter, load_ewc_state(last.path, adapter.A, adapter.B), last.data_version, last.path


def _deltas(adapter: LoraAdapter) -> dict[str, np.ndarray]:
    """Each module's dense delta s B A (float64), the old task's point of exact consolidation."""
    return {k: adapter.scale * (adapter.B[k].astype(np.float64) @ adapter.A[k].astype(np.float64)) for k in adapter.keys()}


def _stored_gram(name: str, version: str, path: Path) -> dict:
    grams = load_gram_state(path)
    if grams is None:
        raise ValueError(f"consolidation: trained_adapter[{name}] {version[:12]} stores no training Gram (made before "
                         "exact consolidation existed); retrain once with continue_from_last: false")
    return grams


@asset(
    partitions_def=adapter_partitions,
    code_version=versions.TRAINED_ADAPTER,
    io_manager_key="store_io",
    group_name="adapters",
    kinds={"numba", "safetensors"},
    ins={"preset_adapter": AssetIn(), "synthetic_dataset": AssetIn()},
    deps=["base_model", "capture_teacher"],
    check_specs=CHECKS,
    description="Best checkpoint of quality-weighted LoRA training on the task dataset (SGD family or the exact "
                "solver; EWC++ or exact consolidation when retraining), with its optimality certificate.",
)
def trained_adapter(
    context: AssetExecutionContext,
    config: TrainingConfig,
    store: StoreResource,
    geometry: GeometryResource,
    preset_adapter: StoredObject,
    synthetic_dataset: StoredObject,
):
    name = context.partition_key
    entry = current_catalogue().adapter(name)
    settings = config.settings(entry.dropout)  # a bad config fails here, before anything is read or written
    geo = geometry.geometry()
    declared = entry.spec(geo)
    start = load_adapter(preset_adapter.path, **geo.dims()).adapter
    if start.spec != declared:
        raise ValueError(f"preset_adapter[{name}] does not match the catalogue (rank/targets changed?); materialise preset_adapter first")
    if entry.capture is not None:
        yield from _train_captured(context, name, entry, declared, store, synthetic_dataset)
        return
    dataset = load_dataset(synthetic_dataset.path)
    check_dataset(dataset, **geo.dims())

    exact = config.solver == "exact"
    ewc, resumed_from, previous = None, None, None
    if config.continue_from_last:
        previous = previous_version(store.store(), name, declared)
        if previous is not None and exact and config.consolidation != "exact":
            context.log.info(f"solver exact without consolidation: trained_adapter[{name}] {previous[2][:12]} is not used "
                             "(EWC++ is the SGD path's; consolidation: exact keeps the old task)")
            previous = None
        if previous is not None:
            start, ewc, resumed_from, _ = previous
            how = (f"exact consolidation lambda {config.consolidation_lambda}" if config.consolidation == "exact"
                   else f"EWC++ lambda {settings.ewc_lambda}")
            context.log.info(f"retraining from trained_adapter[{name}] {resumed_from[:12]} with {how}")
    keys = start.keys()
    problems = problems_for(dataset, keys)
    started = time.perf_counter()
    # the solver's and the certificate's statistics
    stats = optimum.statistics(dataset, keys, settings.quality_threshold, precision=config.statistics_precision)
    stats_seconds = time.perf_counter() - started
    started = time.perf_counter()
    old = None
    if exact:
        if previous is not None:
            old = (_deltas(start), _stored_gram(name, resumed_from, previous[3]))
        fit = optimum.exact_fit(stats, declared.rank, start.scale, ridge_rel=config.ridge_rel, dropout=settings.dropout,
                                select_rank=config.select_rank, old=old, lam=config.consolidation_lambda)
        result = TrainResult(A=fit.A, B=fit.B, history=[{"epoch": 0, "step": 0, "train_loss": fit.train_loss,
                                                         "val_loss": fit.val_loss, "lr": 0.0, "ewc_penalty": 0.0,
                                                         "kind": "exact"}],
                             train_loss=fit.train_loss, val_loss=fit.val_loss)
        ewc = None
    else:
        result = train(
            problems,
            {k: start.A[k].astype(np.float32).copy() for k in keys},
            {k: start.B[k].astype(np.float32).copy() for k in keys},
            start.scale,
            dataset.quality[dataset.train_idx],
            dataset.quality[dataset.val_idx],
            settings,
            ewc=ewc,
        )
    seconds = time.perf_counter() - started
    sweep = {}
    if exact and old is not None:  # the trade-off around the chosen lambda, on the asset page
        lams = sorted(set(optimum.SWEEP_LAMS) | {float(config.consolidation_lambda)})
        rows = optimum.consolidation_curve(stats, declared.rank, start.scale, old, ridge_rel=config.ridge_rel,
                                           dropout=settings.dropout, lams=lams)
        png = tradeoff_png({"exact consolidation": rows}, f"trained_adapter[{name}]: lambda sweep", y="old_loss_increase",
                           ylabel="old task's loss increase (its stored Gram)")
        sweep = {"consolidation_sweep": MetadataValue.md(markdown_image(png, "consolidation sweep") + "\n\n"
                                                          + markdown_table(rows))}
    trained = LoraAdapter(declared, result.A, result.B)
    dtype = "float16" if config.mixed_precision else "float32"
    stored_adapter = trained.astype(np.float16) if config.mixed_precision else trained
    cert = optimum.certify(stored_adapter.A, stored_adapter.B, declared.scale, stats)  # after any float16 rounding

    q_val = dataset.quality[dataset.val_idx]
    val_loss = validation_loss(stored_adapter.astype(np.float32), problems, q_val)  # after any float16 rounding
    zero_loss = zero_validation_loss(problems, q_val)
    floor = dataset.meta.get("noise_floor")
    rel_error = delta_rel_error(stored_adapter.astype(np.float32), dataset)
    n_used = int(np.sum(dataset.quality[dataset.train_idx] >= settings.quality_threshold))
    solver = {"solver": config.solver, "dropout": float(settings.dropout),
              "consolidation": (config.consolidation if resumed_from else "none")}
    if exact:
        solver.update(ridge_rel=float(config.ridge_rel), select_rank=bool(config.select_rank and old is None),
                      kept_rank=max(fit.ranks.values()), consolidation_lambda=float(config.consolidation_lambda))
    # Reproducible files (timestamps fixed at 0): the same data, start and settings give the same
    # bytes and data version; when it was made lives in Dagster's event log.
    metadata = AdapterMetadata(
        name=name,
        created_at_ms=0,
        modified_at_ms=0,
        dataset_description=f"{dataset.meta.get('kind')} {name} data, seed {dataset.meta.get('seed')}, dataset {synthetic_dataset.data_version[:12]}",
        n_examples=n_used,
        quality_score=float(np.clip(dataset.quality[dataset.train_idx].mean(), 0, 1)),
        tags=entry.tags,
        custom={"val_loss": val_loss, "epochs_run": result.epochs_run, "dataset_version": synthetic_dataset.data_version,
                "resumed_from": resumed_from or "", **cert, **solver},
    )

    def write(directory):
        save_adapter(stored_adapter, directory, metadata=metadata.model_dump(mode="json"), dtype=dtype)
        save_ewc_state(directory, result.fisher)
        save_gram_state(directory, stats.train)  # the exact Fisher, for consolidation: exact next time
        (directory / HISTORY_NAME).write_text(json.dumps(result.history, indent=1) + "\n")

    finite = stored_adapter.astype(np.float32).is_finite()  # float16 overflow shows as inf after upcasting
    beats = bool(val_loss < zero_loss)
    near = True if not floor else bool(val_loss <= (1 + NOISE_FLOOR_TOLERANCE) * floor)
    # Only a version that passes its checks becomes the one downstream assets and retraining read.
    stored = store.store().write("trained_adapter", name, write, set_latest=finite and beats and near)
    history_rows = [{k: h[k] for k in ("epoch", "step", "train_loss", "val_loss", "lr")} for h in result.history]
    yield Output(
        stored,
        data_version=DataVersion(stored.data_version),
        metadata={
            "path": MetadataValue.path(str(stored.path)),
            "train_loss": float(cert["train_loss"]),
            "optimal_train_loss": float(cert["optimal_train_loss"]),
            "optimality_gap": float(cert["optimality_gap"]),
            "optimal_val_loss": float(cert["optimal_val_loss"]),
            "val_loss": val_loss,
            "zero_adapter_val_loss": zero_loss,
            "noise_floor": float(floor) if floor is not None else MetadataValue.null(),
            "val_over_floor": float(val_loss / floor) if floor else MetadataValue.null(),
            "delta_rel_error": rel_error if rel_error is not None else MetadataValue.null(),
            "epochs_run": int(result.epochs_run),
            "best_epoch": int(result.best_epoch),
            "early_stopped": bool(result.early_stopped),
            "steps": int(result.steps),
            "examples_used": n_used,
            "train_seconds": round(seconds, 3),
            "statistics_seconds": round(stats_seconds, 3),
            "statistics_precision": stats.precision,
            **solver,
            "dtype": dtype,
            "ewc": bool(ewc is not None),
            "resumed_from": resumed_from or "preset",
            "dataset_version": synthetic_dataset.data_version,
            "loss_curve": MetadataValue.md(markdown_image(loss_curve_png(result.history, floor, f"trained_adapter[{name}]"), "loss curve")),
            "history": MetadataValue.md(markdown_table(history_rows)),
            **sweep,
            **where_it_ran(),
        },
    )
    yield AssetCheckResult(check_name="weights_finite", passed=bool(finite), severity=AssetCheckSeverity.ERROR)
    yield AssetCheckResult(check_name="beats_zero_adapter", passed=beats, severity=AssetCheckSeverity.ERROR,
                           metadata={"val_loss": val_loss, "zero_adapter_val_loss": zero_loss})
    yield AssetCheckResult(check_name="near_noise_floor", passed=near, severity=AssetCheckSeverity.ERROR,
                           metadata={"val_over_floor": float(val_loss / floor) if floor else MetadataValue.null(),
                                     "tolerance": NOISE_FLOOR_TOLERANCE})
    yield AssetCheckResult(check_name="removes_teacher_kl", passed=True, severity=AssetCheckSeverity.ERROR,
                           metadata={"applies": "captured data only"})


def _train_captured(context, name, entry, spec, store, dataset: StoredObject):
    """Fit on captured data, store the adapter, judge it on the base model with PEFT, gate on it."""
    from ruv_assets.realmodel import captured

    base_model = current_catalogue().base_model
    adapter, fit = captured.train(name, spec, entry.capture, dataset.path, base_model, context.log.info)
    metadata = AdapterMetadata(name=name, created_at_ms=0, modified_at_ms=0,
                               dataset_description=f"captured {name} data, dataset {dataset.data_version[:12]}",
                               tags=entry.tags, custom={"dataset_version": dataset.data_version, "mode": fit["mode"],
                                                        **{k: fit[k] for k in CERTIFICATE_FIELDS if k in fit}})
    finite = adapter.is_finite()
    scores = captured.judge(name, entry.capture, dataset.path, adapter, base_model, context.log.info)
    beats = bool(scores["teacher_kl"] < scores["teacher_kl_base"])
    removes = bool(scores["kl_removed"] >= entry.capture.min_kl_removed)
    metadata.custom.update({k: scores[k] for k in ("teacher_kl", "teacher_kl_base", "teacher_top1", "kl_removed")})
    # only a version that passes its checks becomes LATEST
    stored = store.store().write("trained_adapter", name, lambda d: save_adapter(adapter, d, metadata=metadata.model_dump(mode="json"),
                                                                                 base_model=base_model), set_latest=finite and beats and removes)
    yield Output(
        stored,
        data_version=DataVersion(stored.data_version),
        metadata={
            "path": MetadataValue.path(str(stored.path)),
            **{k: (float(v) if isinstance(v, float) else MetadataValue.null() if v is None else v) for k, v in fit.items()},
            **{k: float(v) if isinstance(v, float) else int(v) for k, v in scores.items()},
            "noise_floor": MetadataValue.null(),
            "dataset_version": dataset.data_version,
            "dtype": "float32",
            **where_it_ran(),
        },
    )
    yield AssetCheckResult(check_name="weights_finite", passed=bool(finite), severity=AssetCheckSeverity.ERROR)
    yield AssetCheckResult(check_name="beats_zero_adapter", passed=beats, severity=AssetCheckSeverity.ERROR,
                           metadata={"teacher_kl": scores["teacher_kl"], "teacher_kl_base": scores["teacher_kl_base"]})
    yield AssetCheckResult(check_name="near_noise_floor", passed=True, severity=AssetCheckSeverity.ERROR,
                           metadata={"applies": "synthetic data only"})
    yield AssetCheckResult(check_name="removes_teacher_kl", passed=removes, severity=AssetCheckSeverity.ERROR,
                           metadata={"kl_removed": scores["kl_removed"], "min_kl_removed": entry.capture.min_kl_removed})
