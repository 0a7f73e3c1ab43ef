"""The catalogue and configs: what is declared (the catalogue file, adapter and training configs, presets, code versions, partitions, geometry)."""
