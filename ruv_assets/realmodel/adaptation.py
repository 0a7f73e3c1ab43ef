"""Learning from use: what `adapted_adapter` does for a captured role with new traffic.

1. Read the role's traffic log from where the last update stopped (its byte offset, recorded by
   the last `adapted_adapter` materialisation); skip what cannot be used, counting it: garbled or
   torn lines, requests already seen (a flood of duplicates), quality 0.
2. Split by request id: a fixed fifth is held out for good (`adapt.is_heldout`), never trained on.
3. Start from the live adapter (the slot's active version; the trained one before any promotion),
   update it on the newest `max_requests` new training requests with a replay share of the corpus
   it was fitted on (the dataset's training windows), with the role's own teacher giving targets.
4. Judge the candidate and the live adapter on held-out traffic (the newest `guard_requests`) and
   on the corpus's held-out windows; the verdict decides whether the version becomes `LATEST`
   (and is then promoted), but it is stored and recorded either way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ruv_kernels.adapter import LoraAdapter
from ruv_resources import traffic_log
from ruv_resources.capture.files import load_windows
from ruv_resources.base_model import content_hash


class NothingToLearn(ValueError):
    """No new usable training request since the last update."""


@dataclass
class TrafficBatch:
    train: list = field(default_factory=list)  # new training records, newest `max_requests`
    heldout: list = field(default_factory=list)  # every held-out record so far, newest `guard_requests`
    skipped: dict = field(default_factory=dict)  # reason -> count
    start: int = 0
    end: int = 0
    total: int = 0  # intact records in the whole log


def read_traffic(path: Path, start: int, adapt) -> TrafficBatch:
    """The new training requests after byte `start`, every held-out one, what was skipped."""
    from ruv_resources.capture.adapt import is_heldout

    whole = traffic_log.read(path)
    batch = TrafficBatch(start=start, end=whole.end, total=len(whole.records))
    if whole.bad_lines:
        batch.skipped["torn or garbled lines"] = whole.bad_lines
    seen: set[str] = set()
    heldout, new = [], []
    for record in whole.records:
        duplicate = record.key in seen
        seen.add(record.key)
        if is_heldout(record.id):
            if not duplicate:
                heldout.append(record)
            continue
        if record.offset < start:
            continue
        if duplicate:
            batch.skipped["duplicates"] = batch.skipped.get("duplicates", 0) + 1
        elif record.quality == 0.0:
            batch.skipped["quality 0"] = batch.skipped.get("quality 0", 0) + 1
        elif not record.prompt.strip():
            batch.skipped["empty prompt"] = batch.skipped.get("empty prompt", 0) + 1
        else:
            new.append(record)
    batch.train = new[-adapt.max_requests:]
    if len(new) > adapt.max_requests:
        batch.skipped["older than the newest max_requests"] = len(new) - adapt.max_requests
    batch.heldout = heldout[-adapt.guard_requests:]
    return batch


def count_new(path: Path, start: int) -> int:
    """Training (not held-out) records after byte `start`: what the sensor waits on."""
    from ruv_resources.capture.adapt import is_heldout

    return sum(1 for r in traffic_log.read(path, start).records if not is_heldout(r.id))


def update(name: str, capture, live: LoraAdapter, dataset_dir: Path, base_model_path: str, batch: TrafficBatch,
           log, frozen: LoraAdapter | None = None) -> tuple[LoraAdapter, dict, object]:
    """`(candidate, figures, verdict)` of one update on `batch`; `frozen`: the role's trained
    adapter when the live one is not it (its held-out traffic KL is recorded for the curve)."""
    from ruv_assets.realmodel.captured import _capture_extra, cached_model, teacher_for
    from ruv_resources.capture.adapt import adapt_adapter, corpus_sequences, judge_update, request_sequences

    adapt = capture.adapt
    if not batch.train:
        raise NothingToLearn(f"{name}: no new training request in the traffic log since byte {batch.start}")
    _capture_extra()
    started = time.perf_counter()
    base = cached_model(base_model_path, content_hash(base_model_path))
    teacher, prefix = teacher_for(base, capture)
    windows = load_windows(dataset_dir)
    length = windows.window
    if len(prefix) + 1 != windows.offset:
        raise ValueError(f"{name}: the dataset's teacher prefix ({windows.offset - 1} tokens) is not the catalogue's "
                         f"({len(prefix)}); materialise the dataset again")
    train = request_sequences(base, prefix, batch.train, length)
    rng = np.random.default_rng(capture.seed + batch.end)
    n_replay = min(len(windows.train), int(round(adapt.replay * len(train))))
    replay = corpus_sequences(windows, np.sort(rng.choice(windows.train, n_replay, replace=False))) if n_replay else None
    candidate, figures = adapt_adapter(base, teacher, live, train, replay, epochs=adapt.epochs, lr=adapt.lr,
                                       batch=adapt.batch_size, correction_weight=adapt.correction_weight,
                                       seed=capture.seed, progress=log)
    if not batch.heldout:
        raise ValueError(f"{name}: no held-out request in the traffic log yet (a fifth of the requests, by id, is kept "
                         "for the guard); send more traffic")
    heldout = request_sequences(base, prefix, batch.heldout, length)  # a correction is judged too: it says what the answer should be
    corpus = corpus_sequences(windows, windows.heldout)
    verdict = judge_update(base, teacher, live, candidate, heldout, corpus, margin=adapt.corpus_margin,
                           batch=adapt.batch_size, frozen=frozen)
    figures.update(verdict.figures())
    figures.update({"requests_trained": len(batch.train), "requests_heldout": len(batch.heldout),
                    "replay_windows": n_replay, "update_seconds": round(time.perf_counter() - started, 2)})
    log(f"{name}: held-out traffic KL {verdict.traffic_kl_live:.4f} -> {verdict.traffic_kl_new:.4f}, corpus KL "
        f"{verdict.corpus_kl_live:.4f} -> {verdict.corpus_kl_new:.4f} ({'published' if verdict.passed else 'not published'})")
    return candidate, figures, verdict
