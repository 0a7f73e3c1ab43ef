"""The training run configuration: a Dagster `Config` users edit in the launchpad.

`preset` picks the base values (`default`, or the original design's `quick` and `stable`); any
field set explicitly overrides the preset. Validation happens when the run starts, before any
file is written, and names the field.
"""

from typing import Literal

from dagster import Config
from pydantic import Field

from ruv_kernels.exact import DEFAULT_RIDGE_REL
from ruv_kernels.train import TrainSettings

PRESETS: dict[str, dict] = {
    "default": {},
    # The original design's presets: quick = 1 epoch at lr 0.005, constant schedule, patience 1;
    # stable = 5 epochs at lr 0.0005, EWC lambda 5000, quality threshold 0.5, patience 5, min_delta 1e-4.
    "quick": {"epochs": 1, "learning_rate": 0.005, "schedule": "constant", "patience": 1},
    "stable": {"epochs": 5, "learning_rate": 0.0005, "ewc_lambda": 5000.0, "quality_threshold": 0.5, "patience": 5, "min_delta": 1e-4},
}


class TrainingConfig(Config):
    """How `trained_adapter` trains; unset fields come from `preset`."""

    solver: Literal["sgd", "exact"] = Field("sgd", description="sgd: the optimiser family below; exact: the closed-form "
                                            "rank-r optimum of each module from the dataset's statistics")
    ridge_rel: float = Field(DEFAULT_RIDGE_REL, ge=0.0, description="exact solver: isotropic ridge relative to mean(diag G) "
                             "(1e-4 leaves validation loss unchanged to 4 digits and keeps singular Grams solvable)")
    select_rank: bool = Field(True, description="exact solver: keep the rank (<= the adapter's) with the lowest validation "
                              "loss, zero-padded to the adapter's rank")
    statistics_precision: Literal["auto", "float64", "mixed"] = Field(
        "auto", description="the Gram and cross terms of the exact solver and the certificate: auto = as BLAS on the "
        "dataset would (float32 products summed in float64 across chunks of 512 rows, 2048 above 1536 inputs; datasets "
        "are float32 or float16, so auto is mixed here; float64 data would get float64); float64 = float64 products "
        "(half the speed, 1e-16 instead of ~1e-7 of max |G|)")
    dropout: float | None = Field(None, ge=0.0, lt=1.0, description="LoRA input dropout p during training (SGD: seeded "
                                  "inverted dropout; exact: its ridge p/(1-p) diag G); unset = 0, or the adapter's "
                                  "lora_dropout with use_lora_dropout")
    use_lora_dropout: bool = Field(False, description="train with the adapter's declared lora_dropout, as PEFT would; off "
                                   "by default: on the clean synthetic presets it costs 2-11% of validation loss")
    consolidation: Literal["ewc", "exact"] = Field("ewc", description="when retraining from the last version: ewc = EWC++ "
                                                   "(SGD only); exact = penalise the old task's exact loss increase, "
                                                   "lambda tr((D - D_old) G_old (D - D_old)^T), with the stored Gram")
    consolidation_lambda: float = Field(1.0, ge=0.0, description="strength of exact consolidation (1 = the old task "
                                        "weighs as much as the new)")
    preset: Literal["default", "quick", "stable"] = Field("default", description="base values: default, quick or stable")
    epochs: int | None = Field(None, description="maximum epochs")
    batch_size: int | None = None
    learning_rate: float | None = None
    optimizer: str | None = Field(None, description="adamw, adam or sgd")
    weight_decay: float | None = None
    loraplus_ratio: float | None = Field(None, description="LoRA+: learning rate of B = lr * ratio")
    max_grad_norm: float | None = Field(None, description="global gradient-norm clip; 0 = off")
    schedule: str | None = Field(None, description="constant, linear, cosine, exponential, step or one_cycle")
    warmup_steps: int | None = None
    quality_threshold: float | None = Field(None, description="examples with lower quality are dropped")
    patience: int | None = Field(None, description="epochs without improvement before early stopping")
    min_delta: float | None = Field(None, description="minimum val-loss improvement that counts")
    eval_every_steps: int | None = Field(None, description="also validate every N steps (0 = per epoch only)")
    ewc_lambda: float | None = Field(None, description="EWC++ strength when retraining from the last version")
    fisher_decay: float | None = None
    seed: int | None = None
    num_threads: int | None = Field(None, description="Numba threads for training (0 = all); 1 avoids waiting on a busy shared CPU")
    mixed_precision: bool = Field(False, description="store the checkpoint in float16 (training stays float32); the dataset has its own float16 option")
    continue_from_last: bool = Field(True, description="start from the last trained version (with EWC++) if there is one")

    def settings(self, lora_dropout: float = 0.0) -> TrainSettings:
        """The kernel-level settings, validated (ValueError names the field); an unset dropout is
        0, or the adapter's declared `lora_dropout` with `use_lora_dropout`."""
        values = dict(PRESETS[self.preset])
        for name in TrainSettings.__dataclass_fields__:
            value = getattr(self, name, None)
            if value is not None:
                values[name] = value
        values["dropout"] = float(self.dropout if self.dropout is not None else lora_dropout if self.use_lora_dropout else 0.0)
        if self.consolidation == "exact" and self.solver != "exact":
            raise ValueError("consolidation: exact needs solver: exact (the SGD path's consolidation is ewc)")
        settings = TrainSettings(**values)
        settings.validate()
        return settings
