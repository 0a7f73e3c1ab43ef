"""What the catalogue declares, as observable source assets: each partition's data version is the
hash of its entry and of the geometry in force (catalogue, env vars), so after a catalogue change an observation marks exactly
the changed adapters' and composites' chains unsynced in the UI."""

import hashlib
import json

from dagster import DataVersion, DataVersionsByPartition, observable_source_asset

from ruv_assets.catalogue.catalogue import current_catalogue, current_geometry
from ruv_assets.catalogue.partitions import adapter_partitions, composite_partitions


def entry_version(entry, geometry) -> str:
    """The hash of what a trained version depends on: the entry (without `capture.adapt`, which
    only steers learning from traffic afterwards) and the geometry in force."""
    dumped = entry.model_dump(mode="json")
    if isinstance(dumped.get("capture"), dict):
        dumped["capture"].pop("adapt", None)
    payload = json.dumps({"entry": dumped, "geometry": geometry.model_dump()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def entry_versions(entries) -> DataVersionsByPartition:
    """One data version per catalogue entry (partition = its name), under the geometry in force."""
    geometry = current_geometry()
    return DataVersionsByPartition({e.name: DataVersion(entry_version(e, geometry)) for e in entries})


@observable_source_asset(
    partitions_def=adapter_partitions,
    group_name="catalogue",
    description="Each adapter's entry in the catalogue (presets and custom adapters); observe after editing it.",
)
def adapter_entry():
    return entry_versions(current_catalogue().adapters())


@observable_source_asset(
    partitions_def=composite_partitions,
    group_name="catalogue",
    description="Each composite's entry in the catalogue (method, sources, parameters); observe after editing it.",
)
def composite_entry():
    return entry_versions(current_catalogue().composites())
