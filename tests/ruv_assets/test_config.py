"""Pydantic configs, the builder, presets and the catalogue file, with every bad input named."""

import json
import time

import pytest
from pydantic import ValidationError

from ruv_assets.catalogue.catalogue import CatalogueError, load_catalogue
from ruv_assets.catalogue.config import AdapterMetadata, LoraConfig, ModelGeometry
from ruv_assets.catalogue.presets import PRESETS

EXPECTED = {
    "coder": (16, 32.0, 0.05, ("q_proj", "k_proj", "v_proj", "o_proj"), ("code-gen", "refactoring", "syntax")),
    "researcher": (8, 16.0, 0.1, ("q_proj", "k_proj", "v_proj"), ("analysis", "research", "synthesis")),
    "security": (16, 32.0, 0.05, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), ("security", "vulnerabilities", "audit")),
    "architect": (12, 24.0, 0.05, ("q_proj", "v_proj", "gate_proj", "up_proj"), ("architecture", "design", "patterns")),
    "reviewer": (8, 16.0, 0.1, ("q_proj", "v_proj"), ("review", "quality", "best-practices")),
}


def test_presets_are_the_original_design():
    assert {p.name: (p.rank, p.alpha, p.dropout, p.target_modules, p.tags) for p in PRESETS} == EXPECTED


def test_params_at_default_geometry():
    g = ModelGeometry()
    by_name = {p.name: p for p in PRESETS}
    assert by_name["coder"].params(g) == 2 * 16 * 4 * (768 + 768)
    # gate/up are hidden->intermediate, down intermediate->hidden: 3 * (768 + 3072)
    assert by_name["security"].params(g) == 2 * 16 * (4 * 1536 + 3 * 3840)
    assert by_name["architect"].params(g) == 2 * 12 * (2 * 1536 + 2 * 3840)
    assert by_name["reviewer"].memory_bytes(g) == 4 * 2 * 8 * 2 * 1536


def test_builder_validates_on_build():
    config = (LoraConfig.builder("x").rank(12).alpha(24.0).dropout(0.1).target_modules(["q", "v_proj"])
              .description("d").add_tag("t1").add_tag("t2").build())
    assert config.target_modules == ("q_proj", "v_proj") and config.tags == ("t1", "t2")
    with pytest.raises(ValidationError, match="rank"):
        LoraConfig.builder("x").rank(0).alpha(1.0).target_modules(["q"]).build()
    with pytest.raises(ValidationError, match="alpha"):
        LoraConfig.builder("x").rank(1).alpha(-1.0).target_modules(["q"]).build()
    with pytest.raises(ValidationError, match="dropout"):
        LoraConfig.builder("x").rank(1).alpha(1.0).dropout(1.0).target_modules(["q"]).build()
    with pytest.raises(ValidationError, match="unknown module 'w_proj'"):
        LoraConfig.builder("x").rank(1).alpha(1.0).target_modules(["w_proj"]).build()
    with pytest.raises(ValidationError, match="target_modules"):
        LoraConfig.builder("x").rank(1).alpha(1.0).target_modules([]).build()
    with pytest.raises(ValidationError, match="name"):
        LoraConfig.builder("../etc").rank(1).alpha(1.0).target_modules(["q"]).build()


def test_metadata_round_trip_and_validation():
    now = int(time.time() * 1000)
    meta = AdapterMetadata(name="coder", version="1.4.0", n_examples=800, quality_score=0.8, custom={"run": "abc", "epochs": 3})
    assert abs(meta.created_at_ms - now) < 5000
    assert AdapterMetadata.model_validate(json.loads(meta.model_dump_json())) == meta
    with pytest.raises(ValidationError, match="semantic version"):
        AdapterMetadata(name="x", version="1.0")
    with pytest.raises(ValidationError, match="quality_score"):
        AdapterMetadata(name="x", quality_score=1.5)
    with pytest.raises(ValidationError, match="modified_at_ms is before"):
        AdapterMetadata(name="x", created_at_ms=10, modified_at_ms=5)


def test_lookup_by_name_and_tag():
    catalogue = load_catalogue()
    assert catalogue.adapter("architect").rank == 12
    assert [a.name for a in catalogue.by_tag("review")] == ["reviewer"]
    assert catalogue.composite_names == ["multi_agent", "code_review"]
    with pytest.raises(KeyError, match="unknown adapter 'nobody'"):
        catalogue.adapter("nobody")


def write(tmp_path, text, suffix=".yaml"):
    path = tmp_path / f"catalogue{suffix}"
    path.write_text(text)
    return path


def test_custom_adapters_from_yaml_and_toml(tmp_path, monkeypatch):
    y = write(tmp_path, "adapters:\n  - {name: docs, rank: 4, alpha: 8, target_modules: [q, v], tags: [docs]}\n")
    assert load_catalogue(y).adapter("docs").target_modules == ("q_proj", "v_proj")
    t = write(tmp_path, '[geometry]\nhidden_size = 64\nintermediate_size = 128\nnum_layers = 1\n[[adapters]]\nname = "docs"\nrank = 4\nalpha = 8.0\ntarget_modules = ["q_proj"]\n', ".toml")
    monkeypatch.setenv("RUV_CATALOGUE", str(t))
    catalogue = load_catalogue()
    assert catalogue.geometry.hidden_size == 64 and "docs" in catalogue.adapter_names


@pytest.mark.parametrize(
    "text,message",
    [
        ("adapters:\n  - {name: docs, rank: 0, alpha: 8, target_modules: [q]}\n", r"adapters\[docs\]: rank: .*greater than or equal to 1"),
        ("adapters:\n  - {name: docs, rank: 2, alpha: 8, target_modules: [qq]}\n", r"adapters\[docs\]: target_modules: unknown module 'qq'"),
        ("adapters:\n  - {name: docs, rank: 2, alpha: 8, target_modules: [q], colour: red}\n", r"adapters\[docs\]: colour: Extra inputs"),
        ("adapters:\n  - {name: coder, rank: 2, alpha: 8, target_modules: [q]}\n", r"'coder' is already declared"),
        ("composites:\n  - {name: c, method: ties, sources: [coder, reviewer]}\n", r"composites\[c\]: \(entry\): ties needs density"),
        ("composites:\n  - {name: c, method: slerp, sources: [coder, reviewer, security], t: 0.5}\n", r"slerp merges exactly two"),
        ("composites:\n  - {name: c, method: weighted, sources: [coder, reviewer], weights: [1, -1]}\n", r"weights sum to zero"),
        ("composites:\n  - {name: c, method: average, sources: [coder, ghost]}\n", r"composites\[c\]: sources: unknown adapter 'ghost'"),
        ("composites:\n  - {name: c, method: blend, sources: [coder]}\n", r"composites\[c\]: method: Input should be"),
        ("geometry: {hidden_size: 0}\n", r"geometry: hidden_size: .*greater than or equal to 1"),
        ("adapters: [\n", r"not valid YAML"),
        ("- a\n- b\n", r"expected a mapping"),
    ],
)
def test_bad_catalogue_names_entry_field_and_reason(tmp_path, text, message):
    with pytest.raises(CatalogueError, match=message):
        load_catalogue(write(tmp_path, text))


def test_missing_catalogue_file(tmp_path):
    with pytest.raises(CatalogueError, match="cannot read catalogue"):
        load_catalogue(tmp_path / "none.yaml")
