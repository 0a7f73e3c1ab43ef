"""Partitions: one per declared adapter, one per declared composite (from the catalogue)."""

from dagster import StaticPartitionsDefinition

from ruv_assets.catalogue import current_catalogue

adapter_partitions = StaticPartitionsDefinition(current_catalogue().adapter_names)
composite_partitions = StaticPartitionsDefinition(current_catalogue().composite_names)
# A slot per adapter and per composite: what a serving process reads.
slot_partitions = StaticPartitionsDefinition(current_catalogue().adapter_names + current_catalogue().composite_names)


def source_of(slot_name: str) -> str:
    """The asset that feeds a slot: trained_adapter for adapters, merged_adapter for composites."""
    return "trained_adapter" if slot_name in current_catalogue().adapter_names else "merged_adapter"
