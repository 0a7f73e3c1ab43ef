"""Datasets on disk: bit-identical reload, float16 storage, and every user-folder error named."""

import numpy as np
import pytest
from safetensors.numpy import save_file

from ruv_kernels.synthetic import generate_task
from ruv_resources.dataset_format import DATASET_NAME, DatasetError, check_dataset, load_dataset, load_user_folder, save_dataset
from ruv_assets.assets.dataset import synthetic_to_dataset

GEO = dict(hidden_size=16, intermediate_size=24, num_layers=2)


@pytest.fixture
def dataset():
    targets = ["q_proj", "v_proj", "down_proj"]
    task = generate_task("coder", targets, 4, GEO["hidden_size"], GEO["intermediate_size"], GEO["num_layers"], 50, 3)
    return synthetic_to_dataset("coder", task, targets, GEO["num_layers"], 3)


def test_reload_is_bit_identical(dataset, tmp_path):
    save_dataset(dataset, tmp_path)
    back = load_dataset(tmp_path)
    check_dataset(back, **GEO)
    for name in dataset.inputs:
        assert back.inputs[name].tobytes() == np.ascontiguousarray(dataset.inputs[name]).tobytes()
    for key in dataset.targets:
        assert back.targets[key].tobytes() == np.ascontiguousarray(dataset.targets[key]).tobytes()
        U, V = dataset.truth[key]
        np.testing.assert_array_equal(back.truth[key][0], U)
        np.testing.assert_array_equal(back.truth[key][1], V)
    np.testing.assert_array_equal(back.quality, dataset.quality)
    np.testing.assert_array_equal(back.train_idx, dataset.train_idx)
    assert back.meta["noise_floor"] == dataset.meta["noise_floor"] and back.input_of == dataset.input_of
    first = (tmp_path / DATASET_NAME).read_bytes()
    save_dataset(load_dataset(tmp_path), tmp_path)
    assert (tmp_path / DATASET_NAME).read_bytes() == first, "save -> load -> save gives the same bytes"


def test_float16_storage(dataset, tmp_path):
    save_dataset(dataset, tmp_path, dtype="float16")
    back = load_dataset(tmp_path)
    key = next(iter(dataset.targets))
    assert back.targets[key].dtype == np.float16 and back.quality.dtype == np.float32
    np.testing.assert_allclose(back.targets[key], dataset.targets[key], rtol=1e-2, atol=1e-1)


def test_corrupt_dataset_file(dataset, tmp_path):
    save_dataset(dataset, tmp_path)
    data = (tmp_path / DATASET_NAME).read_bytes()
    (tmp_path / DATASET_NAME).write_bytes(data[: len(data) // 3])
    with pytest.raises(DatasetError, match="corrupt or partial"):
        load_dataset(tmp_path)


def _user(folder, name="layers.0.q_proj.safetensors", n=30, width=16, out=16, **extra):
    rng = np.random.default_rng(0)
    tensors = {"X": rng.standard_normal((n, width)).astype(np.float32), "R": rng.standard_normal((n, out)).astype(np.float32)}
    tensors.update(extra)
    save_file(tensors, str(folder / name))


def test_user_folder_loads(tmp_path):
    _user(tmp_path)
    _user(tmp_path, "layers.1.down_proj.safetensors", width=24, quality=np.linspace(0, 1, 30).astype(np.float32))
    ds = load_user_folder(tmp_path, **GEO, seed=1)
    assert ds.n_examples == 30 and len(ds.train_idx) == 24 and len(ds.val_idx) == 6
    assert set(ds.targets) == {"layers.0.q_proj", "layers.1.down_proj"} and ds.quality[-1] == 1.0


@pytest.mark.parametrize(
    "setup,message",
    [
        (lambda d: None, "no .safetensors files"),
        (lambda d: _user(d, "q_proj.safetensors"), "name must be layers"),
        (lambda d: _user(d, "layers.0.w_proj.safetensors"), "bad module key"),
        (lambda d: _user(d, width=15), r"X has shape \[30, 15\], expected \[30, 16\]"),
        (lambda d: _user(d, out=17), r"R has shape \[30, 17\]"),
        (lambda d: _user(d, "layers.5.q_proj.safetensors"), "outside the 2-layer geometry"),
        (lambda d: (_user(d), _user(d, "layers.0.v_proj.safetensors", n=31)), "disagree on the number of examples"),
        (lambda d: _user(d, quality=np.full(30, 2.0, np.float32)), r"quality must be \[n\] values in \[0, 1\]"),
        (lambda d: save_file({"X": np.zeros((3, 16), np.float32)}, str(d / "layers.0.q_proj.safetensors")), "missing tensor R"),
        (lambda d: save_file({"X": np.zeros((3, 16)), "R": np.zeros((3, 16))}, str(d / "layers.0.q_proj.safetensors")), "dtype float64"),
        (lambda d: (d / "layers.0.q_proj.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}"), "corrupt or partial"),
        (lambda d: _user(d, n=1), "both must be non-empty"),
    ],
)
def test_user_folder_errors(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(DatasetError, match=message):
        load_user_folder(tmp_path, **GEO)


def test_not_a_folder(tmp_path):
    with pytest.raises(DatasetError, match="not a directory"):
        load_user_folder(tmp_path / "nope", **GEO)
