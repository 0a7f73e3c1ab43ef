"""Partitions: dynamic, so the catalogue can grow while the code location runs.

`adapters` holds one key per declared adapter, `composites` one per composite, `slots` one per
hot-swap slot (adapters and composites). `catalogue_sensor` keeps all three in step with the
catalogue file; removed entries stop being built, and their history stays.
"""

from dagster import DynamicPartitionsDefinition

from ruv_assets.catalogue.catalogue import current_catalogue

ADAPTERS, COMPOSITES, SLOTS = "adapters", "composites", "slots"
adapter_partitions = DynamicPartitionsDefinition(name=ADAPTERS)
composite_partitions = DynamicPartitionsDefinition(name=COMPOSITES)
slot_partitions = DynamicPartitionsDefinition(name=SLOTS)


def wanted_partitions(catalogue=None) -> dict[str, list[str]]:
    """The keys each partitions definition should hold for this catalogue."""
    catalogue = catalogue or current_catalogue()
    return {ADAPTERS: list(catalogue.adapter_names), COMPOSITES: list(catalogue.composite_names),
            SLOTS: list(catalogue.adapter_names) + list(catalogue.composite_names)}


def source_of(slot_name: str) -> str:
    """The asset that feeds a slot: trained_adapter for adapters, merged_adapter for composites."""
    return "trained_adapter" if slot_name in current_catalogue().adapter_names else "merged_adapter"
