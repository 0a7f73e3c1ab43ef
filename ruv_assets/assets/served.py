"""`served_adapter`: what each hot-swap slot serves. Materialising a partition promotes a stored
trained or adapted (adapter) or merged (composite) version into `<slots>/<name>/active`; the materialisation
records which source version is active at which slot generation, so lineage shows what is served.
Running inference servers that follow the slots (`ruv serve up`) are asked before the swap (a
server that serves the slot and refuses the new version fails the run, slot untouched) and waited
for after it: the materialisation records the generation each server reports live.
"""

from dagster import AssetDep, AssetExecutionContext, AssetKey, AssetRecordsFilter, Config, DataVersion, Failure, IdentityPartitionMapping, MaterializeResult, MetadataValue, asset
from pydantic import Field

from ruv_resources.dagster_resources import SlotsResource, StoreResource
from ruv_assets.catalogue import versions
from ruv_assets.catalogue.partitions import slot_partitions, source_of
from ruv_assets.catalogue.geometry import GeometryResource
from ruv_assets.orchestration.worker import where_it_ran
from ruv_assets.serving import servers


class PromotionConfig(Config):
    """Which stored version to promote; empty means the newest of the slot's source asset."""

    data_version: str = Field("", description="data version (sha256) of the source to promote; empty = newest")
    source_storage_id: int = Field(0, description="event storage id of the source materialisation (set by the sensor)")
    expected_generation: int = Field(-1, description="compare-and-swap: fail unless the slot is at this generation (-1 = off)")
    source_asset: str = Field("", description="trained_adapter, merged_adapter or adapted_adapter; empty = the slot's own "
                                              "(trained_adapter for an adapter, merged_adapter for a composite)")


SOURCES = ("trained_adapter", "merged_adapter", "adapted_adapter")


def source_storage_id(instance, asset: str, partition: str, data_version: str) -> int:
    """Event storage id of the newest materialisation of `asset[partition]` with this data version
    (for promotions not requested by the sensor), so the sensor knows it is already served."""
    records = instance.fetch_materializations(AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[partition]), limit=100).records
    for record in records:
        if (record.asset_materialization.tags or {}).get("dagster/data_version") == data_version:
            return record.storage_id
    return 0


@asset(
    partitions_def=slot_partitions,
    code_version=versions.SLOT_PROMOTION,
    group_name="serving",
    kinds={"safetensors"},
    deps=[
        # slot X is fed by trained_adapter[X] (an adapter) or merged_adapter[X] (a composite)
        AssetDep("trained_adapter", partition_mapping=IdentityPartitionMapping()),
        AssetDep("merged_adapter", partition_mapping=IdentityPartitionMapping()),
        AssetDep("adapted_adapter", partition_mapping=IdentityPartitionMapping()),  # a role updated on its traffic
    ],
    description="The version active in the hot-swap slot of each adapter and composite (promoted by promotion_sensor).",
)
def served_adapter(context: AssetExecutionContext, config: PromotionConfig, store: StoreResource, slots: SlotsResource,
                   geometry: GeometryResource) -> MaterializeResult:
    name = context.partition_key
    source = config.source_asset or source_of(name)
    if source not in SOURCES or (source == "merged_adapter") != (source_of(name) == "merged_adapter"):
        raise Failure(description=f"slot {name}: source_asset {source!r} cannot feed it (one of {', '.join(SOURCES)}, "
                                  "merged_adapter for a composite only)")
    stored = store.store().get(source, name, config.data_version or None)
    slot = slots.slot(name)
    current = slot.status() if slot.exists() else None
    stale = config.expected_generation >= 0 and (current.generation if current is not None else 0) != config.expected_generation
    if not stale and current is not None and current.active and slot.manifest(current.active).get("data_version") == stored.data_version:
        context.log.info(f"slot {name}: {stored.data_version[:12]} is already active at generation {current.generation}")
        state = current
        answers = servers.following(slot.path.parent.parent)
    else:
        home = slot.path.parent.parent
        answers = servers.precheck(name, stored.path, home)
        refused = servers.refusal(answers, name)
        if refused:
            raise Failure(description=refused, metadata={"servers": MetadataValue.json(answers)})
        state = slot.promote(
            stored.path,
            provenance={
                "source_asset": source,
                "partition": name,
                "data_version": stored.data_version,
                "run_id": context.run.run_id,
                "source_storage_id": config.source_storage_id or None,
            },
            expected_generation=None if config.expected_generation < 0 else config.expected_generation,
            geometry=geometry.geometry().dims(),
        )
    context.log.info(f"slot {name}: generation {state.generation}, active {state.active}")
    served = servers.wait_live(name, state.generation, answers)
    if served:
        context.log.info(f"slot {name} on the servers: {servers.summary(served)}")
    return MaterializeResult(
        data_version=DataVersion(stored.data_version),
        metadata={
            "slot": MetadataValue.path(str(slot.path)),
            "active": MetadataValue.path(str(slot.path / "active")),
            "generation": int(state.generation),
            "version": state.active,
            "standby": state.standby or "",
            "source_asset": source,
            "source_data_version": stored.data_version,
            "source_path": MetadataValue.path(str(stored.path)),
            "source_storage_id": int(config.source_storage_id or source_storage_id(context.instance, source, name, stored.data_version)),
            "servers": MetadataValue.json(served),
            "live_on": sum(1 for r in served.values() if r["status"] == "live"),
            **where_it_ran(),
        },
    )
