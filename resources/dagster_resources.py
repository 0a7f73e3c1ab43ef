"""Dagster resources over the store and the slots, configurable by Dagster config or env vars.

`StoreIOManager` hands downstream assets the stored object (path + data version) of each upstream
partition; the file work itself happens in the asset, through `ArtifactStore.write`.
"""

from __future__ import annotations

import os

from dagster import ConfigurableIOManager, ConfigurableResource, InputContext, OutputContext
from pydantic import Field

from resources.store import ArtifactStore, StoredObject


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


class StoreResource(ConfigurableResource):
    """Where artefacts live: `RUV_HOME` (default `.ruv`)."""

    root: str = Field(default_factory=lambda: _env("RUV_HOME", ".ruv"), description="store root (RUV_HOME)")

    def store(self) -> ArtifactStore:
        return ArtifactStore(self.root)


class StoreIOManager(ConfigurableIOManager):
    """Passes `StoredObject`s between assets; reads the newest version of each upstream partition."""

    root: str = Field(default_factory=lambda: _env("RUV_HOME", ".ruv"), description="store root (RUV_HOME)")

    def handle_output(self, context: OutputContext, obj: StoredObject) -> None:
        if obj is None:
            return
        if not isinstance(obj, StoredObject):
            raise TypeError(f"{context.asset_key.to_user_string()} must return a StoredObject, got {type(obj).__name__}")

    def load_input(self, context: InputContext):
        store = ArtifactStore(self.root)
        asset = context.asset_key.path[-1]
        if not context.has_asset_partitions:
            raise ValueError(f"{asset} is read per partition; the input has no partition")
        keys = list(context.asset_partition_keys)
        if len(keys) == 1:
            return store.get(asset, keys[0])
        return {key: store.get(asset, key) for key in keys}


def default_slots_root() -> str:
    return os.environ.get("RUV_SLOTS") or os.path.join(_env("RUV_HOME", ".ruv"), "slots")


class SlotsResource(ConfigurableResource):
    """Where hot-swap slots live: `RUV_SLOTS`, default `<RUV_HOME>/slots`."""

    root: str = Field(default_factory=default_slots_root, description="slots root (RUV_SLOTS)")

    def slot(self, name: str):
        from resources.slot import Slot

        return Slot(self.root, name)
