"""The five preset adapters, exactly as the original design declares them."""

from __future__ import annotations

from ruv_assets.catalogue.config import LoraConfig

ATTENTION = ["q_proj", "k_proj", "v_proj", "o_proj"]

PRESETS: tuple[LoraConfig, ...] = (
    LoraConfig.builder("coder").rank(16).alpha(32.0).dropout(0.05).target_modules(ATTENTION)
    .description("Code generation and refactoring").add_tag("code-gen").add_tag("refactoring").add_tag("syntax").build(),
    LoraConfig.builder("researcher").rank(8).alpha(16.0).dropout(0.1).target_modules(["q_proj", "k_proj", "v_proj"])
    .description("Information analysis and synthesis").add_tag("analysis").add_tag("research").add_tag("synthesis").build(),
    LoraConfig.builder("security").rank(16).alpha(32.0).dropout(0.05)
    .target_modules(ATTENTION + ["gate_proj", "up_proj", "down_proj"])
    .description("Vulnerability detection and auditing").add_tag("security").add_tag("vulnerabilities").add_tag("audit").build(),
    LoraConfig.builder("architect").rank(12).alpha(24.0).dropout(0.05).target_modules(["q_proj", "v_proj", "gate_proj", "up_proj"])
    .description("System design and architecture").add_tag("architecture").add_tag("design").add_tag("patterns").build(),
    LoraConfig.builder("reviewer").rank(8).alpha(16.0).dropout(0.1).target_modules(["q_proj", "v_proj"])
    .description("Code review and quality assessment").add_tag("review").add_tag("quality").add_tag("best-practices").build(),
)
