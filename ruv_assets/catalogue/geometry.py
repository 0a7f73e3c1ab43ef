"""The model geometry as a Dagster resource (the store and slot ones live in `resources`)."""

from __future__ import annotations

from dagster import ConfigurableResource
from pydantic import Field

from ruv_assets.catalogue.catalogue import current_geometry
from ruv_assets.catalogue.config import ModelGeometry


class GeometryResource(ConfigurableResource):
    """Base-model shapes. Each field: Dagster config, else `RUV_HIDDEN_SIZE` / `RUV_INTERMEDIATE_SIZE`
    / `RUV_NUM_LAYERS`, else the catalogue's `geometry` (resolved when used)."""

    hidden_size: int | None = Field(None, ge=1)
    intermediate_size: int | None = Field(None, ge=1)
    num_layers: int | None = Field(None, ge=1)

    def geometry(self) -> ModelGeometry:
        return current_geometry(hidden_size=self.hidden_size, intermediate_size=self.intermediate_size, num_layers=self.num_layers)
