"""Pydantic models of what a user declares: adapter configs, model geometry, adapter metadata.

A bad value fails at construction with the field's name and the reason.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kernels.adapter import AdapterSpec
from kernels.modules import ALL_MODULES

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
_SHORT = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}

AdapterName = Annotated[str, Field(pattern=_NAME, description="letters, digits, '_' or '-'")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelGeometry(Strict):
    """Shapes of the base model a family of adapters is built for (Llama-style block)."""

    hidden_size: int = Field(768, ge=1)
    intermediate_size: int = Field(3072, ge=1)
    num_layers: int = Field(2, ge=1)


class LoraConfig(Strict):
    """One adapter's declaration: the fields of PEFT's LoraConfig plus description and tags."""

    name: AdapterName
    rank: int = Field(ge=1, le=4096)
    alpha: float = Field(gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: tuple[str, ...] = Field(min_length=1)
    description: str = ""
    tags: tuple[str, ...] = ()
    use_rslora: bool = False

    @field_validator("target_modules", mode="before")
    @classmethod
    def _known_modules(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        out = []
        for item in value:
            full = _SHORT.get(item, item)
            if full not in ALL_MODULES:
                raise ValueError(f"unknown module {item!r}; expected one of {', '.join(ALL_MODULES)}")
            if full in out:
                raise ValueError(f"module {full!r} listed twice")
            out.append(full)
        return tuple(m for m in ALL_MODULES if m in out)

    @staticmethod
    def builder(name: str) -> "LoraConfigBuilder":
        return LoraConfigBuilder(name)

    def spec(self, geometry: ModelGeometry) -> AdapterSpec:
        """The numeric description `kernels` works with."""
        return AdapterSpec(
            rank=self.rank,
            alpha=self.alpha,
            targets=self.target_modules,
            hidden_size=geometry.hidden_size,
            intermediate_size=geometry.intermediate_size,
            num_layers=geometry.num_layers,
            dropout=self.dropout,
            use_rslora=self.use_rslora,
        )

    def params(self, geometry: ModelGeometry) -> int:
        return self.spec(geometry).param_count()

    def memory_bytes(self, geometry: ModelGeometry, bytes_per_param: int = 4) -> int:
        return self.spec(geometry).memory_bytes(bytes_per_param)


class LoraConfigBuilder:
    """Fluent construction of a `LoraConfig`; validation happens once, in `build()`."""

    def __init__(self, name: str):
        self._fields: dict[str, Any] = {"name": name, "tags": []}

    def rank(self, value: int) -> "LoraConfigBuilder":
        self._fields["rank"] = value
        return self

    def alpha(self, value: float) -> "LoraConfigBuilder":
        self._fields["alpha"] = value
        return self

    def dropout(self, value: float) -> "LoraConfigBuilder":
        self._fields["dropout"] = value
        return self

    def target_modules(self, modules: list[str]) -> "LoraConfigBuilder":
        self._fields["target_modules"] = list(modules)
        return self

    def description(self, text: str) -> "LoraConfigBuilder":
        self._fields["description"] = text
        return self

    def add_tag(self, tag: str) -> "LoraConfigBuilder":
        self._fields["tags"].append(tag)
        return self

    def use_rslora(self, value: bool = True) -> "LoraConfigBuilder":
        self._fields["use_rslora"] = value
        return self

    def build(self) -> LoraConfig:
        return LoraConfig(**self._fields)


class AdapterMetadata(BaseModel):
    """What travels with an adapter file: who it is, what it was trained on, when.

    Timestamps are integer milliseconds since the Unix epoch (UTC), both of them.
    """

    model_config = ConfigDict(extra="forbid")

    name: AdapterName
    version: str = "0.1.0"
    dataset_description: str = ""
    n_examples: int = Field(0, ge=0)
    quality_score: float | None = Field(None, ge=0.0, le=1.0)
    created_at_ms: int = Field(default_factory=lambda: int(time.time() * 1000), ge=0)
    modified_at_ms: int = Field(default_factory=lambda: int(time.time() * 1000), ge=0)
    tags: tuple[str, ...] = ()
    custom: dict[str, str | int | float | bool] = Field(default_factory=dict)

    @field_validator("version")
    @classmethod
    def _semver(cls, value: str) -> str:
        if not _SEMVER.match(value):
            raise ValueError(f"{value!r} is not a semantic version (MAJOR.MINOR.PATCH)")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> "AdapterMetadata":
        if self.modified_at_ms < self.created_at_ms:
            raise ValueError("modified_at_ms is before created_at_ms")
        return self
