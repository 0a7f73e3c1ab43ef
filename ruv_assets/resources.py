"""The catalogue and geometry as Dagster resources (the store ones live in `resources`)."""

from __future__ import annotations

import os
from functools import lru_cache

from dagster import ConfigurableResource
from pydantic import Field

from ruv_assets.catalogue import Catalogue, load_catalogue
from ruv_assets.config import ModelGeometry


@lru_cache(maxsize=8)
def cached_catalogue(path: str | None) -> Catalogue:
    return load_catalogue(path)


def current_catalogue() -> Catalogue:
    """The catalogue named by `RUV_CATALOGUE` (or the shipped one), read once per path."""
    return cached_catalogue(os.environ.get("RUV_CATALOGUE") or None)


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
