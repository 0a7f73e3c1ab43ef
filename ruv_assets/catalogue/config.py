"""Pydantic models of what a user declares: adapter configs, model geometry, adapter metadata.

A bad value fails at construction with the field's name and the reason.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ruv_kernels.adapter import AdapterSpec
from ruv_kernels.modules import ALL_MODULES

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
_SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
_SHORT = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}

AdapterName = Annotated[str, Field(pattern=_NAME, description="letters, digits, '_' or '-'")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelGeometry(Strict):
    """Shapes of the base model a family of adapters is built for (Llama-style block).

    Head counts are optional: without them every attention module is hidden -> hidden; with them
    q is `hidden -> heads * head_dim` and k/v `hidden -> kv_heads * head_dim` (grouped-query
    attention). Field names are Hugging Face's `config.json` names.
    """

    hidden_size: int = Field(768, ge=1)
    intermediate_size: int = Field(3072, ge=1)
    num_layers: int = Field(2, ge=1)
    num_attention_heads: int | None = Field(None, ge=1)
    num_key_value_heads: int | None = Field(None, ge=1)
    head_dim: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _heads(self) -> "ModelGeometry":
        heads, kv = self.num_attention_heads, self.num_key_value_heads
        if heads is None:
            if kv is not None or self.head_dim is not None:
                raise ValueError("num_key_value_heads and head_dim need num_attention_heads")
            return self
        if self.head_dim is None and self.hidden_size % heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {heads}; give head_dim")
        if kv is not None and heads % kv:
            raise ValueError(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}")
        return self

    def dims(self) -> dict[str, int]:
        """The module widths every loader and checker takes: hidden, intermediate, layers, q and kv sizes."""
        return {"hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size, "num_layers": self.num_layers,
                "q_size": self.q_size, "kv_size": self.kv_size}

    @property
    def q_size(self) -> int:
        """Output width of q_proj (input width of o_proj): heads * head_dim."""
        if self.num_attention_heads is None:
            return self.hidden_size
        return self.num_attention_heads * (self.head_dim or self.hidden_size // self.num_attention_heads)

    @property
    def kv_size(self) -> int:
        """Output width of k_proj and v_proj: kv_heads * head_dim."""
        if self.num_attention_heads is None:
            return self.hidden_size
        kv = self.num_key_value_heads or self.num_attention_heads
        return kv * (self.head_dim or self.hidden_size // self.num_attention_heads)


class AdaptConfig(Strict):
    """Learning from use (`adapted_adapter`): how a captured role adapts to its traffic log.

    When at least `min_requests` new requests that are not held out have arrived, the live adapter
    is updated on them (at most `max_requests`, the newest) for `epochs` passes of AdamW at `lr`,
    with `replay` windows of the original corpus per new sequence, and published only if, on
    held-out traffic, its KL to the teacher is below the live adapter's and, on the corpus's
    held-out windows, it is at most `corpus_margin` above the role's as first fitted (its trained
    version: rises do not add up over updates). `enabled: false` (or
    `adapt: false`) turns it off for the role.
    """

    enabled: bool = True
    min_requests: int = Field(16, ge=1, description="new training requests that trigger an update")
    max_requests: int = Field(256, ge=1, description="requests one update trains on at most (the newest)")
    epochs: int = Field(2, ge=1, le=50)
    lr: float = Field(5e-4, gt=0.0, le=1.0)
    batch_size: int = Field(8, ge=1)
    replay: float = Field(0.5, ge=0.0, le=16.0, description="corpus windows replayed per new sequence (forgetting)")
    correction_weight: float = Field(0.2, ge=0.0, le=10.0, description="weight of the cross-entropy on corrected answers")
    corpus_margin: float = Field(0.10, ge=0.0, le=10.0, description="guard: allowed rise of the corpus's held-out KL over the trained version's")
    guard_requests: int = Field(16, ge=1, description="held-out requests the guard judges on at most (the newest)")

    @model_validator(mode="before")
    @classmethod
    def _from_bool(cls, value: Any) -> Any:
        return {"enabled": value} if isinstance(value, bool) else value


class CaptureConfig(Strict):
    """Where an adapter's data comes from on a real model: a teacher run over a text corpus.

    Exactly one teacher: `teacher_adapter` (a PEFT LoRA adapter directory for the base model),
    `teacher_model` (a fine-tuned model directory of the same architecture and vocabulary) or
    `system_prompt` (the base model reading this prompt before each text: context distillation).
    `mode` defaults per teacher: teacher-forced for an adapter or model teacher (exact when the
    teacher differs from the base on the target modules), sequential for a system prompt (the
    student's inputs differ from the teacher's, so each layer is fitted on what the student
    really reads after the earlier layers were fitted).
    `windows` defaults per teacher too: `documents` for a system prompt (each text's first
    `window` tokens: the prompt conditions the start of a text, as in a served request; on
    SmolLM2 security +5.8, coder +13.9, architect +37.7 points of KL removed against packed
    windows, reviewer +2.8, researcher -5.3; BENCHMARKS.md),
    `stream` for a weight teacher (the texts packed and cut anywhere: a delta does not depend on
    where a sequence starts, and packing uses all of the corpus).
    `refine_epochs` (default 6 after a sequential fit, 0 after a teacher-forced one): epochs of
    AdamW on the KL itself, through PEFT, starting from the closed-form fit, keeping the epoch
    of lowest KL on a fifth of the training windows (`ruv_resources.capture.refine`).
    """

    teacher_adapter: str | None = None
    teacher_model: str | None = None
    system_prompt: str | None = Field(None, min_length=1)
    corpus: str = Field(description="a .jsonl file of {\"text\": ...} lines, a .txt file or a directory of .txt files")
    max_tokens: int = Field(8192, ge=1, description="tokens captured (training and held-out windows together)")
    window: int = Field(128, ge=8, le=8192, description="tokens per sequence")
    batch_size: int = Field(8, ge=1, description="sequences per forward pass")
    heldout_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="windows kept for judging on the model, never trained on")
    mode: Literal["teacher_forced", "sequential"] | None = None
    windows: Literal["documents", "stream"] | None = Field(
        None, description="documents: each text's first `window` tokens; stream: the texts packed and cut anywhere")
    ridge: float | None = Field(None, ge=0.0, description="ridge as a fraction of the Gram's mean diagonal")
    refine_epochs: int | None = Field(None, ge=0, le=100, description="epochs of KL descent through PEFT after a sequential fit (0: the closed form alone)")
    refine_lr: float = Field(1e-3, gt=0.0, le=1.0, description="AdamW learning rate of the refinement")
    min_kl_removed: float = Field(0.5, le=1.0, description="promotion gate: fraction of KL(teacher || base) removed on held-out text")
    seed: int = 0
    adapt: AdaptConfig = Field(default_factory=AdaptConfig, description="learning from the role's traffic (AdaptConfig)")

    @model_validator(mode="after")
    def _one_teacher(self) -> "CaptureConfig":
        given = [k for k in ("teacher_adapter", "teacher_model", "system_prompt") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"name exactly one teacher (teacher_adapter, teacher_model or system_prompt), got {given or 'none'}")
        if self.max_tokens < self.window * self.batch_size:
            raise ValueError(f"max_tokens {self.max_tokens} is below one batch ({self.batch_size} windows of {self.window} tokens)")
        return self

    @property
    def teacher_kind(self) -> str:
        return next(k for k in ("teacher_adapter", "teacher_model", "system_prompt") if getattr(self, k) is not None)

    @property
    def effective_mode(self) -> str:
        return self.mode or ("sequential" if self.teacher_kind == "system_prompt" else "teacher_forced")

    @property
    def effective_windows(self) -> str:
        return self.windows or ("documents" if self.teacher_kind == "system_prompt" else "stream")

    @property
    def effective_refine_epochs(self) -> int:
        # a greedy layer-by-layer fit leaves a gap that compounds; a delta teacher is fitted exactly
        if self.refine_epochs is not None:
            return self.refine_epochs
        return 6 if self.effective_mode == "sequential" else 0

    @property
    def effective_ridge(self) -> float:
        # measured on SmolLM2 held-out text: 0.1-0.3 for context distillation; a delta teacher is
        # exactly representable, so only a trace of ridge (for conditioning) is wanted
        return self.ridge if self.ridge is not None else (0.2 if self.effective_mode == "sequential" else 1e-6)

    def paths(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in ("teacher_adapter", "teacher_model", "corpus") if getattr(self, k) is not None}


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
    capture: CaptureConfig | None = None

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
            q_size=geometry.q_size,
            kv_size=geometry.kv_size,
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
