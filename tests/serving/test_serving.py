"""The slots on a real vLLM server: routing by role, the same numbers as PEFT, promotions and
rollbacks live within a bound, refusals that keep the old generation, a server that is down,
and a restart that comes back serving every active generation."""

from __future__ import annotations

import json
import time

import pytest

from tests.serving.conftest import get, post

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.serving]
PROMPT = "def add(a, b):\n    "


def token_ids(choice) -> list[int]:
    return [int(t.split(":", 1)[1]) for t in choice["logprobs"]["tokens"]]


def first_logprob(served, model: str) -> tuple[str, float]:
    status, body = served.complete(model, PROMPT, max_tokens=1)
    assert status == 200, body
    return body["model"], body["choices"][0]["logprobs"]["token_logprobs"][0]


def test_routing_by_role(served):
    live = served.slots()["slots"]
    assert {"coder", "reviewer"} <= set(live)
    answers = {}
    for model in ("coder", "reviewer", served.name):
        status, body = served.complete(model, PROMPT, max_tokens=6)
        assert status == 200, body
        answers[model] = body
    # the answer names the generation that produced it; the base model name gets no adapter
    assert answers["coder"]["model"] == f"coder@{live['coder']['generation']}"
    assert answers["reviewer"]["model"] == f"reviewer@{live['reviewer']['generation']}"
    assert answers[served.name]["model"] == served.name
    texts = {m: b["choices"][0]["logprobs"]["token_logprobs"] for m, b in answers.items()}
    assert len({tuple(round(x, 4) for x in v) for v in texts.values()}) == 3  # three different models answered
    status, body = served.complete("no-such-role", PROMPT)
    assert status == 404 and "does not exist" in json.dumps(body)
    listed = {card["id"]: card for card in get(f"{served.url}/v1/models")["data"]}
    assert {"coder", "reviewer", served.name} <= set(listed) and "tiny" not in listed
    assert listed["coder"]["ruv_generation"] == live["coder"]["generation"]


def test_skips_what_does_not_fit_and_says_why(served):
    report = served.slots()
    assert "tiny" not in report["slots"]
    reason = report["refused"]["tiny"]["reason"]
    assert "shape" in reason and "576" in reason, reason
    status = served.ruv("serve", "status")
    assert status.returncode == 0 and "skipped tiny" in status.stdout, status.stdout + status.stderr


def test_logprobs_agree_with_peft(served):
    """Greedy tokens and their logprobs from the server against PEFT on the same exported weights."""
    import numpy as np
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(served.model_dir))
    prompt = tokenizer(PROMPT)["input_ids"]
    worst = {}
    base = AutoModelForCausalLM.from_pretrained(str(served.model_dir), dtype=torch.float32)
    for slot, adapter in (("coder", "coder-1"), ("reviewer", "reviewer-1"), (served.name, None)):
        status, body = served.complete(slot, prompt, max_tokens=8)
        assert status == 200, body
        choice = body["choices"][0]
        generated, server_lp = token_ids(choice), np.array(choice["logprobs"]["token_logprobs"])
        model = base if adapter is None else PeftModel.from_pretrained(base, str(served.adapters / adapter))
        with torch.no_grad():
            logits = model(torch.tensor([prompt + generated])).logits[0].double()
        lp = torch.log_softmax(logits, -1)[len(prompt) - 1:-1]
        ours = lp[torch.arange(len(generated)), torch.tensor(generated)].numpy()
        assert lp.argmax(-1).tolist() == generated, f"{slot}: greedy tokens differ from PEFT's"
        worst[slot] = float(np.max(np.abs(ours - server_lp)))
        if adapter is not None:
            model.unload()
    print("max |logprob server - PEFT|:", worst)
    assert max(worst.values()) < 2e-3, worst  # float32 on both sides; fused qkv and attention kernels differ


def test_promotion_and_rollback_go_live(served):
    coder = served.home / "slots" / "coder"
    _, before_lp = first_logprob(served, "coder")
    began = time.monotonic()
    out = served.ruv("slot", "promote", str(coder), str(served.adapters / "coder-2"))
    assert out.returncode == 0, out.stderr
    generation = served.slots()["slots"]["coder"]["generation"]
    assert f"live (generation {generation})" in out.stdout, out.stdout
    model, after_lp = first_logprob(served, "coder")
    assert model == f"coder@{generation}" and abs(after_lp - before_lp) > 1e-3
    back = served.ruv("slot", "rollback", str(coder))
    assert back.returncode == 0 and f"live (generation {generation + 1})" in back.stdout, back.stdout + back.stderr
    model, rolled_lp = first_logprob(served, "coder")
    assert model == f"coder@{generation + 1}" and abs(rolled_lp - before_lp) < 1e-4
    assert time.monotonic() - began < 120


def test_a_wrong_shape_adapter_never_reaches_the_server(served):
    coder = served.home / "slots" / "coder"
    live = served.slots()["slots"]["coder"]["generation"]
    history = (coder / "history.jsonl").read_text()
    out = served.ruv("slot", "promote", "--hidden-size", "768", "--num-layers", "2", str(coder), str(served.adapters / "tiny"))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "refuses the new version" in out.stderr and "shape" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert (coder / "history.jsonl").read_text() == history  # the slot is unchanged
    assert served.slots()["slots"]["coder"]["generation"] == live
    model, _ = first_logprob(served, "coder")
    assert model == f"coder@{live}"
    # a check against the server's own endpoint, outside RUV_HOME: refused before reading
    status, body = post(f"{served.url}/ruv/v1/check", {"path": "/etc"})
    assert status == 200 and not body["ok"] and "RUV_HOME" in body["reason"]


def test_a_server_that_is_down_is_reported_not_waited_for(served):
    from tests.serving.conftest import free_port

    ghost = served.home / "servers" / "127.0.0.1-1.json"
    ghost.write_text(json.dumps({"url": f"http://127.0.0.1:{free_port()}", "pid": 1}))
    try:
        began = time.monotonic()
        out = served.ruv("slot", "promote", str(served.home / "slots" / "spare"), str(served.adapters / "coder-2"))
        took = time.monotonic() - began
        assert out.returncode == 0, out.stderr
        assert "unreachable" in out.stdout and "live" in out.stdout, out.stdout
        assert took < 60, took
    finally:
        ghost.unlink()
    assert "spare" in served.slots()["slots"]  # a slot created later is served without a restart


def test_restart_serves_every_active_generation(served):
    from ruv_assets.serving import launcher

    actives = {}
    for slot in ("coder", "reviewer", "spare"):
        link = (served.home / "slots" / slot / "active").readlink()
        actives[slot] = int(link.name.split("-")[0])
    for record in launcher.launched(served.home):
        assert launcher.stop_record(record)
    assert not list((served.home / "servers").glob("*.json"))  # nothing registered, nothing left
    report = launcher.start(served.model_dir, served.name, served.home, port=served.port, timeout=900)
    assert {s: report["slots"][s]["generation"] for s in actives} == actives
    for slot, generation in actives.items():
        model, _ = first_logprob(served, slot)
        assert model == f"{slot}@{generation}"


def test_answered_requests_reach_the_roles_traffic_log(served):
    from ruv_resources import traffic_log

    path = traffic_log.log_path(served.home, "reviewer")
    start = path.stat().st_size if path.exists() else 0
    prompt = "Review this:\n\ndef mean(xs): return sum(xs) / len(xs)\n"
    status, body = served.complete("reviewer", prompt, max_tokens=8)
    assert status == 200, body
    served.complete(served.name, prompt, max_tokens=2)  # the base model: not a role, not logged
    deadline = time.time() + 10
    while time.time() < deadline and not traffic_log.read(path, start).records:
        time.sleep(0.1)
    records = traffic_log.read(path, start).records
    assert [(r.prompt, r.answer, r.source) for r in records] == [(prompt, body["choices"][0]["text"], "server")]
    assert served.slots()["traffic"]["logged"] >= 1 and served.slots()["traffic"]["dropped"] == 0
