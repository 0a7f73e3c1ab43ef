"""What verifying every store read costs: re-hashing an object (sha256 of its files) against
loading it (what the reading asset does anyway), for the largest objects `make run` stores at the
default geometry: the security dataset (7 modules x 2 layers, 1000 examples) and the security
trained adapter.

    .venv/bin/python bench/bench_store_verify.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def best(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> int:
    from ruv_kernels.adapter import LoraAdapter
    from ruv_resources.dataset_format import load_dataset
    from ruv_resources.peft_format import load_adapter, save_adapter
    from ruv_resources.store import ArtifactStore, hash_directory
    from ruv_assets.assets.dataset import synthetic_to_dataset
    from ruv_assets.catalogue.catalogue import current_catalogue, current_geometry
    from ruv_kernels.synthetic import generate_task
    from ruv_resources.dataset_format import save_dataset

    geo = current_geometry()
    entry = current_catalogue().adapter("security")
    targets = list(entry.target_modules)
    task = generate_task("security", targets, entry.rank, geo.hidden_size, geo.intermediate_size, geo.num_layers, 1000, 7)
    dataset = synthetic_to_dataset("security", task, targets, geo.num_layers, 7)
    adapter = LoraAdapter.initialise(entry.spec(geo), seed=1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = ArtifactStore(tmp)
        data = store.write("synthetic_dataset", "security", lambda d: save_dataset(dataset, d))
        weights = store.write("trained_adapter", "security", lambda d: save_adapter(adapter, d))
        for name, stored, load in (("synthetic_dataset[security]", data, lambda p: load_dataset(p)),
                                   ("trained_adapter[security]", weights, lambda p: load_adapter(p))):
            size = sum(f.stat().st_size for f in stored.path.iterdir())
            t_hash = best(lambda: hash_directory(stored.path))
            t_load = best(lambda: load(stored.path))
            t_get = best(lambda: store.get(stored.asset, stored.partition))
            rows.append((name, size, t_hash, t_load, t_get))
    print(f"{'object':<30} {'MiB':>7} {'verify ms':>10} {'load ms':>9} {'verify/load':>12} {'GB/s':>6}")
    for name, size, t_hash, t_load, t_get in rows:
        print(f"{name:<30} {size / 2**20:>7.1f} {1000 * t_hash:>10.1f} {1000 * t_load:>9.1f} {t_hash / t_load:>12.2f} "
              f"{size / t_hash / 1e9:>6.2f}")
    print(f"median verify/load: {statistics.median(r[2] / r[3] for r in rows):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
