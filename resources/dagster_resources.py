"""Dagster resources over the store and the slots, configurable by Dagster config or env vars.

A field left empty is resolved when used (not when the code location loads), from `RUV_HOME`
(default `.ruv`) and `RUV_SLOTS` (default `<RUV_HOME>/slots`).

`StoreIOManager` hands downstream assets the stored object (path + data version) of each upstream
partition; the file work itself happens in the asset, through `ArtifactStore.write`.
"""

from __future__ import annotations

from dagster import ConfigurableIOManager, ConfigurableResource, InputContext, OutputContext
from pydantic import Field

from ruv_resources.store import ArtifactStore, StoredObject, default_root


class StoreResource(ConfigurableResource):
    """Where artefacts live."""

    root: str = Field("", description="store root; empty = $RUV_HOME, default .ruv")

    def store(self) -> ArtifactStore:
        return ArtifactStore(self.root or default_root())


class StoreIOManager(ConfigurableIOManager):
    """Passes `StoredObject`s between assets; reads the newest version of each upstream partition."""

    root: str = Field("", description="store root; empty = $RUV_HOME, default .ruv")

    def handle_output(self, context: OutputContext, obj: StoredObject) -> None:
        if obj is None:
            return
        if not isinstance(obj, StoredObject):
            raise TypeError(f"{context.asset_key.to_user_string()} must return a StoredObject, got {type(obj).__name__}")

    def load_input(self, context: InputContext):
        store = ArtifactStore(self.root or default_root())
        asset = context.asset_key.path[-1]
        if not context.has_asset_partitions:
            raise ValueError(f"{asset} is read per partition; the input has no partition")
        keys = list(context.asset_partition_keys)
        if len(keys) == 1:
            return store.get(asset, keys[0])
        return {key: store.get(asset, key) for key in keys}


class SlotsResource(ConfigurableResource):
    """Where hot-swap slots live."""

    root: str = Field("", description="slots root; empty = $RUV_SLOTS, default <RUV_HOME>/slots")

    def slot(self, name: str):
        from ruv_resources.slot import Slot, slots_root

        return Slot(self.root or slots_root(), name)
