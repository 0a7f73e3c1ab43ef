"""ruv-assets: the Dagster code location of task-specific LoRA adapters."""
