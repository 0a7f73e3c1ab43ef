"""A catalogue with a base model and capture entries: geometry read from the model, presets given a
teacher, and every bad entry refused at load with the entry and the reason."""

import pytest

from ruv_assets.catalogue.catalogue import CatalogueError, load_catalogue
from tests.resources.test_base_model import gguf_file

SMOL = {"general.architecture": "llama", "llama.embedding_length": 576, "llama.feed_forward_length": 1536,
        "llama.block_count": 30, "llama.attention.head_count": 9, "llama.attention.head_count_kv": 3}


def write(tmp_path, text):
    gguf_file(tmp_path, SMOL, name="smol.gguf")
    (tmp_path / "corpus.jsonl").write_text('{"text": "hello"}\n')
    path = tmp_path / "catalogue.yaml"
    path.write_text(text)
    return path


def test_geometry_comes_from_the_base_model(tmp_path):
    catalogue = load_catalogue(write(tmp_path, """
base_model: smol.gguf
adapters:
  - name: coder
    capture: {system_prompt: "You are an expert programmer.", corpus: corpus.jsonl, max_tokens: 2048}
  - {name: distilled, rank: 8, alpha: 16, target_modules: [q, k, v, o], capture: {teacher_adapter: ., corpus: corpus.jsonl}}
"""))
    geo = catalogue.geometry
    assert (geo.hidden_size, geo.num_layers, geo.q_size, geo.kv_size) == (576, 30, 576, 192)
    coder = catalogue.adapter("coder")
    assert coder.rank == 16 and coder.capture.effective_mode == "sequential" and coder.capture.corpus == str(tmp_path / "corpus.jsonl")
    assert catalogue.adapter("distilled").capture.effective_mode == "teacher_forced"
    # a system prompt conditions the start of a text; a weight teacher does not care where a sequence starts
    assert coder.capture.effective_windows == "documents"
    assert catalogue.adapter("distilled").capture.effective_windows == "stream"
    assert catalogue.adapter("distilled").spec(geo).shape_of("layers.29.k_proj") == (576, 192)
    assert catalogue.base_model == str(tmp_path / "smol.gguf")


@pytest.mark.parametrize("body, message", [
    ("base_model: nowhere.gguf\n", "base_model: .*nowhere.gguf: no such model"),
    ("base_model: smol.gguf\ngeometry: {hidden_size: 8}\n", "give either base_model or geometry"),
    ("adapters:\n  - name: coder\n    capture: {system_prompt: x, corpus: corpus.jsonl}\n", r"adapters\[coder\]: capture: needs base_model"),
    ("base_model: smol.gguf\nadapters:\n  - name: coder\n    capture: {system_prompt: x, corpus: missing.jsonl}\n",
     r"adapters\[coder\]: capture: corpus: .*missing.jsonl does not exist"),
    ("base_model: smol.gguf\nadapters:\n  - name: coder\n    capture: {corpus: corpus.jsonl}\n", "name exactly one teacher"),
    ("base_model: smol.gguf\nadapters:\n  - name: coder\n    capture: {system_prompt: x, teacher_model: ., corpus: corpus.jsonl}\n",
     "name exactly one teacher"),
    ("base_model: smol.gguf\nadapters:\n  - name: coder\n    capture: {system_prompt: x, corpus: corpus.jsonl, max_tokens: 100}\n",
     "max_tokens 100 is below one batch"),
    ("base_model: smol.gguf\nadapters:\n  - name: coder\n    capture: {system_prompt: x, corpus: corpus.jsonl, windows: packed}\n",
     "windows.*'documents' or 'stream'"),
    ("base_model: smol.gguf\nadapters:\n  - name: coder\n    rank: 4\n    capture: {system_prompt: x, corpus: corpus.jsonl}\n",
     "coder is a preset; only capture can be added to it, not rank"),
])
def test_bad_capture_entries(tmp_path, body, message):
    with pytest.raises(CatalogueError, match=message):
        load_catalogue(write(tmp_path, body))
