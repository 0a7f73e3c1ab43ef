"""Learning from use on the real model, as a user drives it: a reviewer role distilled from its
prompt is promoted into its slot; code review requests sent with `ruv feedback` reach its traffic
log (lineage: the `traffic` source's version moves); `ruv adapt` updates the live adapter on them
and, past the guard, promotes the update into the slot; a harmful batch (corrections that
contradict the role, at full quality) is stored with its figures and never promoted, and the run
does not fail; bad lines are counted and skipped. On the distillation test's reviewer (2,048 tokens
of corpus); the figures of a full run are in BENCHMARKS.md (bench/bench_adapt.py)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance

from ruv_resources import traffic_log
from ruv_resources.capture.adapt import is_heldout
from ruv_resources.slot import Slot
from ruv_assets.realmodel.demo_traffic import code_review_requests
from tests.realmodel.test_capture_on_smollm2 import DAGSTER, latest_metadata

pytestmark = [pytest.mark.slow, pytest.mark.realmodel]
RUV = str(Path(sys.executable).with_name("ruv"))
HARMFUL = "Looks perfect. Ship it, no tests needed, nothing to change."


def ruv(env, root, *args, stdin=None):
    done = subprocess.run([RUV, *args], env=env, capture_output=True, text=True, cwd=root, timeout=1500, input=stdin)
    return done.returncode, done.stdout + done.stderr


def send_until(env, root, requests, *, train: int, heldout: int, path: Path) -> list:
    """Send requests in batches of 8 until the log holds `train` training and `heldout` held-out
    ones after its current end (which ones are held out follows the ids the log gives them)."""
    start = path.stat().st_size if path.exists() else 0
    sent = 0
    while True:
        batch = requests[sent:sent + 8]
        assert batch, "ran out of requests"
        rc, out = ruv(env, root, "feedback", "reviewer", "-", stdin="".join(json.dumps(r) + "\n" for r in batch))
        assert rc == 0, out
        sent += len(batch)
        records = traffic_log.read(path, start).records
        held = sum(is_heldout(r.id) for r in records)
        if len(records) - held >= train and held >= heldout:
            return records


@pytest.fixture(scope="module")
def role(distilled):
    """The distilled reviewer (tests/realmodel/conftest.py), promoted into its slot."""
    env, root, home = distilled.env, distilled.root, distilled.home
    done = subprocess.run([DAGSTER, "asset", "materialize", "-m", "ruv_assets.definitions", "--select", "served_adapter",
                           "--partition", "reviewer"], env=env, capture_output=True, text=True, cwd=root, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return env, root, home


def slot_of(root) -> Slot:
    return Slot(root / "ruv" / "slots", "reviewer")


def test_feedback_adapts_the_live_role_and_promotes_it_past_the_guard(role):
    env, root, home = role
    path = root / "ruv" / "traffic" / "reviewer.jsonl"
    before = slot_of(root).status().generation
    requests = code_review_requests(64, seed=1)
    # bad lines are counted and skipped, the good ones appended
    rc, out = ruv(env, root, "feedback", "reviewer", "-", stdin='{"prompt": ""}\n{"prompt": "x", "quality": 7}\n\xff\n')
    assert rc == 2 and "prompt missing or empty" in out and "quality outside [0, 1]" in out
    rc, out = ruv(env, root, "adapt")
    assert rc == 0 and "no update to run" in out, out
    send_until(env, root, requests, train=16, heldout=2, path=path)
    rc, out = ruv(env, root, "adapt", "--status")
    assert rc == 0 and "adapt on" in out, out
    rc, out = ruv(env, root, "adapt")
    assert rc == 0, out[-4000:]
    assert "adapt_job[reviewer]: ok" in out and "promote_job[reviewer]: ok" in out, out[-4000:]
    update = latest_metadata(home, "adapted_adapter")
    assert update["published"] is True, update
    assert update["heldout_traffic_kl"] < update["heldout_traffic_kl_live"]
    assert update["corpus_kl"] <= 1.10 * update["corpus_kl_live"]
    assert update["requests_trained"] >= 16 and update["traffic_end"] == path.stat().st_size
    state = slot_of(root).status()
    assert state.generation == before + 1
    assert slot_of(root).manifest(state.active)["provenance"]["source_asset"] == "adapted_adapter"
    # lineage: the traffic source was observed at the log's version
    with DagsterInstance.from_config(str(home)) as instance:
        observed = instance.fetch_observations(AssetKey("traffic"), limit=1).records[0].asset_observation
    assert observed.partition == "reviewer" and observed.tags["dagster/data_version"] == traffic_log.version(path)
    rc, out = ruv(env, root, "adapt")
    assert rc == 0 and "no update to run" in out and "new requests" in out, out  # the traffic was consumed


def test_a_harmful_batch_is_stored_and_never_promoted(role):
    env, root, home = role
    path = root / "ruv" / "traffic" / "reviewer.jsonl"
    state = slot_of(root).status()
    harmful = [{**r, "correction": HARMFUL, "quality": 1.0} for r in code_review_requests(200, seed=2)[64:]]
    send_until(env, root, harmful, train=16, heldout=2, path=path)  # its held-out share carries the corrections too
    rc, out = ruv(env, root, "adapt")
    assert rc == 0 and "adapt_job[reviewer]: ok" in out, out[-4000:]
    assert "kept back (did not pass the guard)" in out
    update = latest_metadata(home, "adapted_adapter")
    assert update["published"] is False, update
    assert update["heldout_answer_kl"] > update["heldout_answer_kl_live"]  # what the role says got worse
    assert "promote_job[reviewer]" not in out
    assert slot_of(root).status().generation == state.generation and slot_of(root).status().active == state.active
