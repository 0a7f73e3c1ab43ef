"""The serving-side reader of a slot, in one process (the multi-process stress is in
test_slot_stress.py)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import ruv_resources.slot_reader as reader_module
from ruv_kernels.adapter import LoraAdapter
from ruv_resources.peft_format import WEIGHTS_NAME
from ruv_resources.slot import Slot, SlotError
from ruv_resources.slot_reader import SlotReader
from tests.resources.adapters import make_adapter

def marker(adapter: LoraAdapter) -> float:
    values = {float(v) for arr in (*adapter.A.values(), *adapter.B.values()) for v in np.unique(arr)}
    assert len(values) == 1, f"mixed adapter: {values}"
    return values.pop()


@pytest.fixture
def slot(tmp_path):
    return Slot(tmp_path / "slots", "coder")


@pytest.fixture
def src(tmp_path):
    return lambda seq: make_adapter(tmp_path / "src" / str(seq), seq)


def test_current_loads_once_and_reloads_only_on_change(slot, src):
    slot.promote(src(1))
    reader = SlotReader(slot.path)
    generation, adapter = reader.current()
    assert generation == 1 and marker(adapter) == 1 and reader.loads == 1
    for _ in range(1000):
        assert reader.current()[1] is adapter
    assert reader.loads == 1 and not reader.changed()
    slot.promote(src(2))
    assert reader.changed()
    generation, adapter = reader.current()
    assert generation == 2 and marker(adapter) == 2 and reader.loads == 2
    snap = reader.snapshot()
    assert snap.version == slot.status().active and snap.metadata == {"seq": 2} and snap.manifest["generation"] == 2
    assert reader.active_path() == snap.path == slot.path / "versions" / snap.version


def test_generations_increase_through_rollbacks(slot, src):
    slot.promote(src(1))
    slot.promote(src(2))
    reader = SlotReader(slot.path)
    seen = [reader.current()[0]]
    markers = [marker(reader.current()[1])]
    for _ in range(3):
        slot.rollback()
        generation, adapter = reader.current()
        seen.append(generation)
        markers.append(marker(adapter))
    assert seen == [2, 3, 4, 5] and markers == [2, 1, 2, 1]


def test_empty_slot_and_bad_links(slot, src, tmp_path):
    reader = SlotReader(slot.path)
    with pytest.raises(SlotError, match="no active version yet"):
        reader.current()
    slot.promote(src(1))
    assert reader.current()[0] == 1
    os.replace(slot.path / "active", tmp_path / "moved")
    os.symlink("/etc", slot.path / "active")
    with pytest.raises(SlotError, match="not a link into versions/"):
        SlotReader(slot.path).current()


def test_a_corrupt_active_version_is_refused_or_the_last_good_kept(slot, src):
    slot.promote(src(1))
    keeper = SlotReader(slot.path, keep_last_good=True)
    strict = SlotReader(slot.path)
    assert keeper.current()[0] == strict.current()[0] == 1
    state = slot.promote(src(2))
    path = state.active_path / WEIGHTS_NAME
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SlotError, match=f"active version {state.active} .* adapter_model.safetensors: sha256 mismatch"):
        strict.current()
    with pytest.raises(SlotError, match="sha256 mismatch"):  # the failure is remembered, not re-read
        strict.current()
    generation, adapter = keeper.current()
    assert generation == 1 and marker(adapter) == 1 and "sha256 mismatch" in str(keeper.last_error)
    # without checksum verification the (loadable) corrupt file is not detected: the default is on
    assert SlotReader(slot.path, verify=False).current()[0] == 2
    slot.rollback()
    generation, adapter = strict.current()
    assert generation == 3 and marker(adapter) == 1 and strict.last_error is None


def test_a_swap_during_a_load_does_not_mix_versions(slot, src, monkeypatch):
    slot.promote(src(1))
    reader = SlotReader(slot.path)
    real = reader_module.check_version
    calls = []

    def swapping_check(path, **kwargs):
        calls.append(Path(path).name)
        if len(calls) == 1:
            slot.promote(src(2))  # `active` moves while the reader is between readlink and reading
        return real(path, **kwargs)

    monkeypatch.setattr(reader_module, "check_version", swapping_check)
    first = slot.status().active
    generation, adapter = reader.current()
    assert generation == 1 and marker(adapter) == 1 and calls == [first] and reader.changed()
    snap = reader.snapshot()  # picks up the new one on the next call
    assert snap.generation == 2 and marker(snap.adapter) == 2 and snap.metadata == {"seq": 2}


def test_a_version_collected_during_a_load_is_retried_with_the_new_one(slot, src, monkeypatch):
    slot.promote(src(1))
    reader = SlotReader(slot.path)
    real = reader_module.check_version
    calls = []

    def collecting_check(path, **kwargs):
        calls.append(Path(path).name)
        if len(calls) == 1:
            for seq in (2, 3, 4):
                slot.promote(src(seq))
            assert slot.gc(keep=1)  # removes the version the reader is about to read
        return real(path, **kwargs)

    monkeypatch.setattr(reader_module, "check_version", collecting_check)
    generation, adapter = reader.current()
    assert len(calls) == 2 and generation == 4 and marker(adapter) == 4


def test_geometry_is_enforced(slot, src):
    slot.promote(src(1))
    with pytest.raises(SlotError, match="expected"):
        SlotReader(slot.path, geometry={"hidden_size": 64}).current()
    assert SlotReader(slot.path, geometry={"hidden_size": 32, "num_layers": 1}).current()[0] == 1
