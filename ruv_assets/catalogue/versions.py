"""Code versions of the assets: bump one when its kernel or semantics change, so Dagster marks
exactly what depends on it as unsynced."""

PRESET_ADAPTER = "1"
SYNTHETIC_DATASET = "2"  # 2: captured windows start each text for a system prompt teacher
TRAINED_ADAPTER = "4"  # 2: solvers, certificate, dropout, stored Gram, lr 0.03; 3: v_proj through attention, KL refinement; 4: statistics in the data's precision (statistics_precision auto), certificate on captured adapters
MERGED_ADAPTER = "1"
SLOT_PROMOTION = "1"
ADAPTED_ADAPTER = "1"  # a live role adapter updated on its traffic, behind the guard
SERVING_MODEL = "1"  # the base model exported as an HF safetensors directory for the inference server
