"""The one Definitions object of the ruv-assets code location."""

from dagster import Definitions

from resources.dagster_resources import StoreIOManager, StoreResource
from ruv_assets.assets.preset import preset_adapter
from ruv_assets.resources import GeometryResource

defs = Definitions(
    assets=[preset_adapter],
    resources={
        "store": StoreResource(),
        "store_io": StoreIOManager(),
        "geometry": GeometryResource(),
    },
)
