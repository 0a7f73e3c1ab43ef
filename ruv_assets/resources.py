"""The geometry as a Dagster resource (the store and slot ones live in `resources`)."""

from __future__ import annotations

import os

from dagster import ConfigurableResource
from pydantic import Field

from ruv_assets.catalogue import current_catalogue
from ruv_assets.config import ModelGeometry


def _geometry_default(field: str) -> int:
    env = os.environ.get(f"RUV_{field.upper()}")
    return int(env) if env else getattr(current_catalogue().geometry, field)


class GeometryResource(ConfigurableResource):
    """Base-model shapes: Dagster config, else `RUV_HIDDEN_SIZE` etc., else the catalogue."""

    hidden_size: int = Field(default_factory=lambda: _geometry_default("hidden_size"))
    intermediate_size: int = Field(default_factory=lambda: _geometry_default("intermediate_size"))
    num_layers: int = Field(default_factory=lambda: _geometry_default("num_layers"))

    def geometry(self) -> ModelGeometry:
        return ModelGeometry(hidden_size=self.hidden_size, intermediate_size=self.intermediate_size, num_layers=self.num_layers)
