"""The slot under concurrency and crashes, with real processes:

- readers in other processes (subprocesses running this file) load `active` in a tight loop during
  hundreds of promotions, rollbacks and gcs, and never see a partial, mixed or unverifiable adapter,
  and see generations only increase;
- promoters SIGKILLed at every step of a promotion/rollback/gc and at random instants leave `active`
  complete and verified, and the next promotion succeeds;
- two promoters racing with the same expected generation: exactly one wins.

Promoters killed or raced are forked from the test process (instant start, everything imported).
Every adapter carries a marker: all its A and B values, its header metadata, its alpha and its
provenance run id are derived from one sequence number, so any mixing shows.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ruv_kernels.adapter import AdapterSpec, LoraAdapter
import ruv_resources.slot as slot_module
from ruv_resources.slot import ACTIVE, Slot, SlotConflictError, SlotError, check_version, parse_version
from ruv_resources.slot_reader import SlotReader
from tests.resources.adapters import make_adapter as make_seq_adapter

FORK = multiprocessing.get_context("fork")


def spec_for(seq: int) -> AdapterSpec:
    return AdapterSpec(rank=4, alpha=float(1 + seq % 7), targets=("q_proj", "v_proj"), hidden_size=32, intermediate_size=64, num_layers=2)


def make_adapter(directory: Path, seq: int) -> Path:
    return make_seq_adapter(directory, seq, spec_for(seq))


def provenance(seq: int) -> dict:
    return {"asset_key": "trained_adapter", "partition": "coder", "run_id": f"seq-{seq}"}


def consistency_problems(generation: int, version: str, adapter: LoraAdapter, manifest: dict, metadata: dict) -> list[str]:
    """Everything a version says about itself must name the same sequence number."""
    problems = []
    seq = metadata.get("seq")
    if not isinstance(seq, int):
        return [f"{version}: no seq in header metadata {metadata}"]
    for factor, store in (("A", adapter.A), ("B", adapter.B)):
        for key, array in store.items():
            if not np.all(array == seq):
                problems.append(f"{version}: {factor} of {key} is not all {seq}: {np.unique(array)[:4]}")
    if adapter.spec.alpha != spec_for(seq).alpha:
        problems.append(f"{version}: alpha {adapter.spec.alpha} from the config, seq {seq} in the weights")
    if manifest.get("run_id") != f"seq-{seq}" or manifest.get("provenance", {}).get("run_id") != f"seq-{seq}":
        problems.append(f"{version}: manifest run_id {manifest.get('run_id')}, weights say seq {seq}")
    if manifest.get("generation") != generation or parse_version(version)[0] != generation:
        problems.append(f"{version}: generation {generation} vs manifest {manifest.get('generation')}")
    return problems


# --------------------------------------------------------------------------------------------
# The reader process (this file run as a script)


def reader_main(slot_dir: str, out: str, stop: str, ready: str) -> None:
    reader = SlotReader(slot_dir)
    last = 0
    generations, errors = [], []
    checks = 0
    while True:
        if checks % 32 == 0 and os.path.exists(stop):
            break
        checks += 1
        try:
            snap = reader.snapshot()
        except SlotError as exc:
            errors.append(f"unverifiable: {exc}")
            if len(errors) > 20:
                break
            continue
        if snap.generation != last:
            if snap.generation < last:
                errors.append(f"generation went backwards: {last} -> {snap.generation}")
            errors.extend(consistency_problems(snap.generation, snap.version, snap.adapter, snap.manifest, snap.metadata))
            generations.append(snap.generation)
            last = snap.generation
            if len(generations) == 1:
                Path(ready).touch()
    Path(out).write_text(json.dumps({"checks": checks, "loads": reader.loads, "generations": generations, "errors": errors}))


ROOT = str(Path(__file__).resolve().parents[2])  # the reader imports tests.resources.adapters


def start_reader(slot_dir: Path, workdir: Path, index: int) -> tuple[subprocess.Popen, Path, Path]:
    out, ready = workdir / f"reader{index}.json", workdir / f"ready{index}"
    proc = subprocess.Popen(
        [sys.executable, __file__, "reader", str(slot_dir), str(out), str(workdir / "stop"), str(ready)],
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])},
    )
    return proc, out, ready


@pytest.mark.slow
def test_readers_in_other_processes_never_see_a_partial_or_mixed_adapter(tmp_path):
    n_promotions = 300
    sources = [make_adapter(tmp_path / "src" / str(seq), seq) for seq in range(n_promotions + 1)]
    slot = Slot(tmp_path / "slots", "coder")
    slot.promote(sources[1], provenance=provenance(1))
    readers = [start_reader(slot.path, tmp_path, i) for i in range(2)]
    deadline = time.monotonic() + 60
    while not all(ready.exists() for _, _, ready in readers):
        assert all(p.poll() is None for p, _, _ in readers), [p.stderr.read().decode() for p, _, _ in readers if p.poll() is not None]
        assert time.monotonic() < deadline, "readers did not start"
        time.sleep(0.02)

    generations = [1]
    start = time.monotonic()
    for seq in range(2, n_promotions + 1):
        state = slot.promote(sources[seq], provenance=provenance(seq), expected_generation=generations[-1])
        generations.append(state.generation)
        if seq % 25 == 0:
            generations.append(slot.rollback(expected_generation=generations[-1]).generation)
        if seq % 10 == 0:
            slot.gc(keep=3)
    elapsed = time.monotonic() - start
    (tmp_path / "stop").touch()

    results = []
    for proc, out, _ in readers:
        assert proc.wait(timeout=60) == 0, proc.stderr.read().decode()
        results.append(json.loads(out.read_text()))
    assert generations == list(range(1, len(generations) + 1))
    for result in results:
        assert result["errors"] == [], result["errors"][:5]
        seen = result["generations"]
        assert seen == sorted(set(seen)), "generations must only increase"
        assert set(seen) <= set(generations)
        # the readers really ran concurrently with the promotions
        assert len(seen) >= 20 and result["checks"] > len(seen), (len(seen), result["checks"], elapsed)
    assert slot.verify().ok
    assert len(slot.history()) == len(generations)
    print(f"{len(generations)} swaps in {elapsed:.1f}s; readers loaded {[len(r['generations']) for r in results]} "
          f"versions in {[r['checks'] for r in results]} checks")


# --------------------------------------------------------------------------------------------
# Crashes: SIGKILL at every step and at random instants


def _invariants(slot: Slot, allowed_seqs: set[int], min_generation: int) -> tuple[int, int]:
    """`active` is complete and verified and holds one of the allowed adapters; returns (gen, seq)."""
    target = os.readlink(slot.path / ACTIVE)
    version = target.split("/", 1)[1]
    generation = parse_version(version)[0]
    loaded, manifest, problems = check_version(slot.path / "versions" / version)
    assert problems == [], (version, problems)
    seq = loaded.metadata["seq"]
    assert consistency_problems(generation, version, loaded.adapter, manifest, loaded.metadata) == []
    assert seq in allowed_seqs, (seq, allowed_seqs)
    assert generation >= min_generation
    return generation, seq


def _run_killed(operation, kill_at: int | None = None, delay: float | None = None, progress=None) -> int:
    """Fork a promoter running `operation()`; SIGKILL it at its `kill_at`-th checkpoint or `delay`
    seconds after it started. Returns its exit code (-9 when killed). `progress` (a shared int)
    receives the number of checkpoints the promoter passed."""

    started = FORK.Event()

    def child():
        started.set()
        if progress is not None:

            def record(point):
                progress.value += 1

            slot_module._FAULT_HOOK = record
        if kill_at is not None:
            count = iter(range(10**6))

            def hook(point):
                if next(count) == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)

            slot_module._FAULT_HOOK = hook
        operation()

    proc = FORK.Process(target=child)
    proc.start()
    if delay is not None:
        assert started.wait(30)
        time.sleep(delay)
        try:
            os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.join(30)
    assert proc.exitcode is not None
    return proc.exitcode


def _checkpoints(operation) -> list[str]:
    points = []
    slot_module._FAULT_HOOK = points.append
    try:
        operation()
    finally:
        slot_module._FAULT_HOOK = None
    return points


@pytest.mark.slow
def test_sigkill_at_every_step_leaves_active_complete_and_the_next_promotion_succeeds(tmp_path):
    sources = {seq: make_adapter(tmp_path / "src" / str(seq), seq) for seq in range(1, 200)}
    slot = Slot(tmp_path / "slots", "coder")
    slot.promote(sources[1], provenance=provenance(1))
    slot.promote(sources[2], provenance=provenance(2))
    next_seq = iter(range(3, 200))

    def promote_op(seq):
        return lambda: Slot(slot.root, slot.name).promote(sources[seq], provenance=provenance(seq))

    def rollback_op():
        return Slot(slot.root, slot.name).rollback()

    def gc_op():
        return Slot(slot.root, slot.name).gc(keep=1)

    seq = next(next_seq)
    promote_points = _checkpoints(promote_op(seq))
    rollback_points = _checkpoints(rollback_op)
    assert {"tmp-created", "verified", "renamed", "link-active-replaced", "swapped", "history-written"} <= set(promote_points)
    assert len(rollback_points) >= len(promote_points) - 2
    killed = 0
    gc_points = ["locked", "gc-renamed", "gc-renamed"]
    for kind, points in (("promote", promote_points), ("rollback", rollback_points), ("gc", gc_points)):
        for k in range(len(points)):
            generation, current = _invariants(slot, set(sources), 0)
            standby = slot.status().standby
            if kind == "promote":
                seq = next(next_seq)
                code = _run_killed(promote_op(seq), kill_at=k)
                allowed = {current, seq}
            elif kind == "rollback":
                code = _run_killed(rollback_op, kill_at=k)
                allowed = {current, check_version(slot.path / "versions" / standby)[0].metadata["seq"]}
            else:
                for _ in range(3):
                    seq = next(next_seq)
                    slot.promote(sources[seq], provenance=provenance(seq))
                code = _run_killed(gc_op, kill_at=k)
                generation, current = _invariants(slot, set(sources), 0)
                allowed = {current}
            killed += code == -signal.SIGKILL
            _invariants(slot, allowed, generation)
            # the next promotion cleans up after the dead one and succeeds
            seq = next(next_seq)
            state = slot.promote(sources[seq], provenance=provenance(seq))
            assert _invariants(slot, {seq}, generation + 1)[0] == state.generation
            assert not [n for n in os.listdir(slot.versions_dir) if n.startswith(".")]
            assert not [n for n in os.listdir(slot.path) if ".tmp-" in n]
            history = [e["generation"] for e in slot.history()]
            assert history == sorted(set(history)) and history[-1] == state.generation
    assert killed == len(promote_points) + len(rollback_points) + len(gc_points)  # every kill point was reached
    assert slot.verify().ok


@pytest.mark.slow
def test_sigkill_at_random_instants_many_times(tmp_path):
    iterations = 40
    sources = {seq: make_adapter(tmp_path / "src" / str(seq), seq) for seq in range(1, 2 * iterations + 10)}
    slot = Slot(tmp_path / "slots", "coder")
    slot.promote(sources[1], provenance=provenance(1))
    slot.promote(sources[2], provenance=provenance(2))

    # calibrate: how long a promotion takes here; the kills land within 1.3 times that after the
    # forked promoter has started
    timings = []
    for seq in (3, 4, 5):
        start = time.perf_counter()
        slot.promote(sources[seq], provenance=provenance(seq))
        timings.append(time.perf_counter() - start)
    duration = sorted(timings)[1]
    rng = random.Random(5)
    outcomes = {"killed": 0, "finished": 0}
    reached = set()  # how far killed promoters got, in checkpoints (-1: finished)
    seq = 5
    for i in range(iterations):
        generation, current = _invariants(slot, set(sources), 0)
        if i % 5 == 4:
            standby = slot.status().standby
            allowed = {current, check_version(slot.path / "versions" / standby)[0].metadata["seq"]}
            operation = lambda: Slot(slot.root, slot.name).rollback()  # noqa: E731
        else:
            seq += 1
            allowed = {current, seq}
            operation = (lambda s: lambda: Slot(slot.root, slot.name).promote(sources[s], provenance=provenance(s)))(seq)
        progress = FORK.Value("i", 0, lock=False)
        code = _run_killed(operation, delay=rng.uniform(0, 1.5 * duration), progress=progress)
        outcomes["killed" if code == -signal.SIGKILL else "finished"] += 1
        reached.add(progress.value if code == -signal.SIGKILL else -1)
        after, _ = _invariants(slot, allowed, generation)
        if i % 4 == 3:  # the next promotion succeeds (and cleans up); other times the next kill follows
            seq += 1
            assert slot.promote(sources[seq], provenance=provenance(seq)).generation > after
            _invariants(slot, {seq}, after + 1)
    seq += 1
    final = slot.promote(sources[seq], provenance=provenance(seq))
    assert _invariants(slot, {seq}, 0)[0] == final.generation
    report = slot.verify()
    assert report.ok and not report.notes, report.to_dict()
    print(f"random kills: {outcomes}, promotion {duration * 1e3:.1f} ms, killed after checkpoints {sorted(reached)}")
    assert outcomes["killed"] >= 5 and len(reached) >= 4, (outcomes, sorted(reached))
    history = [e["generation"] for e in slot.history()]
    assert history == sorted(set(history)) and history[-1] == final.generation


# --------------------------------------------------------------------------------------------
# Racing promoters


def _race(operations: list) -> list[tuple[str, object]]:
    barrier = FORK.Barrier(len(operations))
    queue = FORK.Queue()

    def child(index, operation):
        barrier.wait()
        try:
            state = operation()
            queue.put((index, "ok", state.generation))
        except SlotConflictError as exc:
            queue.put((index, "conflict", str(exc)))
        except Exception as exc:  # noqa: BLE001
            queue.put((index, "error", repr(exc)))

    procs = [FORK.Process(target=child, args=(i, op)) for i, op in enumerate(operations)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=30) for _ in procs)
    for p in procs:
        p.join(10)
        assert p.exitcode == 0
    return [(kind, value) for _, kind, value in results]


def test_two_promoters_racing_on_the_same_generation_exactly_one_wins(tmp_path):
    sources = {seq: make_adapter(tmp_path / "src" / str(seq), seq) for seq in range(1, 40)}
    slot = Slot(tmp_path / "slots", "coder")
    slot.promote(sources[1], provenance=provenance(1))
    seq = 1
    for round_ in range(8):
        before = slot.status()
        a, b = seq + 1, seq + 2
        seq += 2
        expected = before.generation

        def op(s):
            return lambda: Slot(slot.root, slot.name).promote(sources[s], provenance=provenance(s), expected_generation=expected)

        operations = [op(a), op(b)]
        if round_ % 3 == 2:  # a rollback racing a promotion
            operations[1] = lambda: Slot(slot.root, slot.name).rollback(expected_generation=expected)
        results = _race(operations)
        kinds = sorted(kind for kind, _ in results)
        assert kinds == ["conflict", "ok"], results
        winner = next(i for i, (kind, _) in enumerate(results) if kind == "ok")
        loser_message = next(value for kind, value in results if kind == "conflict")
        assert f"is at generation {expected + 1}, not the expected {expected}" in loser_message
        after = slot.status()
        assert after.generation == expected + 1 and results[winner][1] == expected + 1
        assert after.standby == before.active  # nothing lost: the previous active is the rollback target
        assert len(after.versions) == len(before.versions) + 1  # the loser wrote nothing
        history = slot.history()
        assert [e["generation"] for e in history][-2:] == [expected, expected + 1]
        # the loser retries against the new generation and wins
        loser_seq = (a, b)[1 - winner]
        if not (round_ % 3 == 2 and winner == 0):
            retry = Slot(slot.root, slot.name).promote(sources[loser_seq], provenance=provenance(loser_seq), expected_generation=expected + 1)
            assert retry.generation == expected + 2
    assert slot.verify().ok


def test_promoters_without_expected_generation_are_serialised(tmp_path):
    sources = {seq: make_adapter(tmp_path / "src" / str(seq), seq) for seq in range(1, 5)}
    slot = Slot(tmp_path / "slots", "coder")
    slot.promote(sources[1], provenance=provenance(1))
    ops = [(lambda s: lambda: Slot(slot.root, slot.name).promote(sources[s], provenance=provenance(s)))(s) for s in (2, 3, 4)]
    results = _race(ops)
    assert sorted(v for _, v in results) == [2, 3, 4] and all(k == "ok" for k, _ in results)
    assert [e["generation"] for e in slot.history()] == [1, 2, 3, 4]
    assert slot.verify().ok


if __name__ == "__main__":
    if sys.argv[1] == "reader":
        reader_main(*sys.argv[2:6])
