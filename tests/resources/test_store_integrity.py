"""The store refuses bytes that no longer match their address, and concurrent writers of one
version or one LATEST leave one complete, verified object."""

import multiprocessing
import os

import pytest

from ruv_resources.errors import StoreError
from ruv_resources.store import LATEST, ArtifactStore, hash_directory


def _payload(seed: int, size: int = 1 << 16):
    def write(d):
        (d / "adapter_model.safetensors").write_bytes(bytes((seed + i) % 251 for i in range(size)))
        (d / "adapter_config.json").write_text(f'{{"seed": {seed}}}\n')
    return write


def test_a_flipped_byte_is_refused_naming_the_object(tmp_path):
    store = ArtifactStore(tmp_path)
    stored = store.write("trained_adapter", "coder", _payload(1))
    assert store.get("trained_adapter", "coder") == stored
    target = stored.path / "adapter_model.safetensors"
    data = bytearray(target.read_bytes())
    data[1000] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=rf"trained_adapter\[coder\] version {stored.data_version[:12]} .* is corrupt"):
        store.get("trained_adapter", "coder")
    with pytest.raises(StoreError, match="is corrupt"):
        store.get("trained_adapter", "coder", stored.data_version)
    assert store.get("trained_adapter", "coder", verify=False).path == stored.path  # listing still works
    [problem] = store.verify()
    assert "trained_adapter[coder]" in problem and "corrupt" in problem


def test_verify_reports_a_dangling_latest_and_a_sound_store(tmp_path):
    store = ArtifactStore(tmp_path)
    store.write("synthetic_dataset", "coder", _payload(2))
    store.write("trained_adapter", "coder", _payload(3))
    assert store.verify() == []
    (tmp_path / "trained_adapter" / "coder" / LATEST).write_text("f" * 64 + "\n")
    [problem] = store.verify()
    assert "trained_adapter[coder]: LATEST names" in problem


def test_the_io_manager_refuses_a_corrupt_upstream(tmp_path, monkeypatch):
    from dagster import AssetKey, build_input_context

    from ruv_resources.dagster_resources import StoreIOManager

    store = ArtifactStore(tmp_path)
    stored = store.write("trained_adapter", "coder", _payload(4))
    (stored.path / "adapter_config.json").write_text('{"seed": 5}\n')
    context = build_input_context(asset_key=AssetKey("trained_adapter"), partition_key="coder")
    with pytest.raises(StoreError, match=r"trained_adapter\[coder\].*corrupt"):
        StoreIOManager(root=str(tmp_path)).load_input(context)


def _write_many(root: str, seed: int, barrier, rounds: int, out) -> None:
    store = ArtifactStore(root)
    barrier.wait()
    versions = [store.write("trained_adapter", "coder", _payload(seed if seed >= 0 else r % 3)).data_version for r in range(rounds)]
    out.put(versions)


@pytest.mark.parametrize("same_content", [True, False], ids=["same-version", "same-latest"])
def test_concurrent_writers_leave_one_complete_verified_object(tmp_path, same_content):
    context = multiprocessing.get_context("spawn")
    writers, rounds = 4, 25
    barrier, out = context.Barrier(writers), context.Queue()
    processes = [context.Process(target=_write_many, args=(str(tmp_path), 7 if same_content else -1, barrier, rounds, out))
                 for _ in range(writers)]
    for p in processes:
        p.start()
    results = [out.get(timeout=120) for _ in processes]
    for p in processes:
        p.join(timeout=60)
        assert p.exitcode == 0
    store = ArtifactStore(tmp_path)
    written = {v for versions in results for v in versions}
    assert set(store.versions("trained_adapter", "coder")) == written
    assert len(written) == (1 if same_content else 3)
    parent = tmp_path / "trained_adapter" / "coder"
    assert sorted(p.name for p in parent.iterdir() if p.name.startswith(".")) == [], "no temporary left behind"
    latest = store.get("trained_adapter", "coder")  # verified
    assert latest.data_version in written and hash_directory(latest.path) == latest.data_version
    assert store.verify() == []
    assert os.stat(parent / LATEST).st_mode & 0o044, "LATEST is readable by a server running as another user"


def test_ruv_store_verify(tmp_path, capsys):
    from ruv_assets.cli import main

    store = ArtifactStore(tmp_path)
    stored = store.write("merged_adapter", "code_review", _payload(6))
    assert main(["store", "verify", "--root", str(tmp_path)]) == 0
    assert "1 objects, 0 problems" in capsys.readouterr().out
    (stored.path / "adapter_model.safetensors").write_bytes(b"rot")
    assert main(["store", "verify", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "merged_adapter[code_review]" in out and "corrupt" in out and "1 problems" in out
    assert main(["store", "verify", "--root", str(tmp_path / "nowhere")]) == 2


def test_an_unchanged_object_is_hashed_once_per_process_and_a_changed_one_again(tmp_path, monkeypatch):
    import ruv_resources.store as store_module

    store = ArtifactStore(tmp_path)
    stored = store.write("trained_adapter", "coder", _payload(4))
    calls = []
    real = store_module.hash_directory
    monkeypatch.setattr(store_module, "hash_directory", lambda path: calls.append(path) or real(path))
    for _ in range(3):
        assert ArtifactStore(str(tmp_path)).get("trained_adapter", "coder") == stored  # written here: known
    assert calls == []
    target = stored.path / "adapter_config.json"
    target.write_text(target.read_text())  # same bytes, rewritten: hashed again, still sound
    store.get("trained_adapter", "coder")
    assert len(calls) == 1
    store.get("trained_adapter", "coder")
    assert len(calls) == 1
    target.write_text('{"seed": 5}\n')
    with pytest.raises(StoreError, match="is corrupt"):
        store.get("trained_adapter", "coder")
