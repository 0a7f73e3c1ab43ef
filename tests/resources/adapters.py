"""Test adapters whose every A and B value equals a sequence number, so that a reader that mixed
two versions would show it (shared by the slot tests)."""

from pathlib import Path

from ruv_kernels.adapter import AdapterSpec, LoraAdapter
from ruv_resources.peft_format import save_adapter

SPEC = AdapterSpec(rank=4, alpha=8.0, targets=("q_proj", "v_proj"), hidden_size=32, intermediate_size=64, num_layers=1)


def make_adapter(directory: Path, seq: int, spec: AdapterSpec = SPEC) -> Path:
    """An adapter whose A and B values all equal `seq`, saved in PEFT layout into `directory`."""
    adapter = LoraAdapter.initialise(spec, seed=seq)
    for key in adapter.keys():
        adapter.A[key][:] = seq
        adapter.B[key][:] = seq
    directory.mkdir(parents=True, exist_ok=True)
    save_adapter(adapter, directory, metadata={"seq": seq})
    return directory
