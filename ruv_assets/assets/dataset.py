"""`synthetic_dataset`: the task's training data, seeded synthetic (known answer) or a user folder."""

import numpy as np
from dagster import AssetExecutionContext, Config, DataVersion, MetadataValue, Output, asset
from pydantic import Field

from ruv_kernels.modules import INPUT_KIND
from ruv_kernels.synthetic import generate_task
from ruv_resources.dagster_resources import StoreResource
from ruv_resources.dataset_format import Dataset, check_dataset, load_user_folder, save_dataset
from ruv_resources.store import StoredObject
from ruv_assets.catalogue import versions
from ruv_assets.catalogue.partitions import adapter_partitions
from ruv_assets.catalogue.preset_seed import stable_seed
from ruv_assets.catalogue.catalogue import current_catalogue, current_geometry
from ruv_assets.catalogue.geometry import GeometryResource
from ruv_assets.orchestration.worker import where_it_ran


class DatasetConfig(Config):
    """Where the examples come from and how many."""

    n_examples: int = Field(1000, ge=2, description="synthetic examples to generate")
    seed: int = Field(0, description="added to the task's own seed")
    user_folder: str | None = Field(None, description="folder of layers.<i>.<module>.safetensors X/R files; replaces synthetic data")
    float16: bool = Field(False, description="store inputs and targets as float16 (mixed precision)")


def synthetic_to_dataset(name: str, task, targets: list[str], num_layers: int, seed: int) -> Dataset:
    """Adapt the generator's output to the on-disk dataset layout."""
    input_of = {f"layers.{i}.{m}": f"layers.{i}.{INPUT_KIND[m]}" for i in range(num_layers) for m in targets}
    truth = {key: (np.asarray(U), np.asarray(V)) for key, (U, V) in task.truth.items()}
    meta = {"kind": "synthetic", "task": name, "seed": seed, "noise_floor": float(task.noise_floor), "targets": targets}
    return Dataset(dict(task.inputs), dict(task.targets), input_of, task.quality, task.train_idx, task.val_idx, meta, task.noise_std, truth)


@asset(
    partitions_def=adapter_partitions,
    deps=["adapter_entry", "base_model", "capture_teacher", "capture_corpus"],
    code_version=versions.SYNTHETIC_DATASET,
    io_manager_key="store_io",
    group_name="data",
    kinds={"numba", "safetensors"},
    description="The task's data: seeded synthetic data with a known answer, a validated user folder, or activations "
                "captured from a teacher on the base model (entries with capture:).",
)
def synthetic_dataset(context: AssetExecutionContext, config: DatasetConfig, store: StoreResource, geometry: GeometryResource) -> Output[StoredObject]:
    name = context.partition_key
    adapter = current_catalogue().adapter(name)
    geo = geometry.geometry()
    targets = list(adapter.target_modules)
    seed = stable_seed(name) + config.seed
    if adapter.capture is not None:
        return _captured(context, name, adapter, store)
    if config.user_folder:
        dataset = load_user_folder(config.user_folder, **geo.dims(), seed=seed)
    else:
        task = generate_task(name, targets, adapter.rank, geo.hidden_size, geo.intermediate_size, geo.num_layers, config.n_examples, seed,
                             q_size=geo.q_size, kv_size=geo.kv_size)
        dataset = synthetic_to_dataset(name, task, targets, geo.num_layers, seed)
    dataset.meta["geometry"] = geo.model_dump()
    check_dataset(dataset, **geo.dims())
    stored = store.store().write("synthetic_dataset", name, lambda d: save_dataset(dataset, d, dtype="float16" if config.float16 else "float32"))
    floor = dataset.meta.get("noise_floor")
    return Output(
        stored,
        data_version=DataVersion(stored.data_version),
        metadata={
            "path": MetadataValue.path(str(stored.path)),
            "kind": dataset.meta["kind"],
            "n_train": int(len(dataset.train_idx)),
            "n_val": int(len(dataset.val_idx)),
            "noise_floor": float(floor) if floor is not None else MetadataValue.null(),
            "seed": seed,
            "modules": len(dataset.targets),
            "mean_quality": float(dataset.quality.mean()),
            "bytes": int(sum(p.stat().st_size for p in stored.path.iterdir())),
            **where_it_ran(),
        },
    )


def _captured(context, name, adapter, store) -> Output[StoredObject]:
    """Token windows and (teacher-forced) per-layer statistics from the base model and the teacher."""
    from ruv_assets.realmodel import captured

    base_model = current_catalogue().base_model
    meta = {}
    stored = store.store().write("synthetic_dataset", name,
                                 lambda d: meta.update(captured.build_dataset(d, name, adapter.capture, base_model, context.log.info)))
    sizes = captured.stored_sizes(adapter.spec(current_geometry()), current_geometry().dims(), meta["train_tokens"] + meta["heldout_tokens"])
    return Output(
        stored,
        data_version=DataVersion(stored.data_version),
        metadata={
            "path": MetadataValue.path(str(stored.path)),
            "kind": "captured",
            "mode": meta["mode"],
            "teacher": meta["teacher"],
            "n_train": meta["train_tokens"],
            "n_val": meta["heldout_tokens"],
            "windows": meta["windows"],
            "train_windows": meta["train_windows"],
            "heldout_windows": meta["heldout_windows"],
            "texts_shorter_than_window": meta["texts_shorter_than_window"],
            "noise_floor": MetadataValue.null(),
            "seed": meta["seed"],
            "base_model_hash": meta["base_model_hash"],
            "teacher_hash": meta["teacher_hash"],
            "corpus_hash": meta["corpus_hash"],
            "capture_tokens_per_s": meta.get("capture_tokens_per_s", MetadataValue.null()),
            "stats_bytes": sizes["stats_bytes"],
            "raw_float16_bytes_same_tokens": sizes["raw_float16_bytes"],
            "bytes": int(sum(p.stat().st_size for p in stored.path.iterdir())),
            **where_it_ran(),
        },
    )
