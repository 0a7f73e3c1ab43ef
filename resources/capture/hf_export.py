"""The base model as an HF safetensors directory, the form vLLM serves (vLLM 0.32 has no GGUF loader).

A GGUF file is dequantised by transformers on load; what vLLM then serves must be those very
weights, so that the server, PEFT and the project's capture all compute with the same numbers.
The export writes `model.safetensors` (float32, the tied `lm_head` left out as transformers
saves it), `config.json` (without the GGUF quantisation entry, the architecture named),
the tokenizer, the generation config and `ruv_serving.json` (the source file and its content hash,
which the server reports so lineage says which weights were served). Files only, no timestamps:
the same source gives the same bytes, so the directory's hash is a content address.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ruv_resources.base_model import content_hash, read_base_model

IDENTITY = "ruv_serving.json"


def export_hf_dir(source: str | os.PathLike, out: str | os.PathLike) -> dict:
    """Write the model at `source` (.gguf or model directory) into the empty directory `out`."""
    from safetensors.torch import save_file

    from ruv_resources.capture.models import load_model

    source, out = Path(source), Path(out)
    info = read_base_model(source)
    loaded = load_model(source)
    model = loaded.model
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        tensors.pop("lm_head.weight", None)
    out.mkdir(parents=True, exist_ok=True)
    save_file(dict(sorted(tensors.items())), str(out / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "transformers_version"):
        config.pop(key, None)
    config["architectures"] = [type(model).__name__]
    config["torch_dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    generation = model.generation_config.to_dict()
    generation.pop("transformers_version", None)
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n")
    loaded.tokenizer.save_pretrained(str(out))
    identity = {"source": str(source.resolve()), "source_hash": content_hash(source), "architecture": info.architecture,
                "num_layers": info.num_layers, "hidden_size": info.hidden_size, "tensors": len(tensors), "dtype": "float32"}
    (out / IDENTITY).write_text(json.dumps(identity, indent=2, sort_keys=True) + "\n")
    return identity
