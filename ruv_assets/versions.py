"""Code versions of the assets: bump one when its kernel or semantics change, so Dagster marks
exactly what depends on it as unsynced."""

PRESET_ADAPTER = "1"
SYNTHETIC_DATASET = "1"
TRAINED_ADAPTER = "2"  # 2: solvers, certificate, dropout, stored Gram, lr 0.03
MERGED_ADAPTER = "1"
SLOT_PROMOTION = "1"
