"""Jobs per stage. Assets with different partitionings cannot share one asset job in Dagster, so
`train_job` and `adapt_job` (per adapter), `merge_job` (per composite) and `promote_job` (per slot) are separate;
the sensors in `build_sensors` and `sensors` request their runs (no job runs another)."""

from dagster import AssetSelection, define_asset_job

train_job = define_asset_job(
    "train_job",
    selection=AssetSelection.assets("preset_adapter", "synthetic_dataset", "trained_adapter"),
    description="Declare, generate data for and train one adapter (partition = adapter name).",
)
merge_job = define_asset_job(
    "merge_job",
    selection=AssetSelection.assets("merged_adapter"),
    description="Merge the trained adapters a composite names (partition = composite name).",
)
adapt_job = define_asset_job(
    "adapt_job",
    selection=AssetSelection.assets("adapted_adapter"),
    description="Update one captured role's live adapter on its new traffic, behind the guard (partition = adapter name).",
)
promote_job = define_asset_job(
    "promote_job",
    selection=AssetSelection.assets("served_adapter"),
    description="Promote a stored version into its hot-swap slot (partition = slot name).",
)
