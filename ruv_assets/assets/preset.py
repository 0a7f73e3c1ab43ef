"""`preset_adapter`: an adapter's declared config and its PEFT initialisation (B = 0) in the store."""



import json

from dagster import AssetExecutionContext, DataVersion, MetadataValue, Output, asset

from ruv_kernels.adapter import LoraAdapter
from ruv_resources.dagster_resources import StoreResource
from ruv_resources.peft_format import save_adapter
from ruv_resources.store import StoredObject
from ruv_assets.catalogue import versions
from ruv_assets.catalogue.config import AdapterMetadata
from ruv_assets.catalogue.partitions import adapter_partitions
from ruv_assets.catalogue.preset_seed import stable_seed
from ruv_assets.catalogue.catalogue import current_catalogue
from ruv_assets.catalogue.geometry import GeometryResource
from ruv_assets.orchestration.worker import where_it_ran


@asset(
    partitions_def=adapter_partitions,
    deps=["adapter_entry"],
    code_version=versions.PRESET_ADAPTER,
    io_manager_key="store_io",
    group_name="adapters",
    kinds={"numba", "safetensors"},
    description="The adapter as declared in the catalogue, initialised like PEFT (A Kaiming-uniform, B = 0).",
)
def preset_adapter(context: AssetExecutionContext, store: StoreResource, geometry: GeometryResource) -> Output[StoredObject]:
    name = context.partition_key
    config = current_catalogue().adapter(name)
    geo = geometry.geometry()
    adapter = LoraAdapter.initialise(config.spec(geo), seed=stable_seed(name))
    # Reproducible: the same entry and code give byte-identical files, hence the same data version
    # (so re-materialising does not mark everything downstream unsynced); timestamps fixed at 0.
    meta = AdapterMetadata(name=name, tags=config.tags, dataset_description="initialisation, untrained",
                           created_at_ms=0, modified_at_ms=0,
                           custom={"stage": "preset", "description": config.description})
    stored = store.store().write(
        "preset_adapter", name, lambda d: save_adapter(adapter, d, metadata=meta.model_dump(mode="json"))
    )
    return Output(
        stored,
        data_version=DataVersion(stored.data_version),
        metadata={
            "path": MetadataValue.path(str(stored.path)),
            "rank": config.rank,
            "alpha": config.alpha,
            "dropout": config.dropout,
            "targets": ", ".join(config.target_modules),
            "tags": ", ".join(config.tags),
            "params": config.params(geo),
            "memory_bytes": config.memory_bytes(geo),
            "geometry": MetadataValue.json(geo.model_dump()),
            "config": MetadataValue.json(json.loads(config.model_dump_json())),
            **where_it_ran(),
        },
    )
