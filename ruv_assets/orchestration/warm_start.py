"""A cold start compiled on two cores: before a build, run the kernels it takes on tiny data of
the same types, split over two processes.

On an empty Numba cache a build spends most of its time compiling, one kernel after the other on
one core. The training chain (`run_steps` and what it calls) is the longest sequential part; the
rest (synthetic data and the quality formulas, the dataset statistics and certificate, evaluation,
the merge kernels) does not depend on it. `warm_start` compiles the training chain in this process
while a second process compiles the rest; both write Numba's cache, so the build that follows
loads every kernel instead of compiling it.

Tiny data, the same types: each step calls the functions the assets call (dataset format,
training with the default settings, certificate, evaluation, merge), on the catalogue's geometry
divided by one factor, so module costs keep their ratios and training takes the same thread
schedule. What it misses is compiled again by the build (slower, never wrong):
`bench/bench_compile.py` reports what the build still compiled, and a test holds it at zero for
the default catalogue. A stamp in Numba's cache directory, keyed by the kernels' sources, skips
all of it once done.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROWS = 24  # enough for the 80/20 split, a minibatch and a validation chunk


def scaled_geometry(geometry, max_rank: int):
    """The geometry with every width divided by the largest common factor that keeps them whole
    and at least `max_rank`: module costs keep their ratios, so training takes the same schedule."""
    heads = geometry.num_attention_heads
    head_dim = (geometry.head_dim or geometry.hidden_size // heads) if heads else None
    widths = [geometry.hidden_size, geometry.intermediate_size] + ([head_dim] if heads else [])
    floor = max(max_rank, 2)
    factor = max((f for f in range(1, min(widths) + 1)
                  if all(w % f == 0 for w in widths) and min(geometry.hidden_size, geometry.intermediate_size,
                                                             geometry.q_size, geometry.kv_size) // f >= floor),
                 default=1)
    update = {"hidden_size": geometry.hidden_size // factor, "intermediate_size": geometry.intermediate_size // factor}
    if heads:
        update["head_dim"] = head_dim // factor
    return geometry.model_copy(update=update)


def _synthetic_entries(catalogue):
    return [a for a in catalogue.adapters() if a.capture is None]


def _settings(entry):
    from ruv_assets.catalogue.training_config import TrainingConfig

    return TrainingConfig().settings(entry.dropout)


def _stored(dataset, directory: Path):
    """The dataset as the assets read it: written in the store's format and loaded back."""
    from ruv_resources.dataset_format import load_dataset, save_dataset

    directory.mkdir(parents=True)
    save_dataset(dataset, directory)
    return load_dataset(directory)


def _random_dataset(entry, geometry):
    """A dataset of the entry's modules with random rows (no synthetic kernels: those are the
    other process's)."""
    from ruv_kernels.modules import INPUT_KIND, module_shape
    from ruv_resources.dataset_format import Dataset

    rng = np.random.default_rng(0)
    dims = geometry.dims()
    inputs, targets, input_of = {}, {}, {}
    for layer in range(geometry.num_layers):
        for module in entry.target_modules:
            d_in, d_out = module_shape(module, dims["hidden_size"], dims["intermediate_size"],
                                       q_size=dims["q_size"], kv_size=dims["kv_size"])
            key, source = f"layers.{layer}.{module}", f"layers.{layer}.{INPUT_KIND[module]}"
            inputs.setdefault(source, rng.standard_normal((ROWS, d_in)).astype(np.float32))
            targets[key] = rng.standard_normal((ROWS, d_out)).astype(np.float32)
            input_of[key] = source
    split = int(0.8 * ROWS)
    return Dataset(inputs, targets, input_of, rng.uniform(0.5, 1.0, ROWS).astype(np.float32),
                   np.arange(split, dtype=np.int64), np.arange(split, ROWS, dtype=np.int64), {"kind": "warm"})


def warm_training(catalogue, geometry, scratch: Path) -> None:
    """`train` with each synthetic entry's default settings (one per set of targets)."""
    from ruv_kernels.adapter import LoraAdapter
    from ruv_kernels.train import train
    from ruv_assets.judging.evaluation import problems_for

    seen = set()
    for entry in _synthetic_entries(catalogue):
        if entry.target_modules in seen:
            continue
        seen.add(entry.target_modules)
        dataset = _stored(_random_dataset(entry, geometry), scratch / f"train-{entry.name}")
        start = LoraAdapter.initialise(entry.spec(geometry), 0)
        keys = start.keys()
        train(problems_for(dataset, keys), {k: start.A[k].astype(np.float32).copy() for k in keys},
              {k: start.B[k].astype(np.float32).copy() for k in keys}, start.scale,
              dataset.quality[dataset.train_idx], dataset.quality[dataset.val_idx], _settings(entry))


def warm_the_rest(catalogue, geometry, scratch: Path) -> None:
    """Everything a build runs besides training: each entry's synthetic data and quality formula,
    its statistics, certificate and scores, the adapter files; each composite's merge."""
    from ruv_kernels.adapter import LoraAdapter
    from ruv_kernels.merge import merge
    from ruv_kernels.synthetic import generate_task
    from ruv_resources.peft_format import load_adapter, save_adapter
    from ruv_assets.assets.dataset import synthetic_to_dataset
    from ruv_assets.catalogue.preset_seed import stable_seed
    from ruv_assets.judging import optimum
    from ruv_assets.judging.composite import merge_sources, merged_adapter_from
    from ruv_assets.judging.evaluation import delta_rel_error, problems_for, validation_loss, zero_validation_loss
    from ruv_assets.catalogue.training_config import TrainingConfig

    adapters, problems = {}, {}
    for entry in _synthetic_entries(catalogue):
        targets = list(entry.target_modules)
        task = generate_task(entry.name, targets, entry.rank, geometry.hidden_size, geometry.intermediate_size,
                             geometry.num_layers, ROWS, stable_seed(entry.name), q_size=geometry.q_size, kv_size=geometry.kv_size)
        dataset = _stored(synthetic_to_dataset(entry.name, task, targets, geometry.num_layers, 0), scratch / f"data-{entry.name}")
        adapter = LoraAdapter.initialise(entry.spec(geometry), 1)
        adapter = LoraAdapter(adapter.spec, adapter.A, {k: np.full_like(b, 0.01) for k, b in adapter.B.items()})
        keys = adapter.keys()
        stats = optimum.statistics(dataset, keys, _settings(entry).quality_threshold,
                                   precision=TrainingConfig().statistics_precision)
        optimum.certify(adapter.A, adapter.B, adapter.spec.scale, stats)
        problems[entry.name] = (problems_for(dataset, keys), dataset.quality[dataset.val_idx])
        validation_loss(adapter, *problems[entry.name])
        zero_validation_loss(*problems[entry.name])
        delta_rel_error(adapter, dataset)
        adapter.is_finite()
        (scratch / f"adapter-{entry.name}").mkdir()
        save_adapter(adapter, scratch / f"adapter-{entry.name}")
        adapters[entry.name] = load_adapter(scratch / f"adapter-{entry.name}", **geometry.dims()).adapter.astype(np.float32)
    for composite in catalogue.composites():
        if not all(s in adapters for s in composite.sources):
            continue
        sources = [adapters[s] for s in composite.sources]
        result = merge(composite.method, merge_sources(sources), weights=composite.weights, density=composite.density,
                       lam=composite.lam, t=composite.t, rank=composite.rank, seed=composite.seed,
                       dare_combine=composite.dare_combine if composite.method == "dare" else "linear")
        merged = merged_adapter_from(result, sources)
        merged.is_finite()
        for source in composite.sources:
            validation_loss(merged, *problems[source])


def cache_dir() -> Path:
    """Where Numba writes its cache (NUMBA_CACHE_DIR, else beside the kernels' sources)."""
    import numba

    import ruv_kernels

    return Path(numba.config.CACHE_DIR or Path(ruv_kernels.__file__).parent / "__pycache__")


def stamp_path() -> Path:
    """The stamp of a finished warm start: its name carries a hash of every kernel source and the
    Numba version, so a changed kernel (or a new Numba) warms again."""
    import numba

    import ruv_kernels

    digest = hashlib.sha256(numba.__version__.encode())
    for path in sorted(Path(ruv_kernels.__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return cache_dir() / f"ruv-warm-start-{digest.hexdigest()[:16]}"


def warm_start(catalogue, geometry, *, log=print) -> bool:
    """Compile the build's kernels on two processes unless this cache is already warm; returns
    whether it ran. Failures are the build's to report: the warm start only ever saves time."""
    stamp = stamp_path()
    if stamp.exists() or not _synthetic_entries(catalogue):
        return False
    tiny = scaled_geometry(geometry, max(a.rank for a in catalogue.adapters()))
    with tempfile.TemporaryDirectory(prefix="ruv-warm-") as scratch:
        helper = subprocess.Popen([sys.executable, "-m", "ruv_assets.orchestration.warm_start", scratch],
                                  env={**os.environ, "PYTHONWARNINGS": "ignore"},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            warm_training(catalogue, tiny, Path(scratch))
        finally:
            _, err = helper.communicate()
        if helper.returncode != 0:
            log(f"warm start: the second process failed ({(err or '').strip().splitlines()[-1:] or ['?']}); the build compiles what is left")
            return True
    cache_dir().mkdir(parents=True, exist_ok=True)
    stamp.touch()
    return True


def main(argv: list[str]) -> int:
    """The second process: `python -m ruv_assets.orchestration.warm_start SCRATCH`."""
    from ruv_assets.catalogue.catalogue import current_catalogue, current_geometry

    catalogue = current_catalogue()
    tiny = scaled_geometry(current_geometry(), max(a.rank for a in catalogue.adapters()))
    warm_the_rest(catalogue, tiny, Path(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
