"""Partitions: one per declared adapter, one per declared composite (from the catalogue)."""

from dagster import StaticPartitionsDefinition

from ruv_assets.resources import current_catalogue

adapter_partitions = StaticPartitionsDefinition(current_catalogue().adapter_names)
composite_partitions = StaticPartitionsDefinition(current_catalogue().composite_names or ["none"])
