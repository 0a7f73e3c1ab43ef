"""`preset_adapter` through Dagster: the stored file, its data version and the recorded metadata."""

import numpy as np
import pytest
from dagster import DagsterInstance, materialize

from ruv_resources.dagster_resources import StoreIOManager, StoreResource
from ruv_resources.peft_format import load_adapter
from ruv_resources.store import hash_directory
from ruv_assets.assets.preset import preset_adapter
from ruv_assets.catalogue.geometry import GeometryResource


def run(root, partition):
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("adapters", ["coder"])  # what catalogue_sensor does
    return materialize(
        [preset_adapter],
        partition_key=partition,
        resources={"store": StoreResource(root=str(root)), "store_io": StoreIOManager(root=str(root)), "geometry": GeometryResource()},
        instance=instance,
    )


def test_materialise_coder_writes_peft_adapter_and_metadata(tmp_path):
    result = run(tmp_path, "coder")
    assert result.success
    [event] = result.get_asset_materialization_events()
    materialization = event.materialization
    meta = {k: v.value for k, v in materialization.metadata.items()}
    assert (meta["rank"], meta["alpha"], meta["targets"]) == (16, 32.0, "q_proj, k_proj, v_proj, o_proj")
    assert meta["params"] == 196608 and meta["memory_bytes"] == 4 * 196608
    path = meta["path"]
    assert path.startswith(str(tmp_path / "preset_adapter" / "coder"))
    loaded = load_adapter(path)
    assert loaded.adapter.spec.rank == 16 and loaded.metadata["name"] == "coder"
    assert all(not b.any() for b in loaded.adapter.B.values()), "a preset is the initialisation, B = 0"
    assert materialization.tags["dagster/data_version"] == hash_directory(__import__("pathlib").Path(path))


def test_unknown_partition_is_refused(tmp_path):
    with pytest.raises(Exception, match="nobody"):
        run(tmp_path, "nobody")
    assert not (tmp_path / "preset_adapter").exists()
