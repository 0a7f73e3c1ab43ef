"""The content-addressed store: write-once, atomic, hash-named, and refusing unsafe names."""

import os

import pytest

from ruv_resources.errors import StoreError
from ruv_resources.store import ArtifactStore, hash_directory


def _writer(text):
    def write(d):
        (d / "a.txt").write_text(text)
        (d / "b.bin").write_bytes(b"\x00\x01")
    return write


def test_write_is_content_addressed(tmp_path):
    store = ArtifactStore(tmp_path)
    one = store.write("trained_adapter", "coder", _writer("x"))
    assert one.path == tmp_path / "trained_adapter" / "coder" / one.data_version
    assert one.data_version == hash_directory(one.path)
    mtime = os.stat(one.path / "a.txt").st_mtime_ns
    again = store.write("trained_adapter", "coder", _writer("x"))
    assert again == one and os.stat(one.path / "a.txt").st_mtime_ns == mtime, "identical content is never rewritten"
    two = store.write("trained_adapter", "coder", _writer("y"))
    assert two.data_version != one.data_version
    assert store.get("trained_adapter", "coder") == two
    assert store.get("trained_adapter", "coder", one.data_version) == one
    assert store.versions("trained_adapter", "coder") == sorted([one.data_version, two.data_version])


def test_failed_writer_leaves_nothing(tmp_path):
    store = ArtifactStore(tmp_path)
    first = store.write("a", "p", _writer("x"))

    def broken(d):
        (d / "half").write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        store.write("a", "p", broken)
    assert sorted(p.name for p in (tmp_path / "a" / "p").iterdir()) == sorted(["LATEST", first.data_version])
    assert store.get("a", "p") == first


@pytest.mark.parametrize("bad", ["..", "../x", "a/b", "/abs", "", ".hidden", "a..b", "x" * 200])
def test_unsafe_names_are_refused(tmp_path, bad):
    store = ArtifactStore(tmp_path)
    with pytest.raises(StoreError, match="not a safe name"):
        store.write("asset", bad, _writer("x"))
    with pytest.raises(StoreError, match="not a safe name"):
        store.write(bad, "p", _writer("x"))
    assert not any(tmp_path.iterdir())


def test_missing_objects_are_explained(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(StoreError, match="materialise it first"):
        store.get("trained_adapter", "coder")
    store.write("trained_adapter", "coder", _writer("x"))
    with pytest.raises(StoreError, match="has no version"):
        store.get("trained_adapter", "coder", "0" * 64)


def test_safetensors_files_are_byte_reproducible(tmp_path):
    """The header metadata order of safetensors varies between processes; ours must not."""
    import subprocess
    import sys

    script = (
        "import numpy as np, sys; from resources.safetensors_io import save_file_deterministic; "
        "save_file_deterministic({'b': np.ones((2, 3), np.float32), 'a': np.zeros(5, np.float16)}, sys.argv[1], "
        "{'format': 'pt', 'z': '1', 'm': '2', 'a': '3', 'q': '4'})"
    )
    digests = set()
    for i in range(4):
        path = tmp_path / f"{i}.safetensors"
        subprocess.run([sys.executable, "-c", script, str(path)], check=True)
        digests.add(path.read_bytes())
    assert len(digests) == 1
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        assert handle.metadata()["m"] == "2" and handle.get_tensor("b").shape == (2, 3)


def test_published_versions_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        obj = ArtifactStore(tmp_path).write("a", "p", _writer("x"))
    finally:
        os.umask(old)
    assert obj.path.stat().st_mode & 0o777 == 0o755
