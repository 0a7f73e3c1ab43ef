"""Learning from use on the real model (SmolLM2-135M-Instruct), in one run:

1. the reviewer role (q,v rank 8) distilled from its demo prompt on pydoc topics (the demo's
   budget, 8,192 tokens), or reused from a built `make demo` (`--from-demo .demo`);
2. shifted traffic: code review requests built from the standard library's Python source
   (`ruv_assets.realmodel.demo_traffic`), appended to a real traffic log (ids decide the held-out
   fifth, as in production);
3. updates of 16 requests each, as `adapted_adapter` does them (from the live adapter, guard in
   front of every publication), in two arms: with the default replay share of the corpus and with
   none (what replay buys against forgetting); the frozen role as the reference;
4. at every 64 requests, each arm's live adapter on the fixed held-out traffic and on the corpus's
   held-out windows; the time of each update (training, guard) on 16 requests;
5. a harmful batch (16 corrections that contradict the role, quality 1): the guard's verdict.

Threads: torch on every core (`--threads`). Prints figures for BENCHMARKS.md and writes the plot
(`--plot`, default docs/adaptation-curve.png).
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HARMFUL = "Looks perfect. Ship it, no tests needed, nothing to change."


def parse():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--from-demo", help="reuse the role of a built make demo (its directory, e.g. .demo)")
    p.add_argument("--role", default="reviewer", help="with --from-demo: which of its roles (default reviewer)")
    p.add_argument("--tokens", type=int, default=8192, help="corpus tokens of the role's own fit (default the demo's 8192)")
    p.add_argument("--requests", type=int, default=320, help="traffic requests in all (a fifth, by id, is held out)")
    p.add_argument("--chunk", type=int, default=16, help="requests per update")
    p.add_argument("--arms", default="replay,no replay")
    p.add_argument("--later-arms-requests", type=int, default=128,
                   help="training requests the arms after the first see (default 128: enough to show forgetting)")
    p.add_argument("--epochs", type=int, help="override capture.adapt.epochs")
    p.add_argument("--lr", type=float, help="override capture.adapt.lr")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: every core)")
    p.add_argument("--plot", default=str(ROOT / "docs" / "adaptation-curve.png"))
    return p.parse_args()


def setup(args, work: Path):
    """`(catalogue entry's capture, base path, dataset dir, trained adapter)` for the reviewer."""
    from ruv_assets.cli.demo import ROLES, smollm2_path, write_topics_corpus

    if args.from_demo:
        demo = Path(args.from_demo).resolve()
        os.environ.update(RUV_CATALOGUE=str(demo / "catalogue.yaml"), RUV_HOME=str(demo / "ruv"))
        from ruv_assets.catalogue.catalogue import current_catalogue
        from ruv_resources.peft_format import load_adapter
        from ruv_resources.store import ArtifactStore

        store = ArtifactStore(demo / "ruv")
        capture = current_catalogue().adapter(args.role).capture
        return capture, current_catalogue().base_model, store.get("synthetic_dataset", args.role).path, \
            load_adapter(store.get("trained_adapter", args.role).path).adapter.astype(np.float32), {}
    corpus = write_topics_corpus(work / "corpus.jsonl")
    catalogue = work / "catalogue.yaml"
    catalogue.write_text(f"base_model: {smollm2_path()}\nadapters:\n  - name: reviewer\n    capture: {{system_prompt: "
                         f"{json.dumps(ROLES['reviewer'])}, corpus: {corpus}, max_tokens: {args.tokens}}}\ncomposites: []\n")
    os.environ.update(RUV_CATALOGUE=str(catalogue), RUV_HOME=str(work / "ruv"))
    from ruv_assets.catalogue.catalogue import current_catalogue, current_geometry
    from ruv_assets.realmodel import captured

    catalogue_ = current_catalogue()
    entry = catalogue_.adapter("reviewer")
    dataset = work / "dataset"
    dataset.mkdir()
    started = time.perf_counter()
    captured.build_dataset(dataset, "reviewer", entry.capture, catalogue_.base_model, lambda m: None)
    adapter, fit = captured.train("reviewer", entry.spec(current_geometry()), entry.capture, dataset,
                                  catalogue_.base_model, lambda m: None)
    return entry.capture, catalogue_.base_model, dataset, adapter, {"fit_seconds": round(time.perf_counter() - started, 1)}


def main():
    args = parse()
    import torch

    torch.set_num_threads(args.threads)
    from ruv_resources import traffic_log
    from ruv_resources.base_model import content_hash
    from ruv_resources.capture.adapt import adapt_adapter, corpus_sequences, is_heldout, judge_update, mean_kls, peft_model, request_sequences
    from ruv_resources.capture.files import load_windows
    from ruv_resources.traffic_log import Record
    from ruv_assets.judging.plots import adaptation_png
    from ruv_assets.realmodel.captured import cached_model, teacher_for
    from ruv_assets.realmodel.demo_traffic import code_review_requests

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        capture, base_path, dataset, frozen, fit = setup(args, work)
        settings = capture.adapt.model_copy(update={k: v for k, v in (("epochs", args.epochs), ("lr", args.lr)) if v is not None})
        base = cached_model(base_path, content_hash(base_path))
        teacher, prefix = teacher_for(base, capture)
        windows = load_windows(dataset)
        length = windows.window
        log = work / "traffic.jsonl"
        traffic_log.append(log, [Record(prompt=r["prompt"]) for r in code_review_requests(args.requests, seed=0)])
        records = traffic_log.read(log).records
        stream = [r for r in records if not is_heldout(r.id)]
        heldout = [r for r in records if is_heldout(r.id)][:64]
        fixed = request_sequences(base, prefix, heldout, length, with_corrections=False)
        corpus = corpus_sequences(windows, windows.heldout)
        print(f"role fitted in {fit.get('fit_seconds', 'reused')} s; traffic: {len(stream)} training, {len(heldout)} held-out requests; "
              f"corpus held-out windows {len(windows.heldout)}; adapt settings {settings.model_dump()}")

        def evaluate(adapter):
            model = peft_model(base, adapter, trainable=False)
            return mean_kls([model], teacher, fixed)[0], mean_kls([model], teacher, corpus)[0]

        frozen_traffic, frozen_corpus = evaluate(frozen)
        print(f"frozen: held-out traffic KL {frozen_traffic:.4f}, corpus KL {frozen_corpus:.4f}")
        curves = {"frozen": [(0, frozen_traffic), (len(stream), frozen_traffic)]}
        summary = {}
        for n_arm, arm in enumerate([a.strip() for a in args.arms.split(",") if a.strip()]):
            replay_share = 0.0 if arm == "no replay" else settings.replay
            arm_stream = stream if n_arm == 0 else stream[:args.later_arms_requests]
            live, points, updates = frozen, [(0, frozen_traffic)], []
            rng = np.random.default_rng(0)
            for start in range(0, len(arm_stream) - args.chunk + 1, args.chunk):
                chunk = arm_stream[start:start + args.chunk]
                seen_heldout = [r for r in records if is_heldout(r.id) and r.offset < chunk[-1].offset][-settings.guard_requests:]
                train = request_sequences(base, prefix, chunk, length)
                n_replay = min(len(windows.train), int(round(replay_share * len(train))))
                replay = corpus_sequences(windows, np.sort(rng.choice(windows.train, n_replay, replace=False))) if n_replay else None
                t0 = time.perf_counter()
                candidate, figures = adapt_adapter(base, teacher, live, train, replay, epochs=settings.epochs, lr=settings.lr,
                                                   batch=settings.batch_size, correction_weight=settings.correction_weight, seed=start)
                t1 = time.perf_counter()
                verdict = judge_update(base, teacher, live, candidate, request_sequences(base, prefix, seen_heldout, length),
                                       corpus, margin=settings.corpus_margin, batch=settings.batch_size,
                                       frozen=frozen if live is not frozen else None)  # as adapted_adapter judges
                t2 = time.perf_counter()
                updates.append({"requests": start + len(chunk), "passed": verdict.passed, "train_s": t1 - t0, "guard_s": t2 - t1,
                                "guard_requests": len(seen_heldout), **verdict.figures()})
                if verdict.passed:
                    live = candidate
                print(f"  [{arm}] update at {start + len(chunk)}: train {t1 - t0:.1f} s, guard {t2 - t1:.1f} s on "
                      f"{len(seen_heldout)} held-out; traffic KL {verdict.traffic_kl_live:.4f} -> {verdict.traffic_kl_new:.4f}, "
                      f"corpus {verdict.corpus_kl_live:.4f} -> {verdict.corpus_kl_new:.4f}: "
                      f"{'published' if verdict.passed else 'kept back'}", flush=True)
                if (start + len(chunk)) % 64 == 0 or start + 2 * args.chunk > len(arm_stream):
                    traffic_kl, corpus_kl = evaluate(live)
                    points.append((start + len(chunk), traffic_kl))
                    print(f"[{arm}] {start + len(chunk)} requests: held-out traffic KL {traffic_kl:.4f} "
                          f"({traffic_kl / frozen_traffic:.3f}x frozen), corpus KL {corpus_kl:.4f} "
                          f"({corpus_kl / frozen_corpus - 1:+.1%}); published {sum(u['passed'] for u in updates)}/{len(updates)}; "
                          f"last update {t1 - t0:.1f} s + guard {t2 - t1:.1f} s", flush=True)
            curves[f"adapted ({arm})"] = points
            summary[arm] = {"requests": points[-1][0], "traffic_ratio": points[-1][1] / frozen_traffic, "corpus_rise": corpus_kl / frozen_corpus - 1,
                            "published": sum(u["passed"] for u in updates), "updates": len(updates),
                            "train_s_median": float(np.median([u["train_s"] for u in updates])),
                            "guard_s_median": float(np.median([u["guard_s"] for u in updates])),
                            "total_s_max": float(max(u["train_s"] + u["guard_s"] for u in updates))}
        # a harmful batch from the frozen role: corrections contradicting it, at full quality
        # (its held-out fifth carries the same corrections, as a user's harmful file would)
        harmful = [Record(prompt=r.prompt, correction=HARMFUL, quality=1.0, id=r.id) for r in stream[:args.chunk]]
        harmful_heldout = [Record(prompt=r.prompt, correction=HARMFUL, quality=1.0, id=r.id) for r in heldout[:max(4, args.chunk // 4)]]
        seqs = request_sequences(base, prefix, harmful, length)
        candidate, _ = adapt_adapter(base, teacher, frozen, seqs, None, epochs=settings.epochs, lr=settings.lr,
                                     batch=settings.batch_size, correction_weight=settings.correction_weight, seed=1)
        verdict = judge_update(base, teacher, frozen, candidate, request_sequences(base, prefix, harmful_heldout, length),
                               corpus, margin=settings.corpus_margin)
        print(f"harmful batch: held-out traffic KL {verdict.traffic_kl_live:.4f} -> {verdict.traffic_kl_new:.4f}, on its "
              f"corrections {verdict.answer_kl_live:.4f} -> {verdict.answer_kl_new:.4f}, corpus KL "
              f"{verdict.corpus_kl_live:.4f} -> {verdict.corpus_kl_new:.4f}: {'PUBLISHED (guard failed)' if verdict.passed else 'refused'}")
        png = adaptation_png(curves, f"reviewer on code review traffic (updates of {args.chunk})")
        Path(args.plot).write_bytes(png)
        print(f"plot: {args.plot}")
        for arm, s in summary.items():
            target = "met" if s["traffic_ratio"] <= 0.75 and s["corpus_rise"] <= 0.10 else "NOT met"
            print(f"[{arm}] after {s['requests']} requests: KL_adapted / KL_frozen {s['traffic_ratio']:.3f} (target <= 0.75), "
                  f"corpus KL {s['corpus_rise']:+.1%} (target <= +10%): {target}; published {s['published']}/{s['updates']}; "
                  f"update on {args.chunk} requests: training median {s['train_s_median']:.1f} s, guard median "
                  f"{s['guard_s_median']:.1f} s, worst total {s['total_s_max']:.1f} s (target < 60 s)")


if __name__ == "__main__":
    sys.exit(main())
