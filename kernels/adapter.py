"""The in-memory LoRA adapter: A `[r, in]` and B `[out, r]` per layer and target module.

Keys are `layers.{i}.{module}`. The adapter knows its geometry so that shapes, parameter counts
and memory are computed from the real module shapes (`kernels.modules.module_shape`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from ruv_kernels import lora
from ruv_kernels.hashing import all_finite
from ruv_kernels.modules import ALL_MODULES, MLP_MODULES, lora_scale, module_shape


@dataclass(frozen=True)
class AdapterSpec:
    """What an adapter is, independent of its weights (mirrors PEFT's LoraConfig fields)."""

    rank: int
    alpha: float
    targets: tuple[str, ...]
    hidden_size: int
    intermediate_size: int | None  # None: unknown, allowed while no MLP module is targeted
    num_layers: int
    dropout: float = 0.0
    use_rslora: bool = False
    q_size: int | None = None  # heads * head_dim; None = hidden_size
    kv_size: int | None = None  # kv_heads * head_dim (GQA); None = q_size

    def __post_init__(self) -> None:
        # canonical form, so equal shapes compare equal however they were declared
        if self.q_size == self.hidden_size:
            object.__setattr__(self, "q_size", None)
        if self.kv_size == (self.q_size or self.hidden_size):
            object.__setattr__(self, "kv_size", None)
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha}")
        if not self.targets:
            raise ValueError("targets must name at least one module")
        for name in self.targets:
            if name not in ALL_MODULES:
                raise ValueError(f"unknown target module {name!r}; expected one of {', '.join(ALL_MODULES)}")
        for name in ("hidden_size", "intermediate_size", "num_layers", "q_size", "kv_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.intermediate_size is None and set(self.targets) & set(MLP_MODULES):
            raise ValueError("intermediate_size is needed for MLP target modules")

    @property
    def scale(self) -> float:
        return lora_scale(self.alpha, self.rank, self.use_rslora)

    def keys(self) -> list[str]:
        """Module keys in a stable order: layer-major, then the order of ALL_MODULES."""
        wanted = [m for m in ALL_MODULES if m in self.targets]
        return [f"layers.{i}.{m}" for i in range(self.num_layers) for m in wanted]

    def shape_of(self, key: str) -> tuple[int, int]:
        """`(in_features, out_features)` of the module behind `key`."""
        return module_shape(split_key(key)[1], self.hidden_size, self.intermediate_size, self.q_size, self.kv_size)

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """`(in, out)` of each targeted module type (the same in every layer)."""
        return {m: module_shape(m, self.hidden_size, self.intermediate_size, self.q_size, self.kv_size) for m in self.targets}

    def geometry(self) -> dict[str, int]:
        """The model dimensions this adapter fits (unknown ones left out)."""
        values = {"hidden_size": self.hidden_size, "intermediate_size": self.intermediate_size, "num_layers": self.num_layers,
                  "q_size": self.q_size, "kv_size": self.kv_size}
        return {k: v for k, v in values.items() if v is not None}

    def param_count(self) -> int:
        """`r * (in + out)` summed over target modules and layers."""
        return sum(self.rank * sum(self.shape_of(k)) for k in self.keys())

    def memory_bytes(self, bytes_per_param: int = 4) -> int:
        return self.param_count() * bytes_per_param


def split_key(key: str) -> tuple[int, str]:
    """`layers.3.q_proj` -> `(3, "q_proj")`."""
    parts = key.split(".")
    if len(parts) != 3 or parts[0] != "layers" or not parts[1].isdigit() or parts[2] not in ALL_MODULES:
        raise ValueError(f"bad module key {key!r}; expected layers.<i>.<module>")
    return int(parts[1]), parts[2]


@dataclass
class LoraAdapter:
    """Weights of one adapter. `A[key]` is `[r, in]`, `B[key]` is `[out, r]`, float32 or float16."""

    spec: AdapterSpec
    A: dict[str, np.ndarray] = field(default_factory=dict)
    B: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def initialise(cls, spec: AdapterSpec, seed: int) -> "LoraAdapter":
        """PEFT's default init: A Kaiming-uniform (a=sqrt(5), i.e. U(+-1/sqrt(in))), B zero.

        Each module draws from its own stream, seeded by (seed, key), so adding a target module
        does not change the others.
        """
        A, B = {}, {}
        for key in spec.keys():
            n_in, n_out = spec.shape_of(key)
            rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
            bound = 1.0 / np.sqrt(n_in)
            A[key] = rng.uniform(-bound, bound, size=(spec.rank, n_in)).astype(np.float32)
            B[key] = np.zeros((n_out, spec.rank), dtype=np.float32)
        return cls(spec, A, B)

    @property
    def scale(self) -> float:
        return self.spec.scale

    def keys(self) -> list[str]:
        return self.spec.keys()

    def forward(self, key: str, X: np.ndarray) -> np.ndarray:
        """`s * B A x` for a batch `X [n, in]` (or one vector `[in]`) through module `key`."""
        A, B = self._factors(key)
        if np.ndim(X) == 1:
            return lora.forward_vector(X, A, B, self.scale)
        return lora.forward_batch(X, A, B, self.scale)

    def delta(self, key: str) -> np.ndarray:
        """The dense `s * B @ A` of module `key`, `[out, in]`."""
        A, B = self._factors(key)
        return lora.delta(A, B, self.scale)

    def is_finite(self) -> bool:
        """True when no A or B value is NaN or infinite."""
        return all(all_finite(w.ravel()) for w in (*self.A.values(), *self.B.values()))

    def astype(self, dtype) -> "LoraAdapter":
        return LoraAdapter(
            self.spec,
            {k: v.astype(dtype) for k, v in self.A.items()},
            {k: v.astype(dtype) for k, v in self.B.items()},
        )

    def _factors(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        if key not in self.A:
            raise KeyError(f"adapter has no module {key!r}; it holds {', '.join(self.A) or 'nothing'}")
        return self.A[key], self.B[key]
