"""The hot-swap slot in one process: layout, promote/prepare/swap/rollback, refusals, verify, gc,
history, crash leftovers and locking. Multi-process tests are in test_slot_stress.py."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import ruv_resources.slot as slot_module
from ruv_kernels.adapter import AdapterSpec, LoraAdapter
from ruv_resources.peft_format import CONFIG_NAME, WEIGHTS_NAME, load_adapter, save_adapter
from ruv_resources.slot import (
    ACTIVE,
    HISTORY,
    MANIFEST,
    STANDBY,
    Slot,
    SlotConflictError,
    SlotError,
    SlotLockedError,
)
from ruv_resources.store import sha256_file
from tests.resources.adapters import SPEC, make_adapter

def seq_of(directory) -> float:
    loaded = load_adapter(directory)
    values = {float(v) for arr in (*loaded.adapter.A.values(), *loaded.adapter.B.values()) for v in np.unique(arr)}
    assert len(values) == 1, values
    return values.pop()


def tree(path: Path) -> dict:
    """Everything under a slot (names, link targets, file hashes), to assert "unchanged"."""
    out = {}
    if not path.exists():
        return out
    for p in sorted(path.rglob("*")):
        rel = str(p.relative_to(path))
        if p.is_symlink():
            out[rel] = "-> " + os.readlink(p)
        elif p.is_file():
            out[rel] = sha256_file(p) if p.name != ".lock" else "lock"
        else:
            out[rel] = "dir"
    return out


@pytest.fixture
def sources(tmp_path):
    return lambda seq, spec=SPEC: make_adapter(tmp_path / "src" / f"a{seq}-{spec.hidden_size}", seq, spec)


@pytest.fixture
def slot(tmp_path):
    return Slot(tmp_path / "slots", "coder")


def corrupt(path: Path) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the last tensor's data: still parses, different values
    path.write_bytes(bytes(data))


def test_promote_writes_the_layout_and_a_complete_manifest(slot, sources):
    src = sources(1)
    state = slot.promote(src, provenance={"asset_key": "trained_adapter", "partition": "coder", "data_version": "ab" * 32, "run_id": "r-1", "extra": 3})
    assert state.generation == 1 and state.active.startswith("00000001-") and state.standby is None
    assert os.readlink(slot.path / ACTIVE) == f"versions/{state.active}"  # relative link
    version = slot.path / "versions" / state.active
    assert sorted(p.name for p in version.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME, MANIFEST]
    manifest = json.loads((version / MANIFEST).read_text())
    for name in (WEIGHTS_NAME, CONFIG_NAME):
        assert manifest["files"][name]["sha256"] == sha256_file(src / name) == sha256_file(version / name)
        assert manifest["files"][name]["bytes"] == (src / name).stat().st_size
    assert manifest["generation"] == 1 and manifest["version"] == state.active
    assert (manifest["asset_key"], manifest["partition"], manifest["run_id"]) == ("trained_adapter", "coder", "r-1")
    assert manifest["data_version"] == "ab" * 32 and manifest["provenance"]["extra"] == 3
    assert manifest["promoted_at"] and manifest["geometry"] == {"hidden_size": 32, "intermediate_size": 64, "num_layers": 1}
    assert state.active.split("-")[1] == manifest["content_hash"][:12]
    # `active` is a PEFT directory as it is
    loaded = load_adapter(slot.path / ACTIVE)
    assert loaded.metadata == {"seq": 1} and seq_of(slot.path / ACTIVE) == 1
    assert all((version / f).stat().st_mode & 0o222 == 0 for f in (WEIGHTS_NAME, CONFIG_NAME, MANIFEST))  # read-only
    # the served asset's spelling of the source key is accepted too
    other = slot.promote(sources(2), provenance={"source_asset": "merged_adapter", "run_id": "r-2"})
    assert slot.manifest(other.active)["asset_key"] == "merged_adapter"


def test_second_promote_keeps_the_previous_as_standby_and_records_history(slot, sources):
    first = slot.promote(sources(1))
    second = slot.promote(sources(2), provenance={"run_id": "r2"})
    assert second.generation == 2 and second.standby == first.active and second.active != first.active
    assert seq_of(slot.path / ACTIVE) == 2 and seq_of(slot.path / STANDBY) == 1
    history = slot.history()
    assert [(e["generation"], e["action"], e["version"]) for e in history] == [(1, "promote", first.active), (2, "promote", second.active)]
    assert history[1]["previous"] == first.active and history[1]["provenance"] == {"run_id": "r2"}
    assert slot.history(limit=1) == history[-1:]
    assert slot.verify().ok


def test_prepare_then_swap(slot, sources):
    slot.promote(sources(1))
    name = slot.prepare(sources(2))
    state = slot.status()
    assert state.generation == 1 and state.standby == name and seq_of(slot.path / ACTIVE) == 1
    with pytest.raises(SlotConflictError, match="generation 1, not the expected 7"):
        slot.swap(expected_generation=7)
    swapped = slot.swap(expected_generation=1)
    assert swapped.active == name and swapped.generation == int(name.split("-")[0]) == 2
    assert swapped.standby == state.active and seq_of(slot.path / ACTIVE) == 2


def test_expected_generation_conflict_leaves_the_slot_unchanged(slot, sources, tmp_path):
    with pytest.raises(SlotConflictError, match="does not exist yet"):
        slot.promote(sources(1), expected_generation=3)
    assert not slot.path.exists()
    slot.promote(sources(1), expected_generation=0)
    slot.promote(sources(2), expected_generation=1)
    before = tree(slot.path)
    with pytest.raises(SlotConflictError, match="another promoter got there first"):
        slot.promote(sources(3), expected_generation=1)
    with pytest.raises(SlotConflictError):
        slot.rollback(expected_generation=1)
    assert tree(slot.path) == before
    assert slot.promote(sources(3), expected_generation=2).generation == 3


def test_rollback_is_a_new_generation_of_the_old_files(slot, sources):
    one = slot.promote(sources(1))
    two = slot.promote(sources(2))
    back = slot.rollback(expected_generation=2)
    assert back.generation == 3 and seq_of(slot.path / ACTIVE) == 1
    assert back.active.split("-")[1] == one.active.split("-")[1]  # same content hash
    assert back.standby == two.active
    manifest = slot.manifest(back.active)
    assert manifest["action"] == "rollback" and manifest["source_version"] == one.active and manifest["generation"] == 3
    # the files are the old version's (hard links where possible), checked by verify
    assert sha256_file(slot.path / ACTIVE / WEIGHTS_NAME) == sha256_file(one.active_path / WEIGHTS_NAME)
    forward = slot.rollback()  # a rollback of a rollback rolls forward
    assert forward.generation == 4 and seq_of(slot.path / ACTIVE) == 2
    entries = slot.history()
    assert [e["action"] for e in entries] == ["promote", "promote", "rollback", "rollback"]
    assert [e["generation"] for e in entries] == [1, 2, 3, 4]
    assert entries[2]["source_version"] == one.active
    explicit = slot.rollback(to=one.active)
    assert explicit.generation == 5 and seq_of(slot.path / ACTIVE) == 1
    assert slot.verify().ok


def test_rollback_uses_history_when_standby_is_a_prepared_version(slot, sources):
    slot.promote(sources(1))
    slot.promote(sources(2))
    prepared = slot.prepare(sources(3))
    with pytest.raises(SlotError, match="never active"):
        slot.rollback(to=prepared)
    state = slot.rollback()
    assert seq_of(slot.path / ACTIVE) == 1 and state.generation == 4


def test_rollback_refusals(slot, sources, tmp_path):
    with pytest.raises(SlotError, match="no slot at"):
        slot.rollback()
    first = slot.promote(sources(1))
    with pytest.raises(SlotError, match="nothing to roll back to"):
        slot.rollback()
    with pytest.raises(SlotError, match="already active"):
        slot.rollback(to=first.active)
    with pytest.raises(SlotError, match="no version 00000009"):
        slot.rollback(to="00000009-0123456789ab")
    for bad in ("../../etc", "/etc/passwd", "versions/../x", "..", ".hidden"):
        with pytest.raises(SlotError, match="not a safe name|not a slot version name"):
            slot.rollback(to=bad)
    with pytest.raises(SlotError, match="no standby"):
        slot.swap()


def test_refuses_a_nan_adapter_and_leaves_the_slot_unchanged(slot, sources, tmp_path):
    bad = tmp_path / "nan"
    make_adapter(bad, 5)
    tensors = load_file(str(bad / WEIGHTS_NAME))
    key = sorted(tensors)[0]
    tensors[key] = tensors[key].copy()
    tensors[key][0, 0] = np.nan
    save_file(tensors, str(bad / WEIGHTS_NAME), metadata={"format": "pt"})
    with pytest.raises(SlotError, match=r"refusing to promote .*non-finite"):
        slot.promote(bad)
    assert not slot.path.exists()  # a refused first promote does not even create the slot
    slot.promote(sources(1))
    before = tree(slot.path)
    with pytest.raises(SlotError, match="NaN or inf"):
        slot.promote(bad)
    with pytest.raises(SlotError, match="NaN or inf"):
        slot.prepare(bad)
    assert tree(slot.path) == before


def test_refuses_wrong_shapes_partial_files_and_missing_dirs(slot, sources, tmp_path):
    slot.promote(sources(1))
    before = tree(slot.path)
    wide = sources(2, AdapterSpec(4, 8.0, ("q_proj", "v_proj"), 48, 64, 1))
    with pytest.raises(SlotError, match="hidden_size 48 .active has 32."):
        slot.promote(wide)  # the active version's geometry is the default expectation
    with pytest.raises(SlotError, match=r"shape \[4, 48\], expected \[4, 32\]"):
        slot.promote(wide, geometry={"hidden_size": 32})
    deep = sources(3, AdapterSpec(4, 8.0, ("q_proj", "v_proj"), 32, 64, 2))
    with pytest.raises(SlotError, match="outside the 1-layer geometry"):
        slot.promote(deep, geometry={"num_layers": 1, "hidden_size": 32})
    partial = tmp_path / "partial"
    make_adapter(partial, 4)
    data = (partial / WEIGHTS_NAME).read_bytes()
    (partial / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(SlotError, match="corrupt or partial"):
        slot.promote(partial)
    (partial / WEIGHTS_NAME).unlink()
    with pytest.raises(SlotError, match="missing"):
        slot.promote(partial)
    with pytest.raises(SlotError, match="not a directory"):
        slot.promote(tmp_path / "nowhere")
    with pytest.raises(SlotError, match="geometry hidden_size must be a positive integer"):
        slot.promote(sources(1), geometry={"hidden_size": -1})
    with pytest.raises(SlotError, match="JSON-serialisable"):
        slot.promote(sources(1), provenance={"x": object()})
    assert tree(slot.path) == before
    # an explicit geometry is how the base model is changed on purpose
    assert slot.promote(wide, geometry={"hidden_size": 48}).generation == 2


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ".hidden", "", "/abs", "x" * 200])
def test_refuses_slot_names_that_escape_the_root(tmp_path, name):
    with pytest.raises(SlotError, match="not a safe name"):
        Slot(tmp_path / "slots", name)
    assert not (tmp_path / "slots").exists()


def test_corrupted_version_is_reported_and_never_swapped_to(slot, sources):
    one = slot.promote(sources(1))
    two = slot.promote(sources(2))
    corrupt(one.active_path / WEIGHTS_NAME)
    report = slot.verify()
    assert not report.ok and report.bad == [one.active]
    bad = next(v for v in report.versions if v.version == one.active)
    assert any("adapter_model.safetensors: sha256 mismatch" in p for p in bad.problems) and bad.roles == ["standby"]
    assert slot.verify(two.active).ok
    before = tree(slot.path)
    with pytest.raises(SlotError, match=f"refusing to roll back to {one.active}: it is corrupt: adapter_model.safetensors: sha256 mismatch"):
        slot.rollback()
    with pytest.raises(SlotError, match="refusing to swap to .* corrupt"):
        slot.swap()
    assert tree(slot.path) == before and slot.status().active == two.active
    # a corrupted prepared standby is never swapped to either
    prepared = slot.prepare(sources(3))
    corrupt(slot.path / "versions" / prepared / CONFIG_NAME)
    with pytest.raises(SlotError, match="adapter_config.json: .*sha256 mismatch|adapter_config.json: sha256 mismatch"):
        slot.swap()
    assert slot.status().active == two.active and seq_of(slot.path / ACTIVE) == 2


def test_verify_reports_manifest_tampering_missing_files_and_bad_links(slot, sources):
    one = slot.promote(sources(1))
    two = slot.promote(sources(2))
    manifest_path = one.active_path / MANIFEST
    os.chmod(manifest_path, 0o644)
    manifest = json.loads(manifest_path.read_text())
    manifest["generation"] = 9
    manifest_path.write_text(json.dumps(manifest))
    os.chmod(two.active_path, 0o755)
    (two.active_path / CONFIG_NAME).unlink()
    report = slot.verify()
    problems = {v.version: v.problems for v in report.versions}
    assert any("generation 9" in p for p in problems[one.active])
    assert "adapter_config.json: missing" in problems[two.active]
    (slot.path / "versions" / "stray").mkdir()
    os.unlink(slot.path / STANDBY)
    os.symlink("/etc", slot.path / STANDBY)
    report = slot.verify()
    assert any("versions/stray: unexpected entry" in p for p in report.problems)
    assert any("not a link into versions/" in p for p in report.problems)
    assert report.to_dict()["ok"] is False


def test_gc_keeps_active_standby_and_the_newest(slot, sources):
    states = [slot.promote(sources(i)) for i in range(1, 7)]
    back = slot.rollback()  # active = clone of 5 (gen 7), standby = 6
    removed = slot.gc(keep=1)
    state = slot.status()
    assert set(state.versions) == {back.active, states[-1].active}
    assert set(removed) == {s.active for s in states[:-1]}
    assert state.active == back.active and state.standby == states[-1].active
    assert slot.verify().ok and seq_of(slot.path / ACTIVE) == 5
    assert slot.promote(sources(8)).generation == 8  # numbers never reused after gc
    slot.prepare(sources(9))  # standby is the prepared 9; the old standby 7 is kept as one of the newest
    assert slot.gc(keep=3) == [states[-1].active]
    assert len(slot.status().versions) == 3
    with pytest.raises(SlotError, match="keep must be an integer >= 1"):
        slot.gc(keep=0)


def test_gc_never_removes_an_old_standby(slot, sources):
    first = slot.promote(sources(1))
    for i in range(2, 6):
        slot.promote(sources(i))
    slot.rollback(to=first.active)  # standby = gen 5, active = clone of 1 (gen 6)
    slot.prepare(sources(7))  # standby = gen 7
    slot.swap()  # active = 7, standby = 6 (the clone of 1)
    slot.gc(keep=1)
    state = slot.status()
    assert len(state.versions) == 2 and seq_of(slot.path / STANDBY) == 1


def test_crash_leftovers_are_cleaned_by_the_next_promoter(slot, sources):
    slot.promote(sources(1))
    versions = slot.path / "versions"
    (versions / ".tmp-00000002-deadbeef").mkdir()
    (versions / ".tmp-00000002-deadbeef" / WEIGHTS_NAME).write_bytes(b"partial")
    (versions / ".trash-00000001-aaaaaaaaaaaa-1234").mkdir()
    os.symlink("versions/nothing", slot.path / ".active.tmp-123-abcd")
    with open(slot.path / HISTORY, "a") as handle:
        handle.write('{"generation": 2, "vers')  # torn line
    report = slot.verify()
    assert report.ok and len(report.notes) == 2
    assert [e["generation"] for e in slot.history()] == [1]
    state = slot.promote(sources(2))
    # 2 was only claimed by the crashed temp dir, which no reader can see: it may be used again
    assert state.generation == 2
    assert sorted(os.listdir(versions)) == list(state.versions)
    assert not any(".tmp-" in n for n in os.listdir(slot.path))
    assert [e["generation"] for e in slot.history()] == [1, 2]
    assert slot.verify().ok and not slot.verify().notes


class Crash(BaseException):
    pass


@pytest.mark.parametrize("point", ["tmp-created", "manifest-written", "verified", "renamed", "link-standby-replaced", "link-active-created", "link-active-replaced", "swapped"])
def test_an_interrupted_promotion_leaves_a_working_slot(slot, sources, monkeypatch, point):
    slot.promote(sources(1))

    def hook(where):
        if where == point:
            raise Crash(where)

    monkeypatch.setattr(slot_module, "_FAULT_HOOK", hook)
    with pytest.raises(Crash):
        slot.promote(sources(2))
    monkeypatch.setattr(slot_module, "_FAULT_HOOK", None)
    state = slot.status()
    assert state.generation in (1, 2) and seq_of(slot.path / ACTIVE) == state.generation
    if point == "link-active-replaced":  # died with standby == active: repaired under the lock
        assert state.standby == state.active
        repaired = slot.recover()
        assert any(r.startswith("standby (pointed back at 00000001-") for r in repaired), repaired
        assert seq_of(slot.path / STANDBY) == 1 and slot.history()[-1]["recovered"] is True
    published = len(slot.version_names())  # 2 if the crashed promoter got as far as the rename
    after = slot.promote(sources(3))
    assert after.generation == published + 1 and seq_of(slot.path / ACTIVE) == 3
    history = slot.history()
    assert history[-1]["generation"] == after.generation
    if point == "swapped":  # died after the swap, before its history line: recorded by the next promoter
        assert history[1]["generation"] == 2 and history[1]["recovered"] is True
    assert slot.verify().ok and not slot.verify().notes


def test_lock_timeout_and_lock_free_reads(slot, sources):
    slot.promote(sources(1))
    fd = os.open(slot.path / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.pwrite(fd, b"4242\n", 0)
        busy = Slot(slot.root, slot.name, lock_timeout=0.05)
        with pytest.raises(SlotLockedError, match="locked by another promoter .pid 4242."):
            busy.promote(sources(2))
        assert busy.status().generation == 1 and busy.verify().ok and len(busy.history()) == 1
    finally:
        os.close(fd)
    assert Slot(slot.root, slot.name, lock_timeout=0.05).promote(sources(2)).generation == 2


def test_status_of_an_empty_slot_and_errors_are_value_errors(tmp_path, sources):
    slot = Slot(tmp_path / "slots", "empty")
    with pytest.raises(ValueError, match="no slot at"):
        slot.status()
    name = slot.prepare(sources(1))
    state = slot.status()
    assert state.active is None and state.generation == 0 and state.standby == name and slot.verify().ok
    assert slot.swap().generation == 1 and slot.status().standby is None
    assert issubclass(SlotConflictError, SlotError) and issubclass(SlotError, ValueError)


def test_promote_accepts_float16_and_a_geometry_object(slot, tmp_path):
    adapter = LoraAdapter.initialise(SPEC, seed=3)
    for key in adapter.keys():
        adapter.B[key][:] = 0.5
    (tmp_path / "half").mkdir()
    save_adapter(adapter, tmp_path / "half", dtype="float16")
    state = slot.promote(tmp_path / "half", geometry=SPEC)
    assert slot.manifest(state.active)["dtype"] == "float16"
