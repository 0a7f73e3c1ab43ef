"""The one Definitions object of the ruv-assets code location."""

from dagster import Definitions

from resources.dagster_resources import SlotsResource, StoreIOManager, StoreResource
from ruv_assets.assets.dataset import synthetic_dataset
from ruv_assets.assets.entries import adapter_entry, composite_entry
from ruv_assets.assets.merged import merged_adapter
from ruv_assets.assets.preset import preset_adapter
from ruv_assets.assets.served import served_adapter
from ruv_assets.assets.trained import trained_adapter
from ruv_assets.build_all import build_all_job
from ruv_assets.jobs import merge_job, promote_job, train_job
from ruv_assets.resources import GeometryResource
from ruv_assets.schedules import retrain_schedule
from ruv_assets.sensors import promotion_sensor

defs = Definitions(
    assets=[adapter_entry, composite_entry, preset_adapter, synthetic_dataset, trained_adapter, merged_adapter, served_adapter],
    jobs=[train_job, merge_job, promote_job, build_all_job],
    sensors=[promotion_sensor],
    schedules=[retrain_schedule],
    resources={
        "store": StoreResource(),
        "store_io": StoreIOManager(),
        "slots": SlotsResource(),
        "geometry": GeometryResource(),
    },
)
