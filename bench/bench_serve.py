"""Serving under load: two real vLLM servers following one RUV_HOME while its slots are promoted
and rolled back back to back (DESIGN.md section 10), and the server's logprobs against PEFT's.

    python bench/bench_serve.py [--swaps 60] [--clients 4] [--steady 20]

Three roles (coder q,v r8; reviewer all seven r16; security q,k,v,o r8), each with two probe
adapters A and B whose first-token logprob on the probe prompt differs (the fingerprint). Phases:
steady (no swaps: the throughput reference), swaps (a swapper alternates promote B / rollback to
A over the roles, waiting after each until both servers acknowledge the generation live), and a
restart of the second server in the middle of the swaps (clients keep to the first meanwhile).

Per answer: its generation (the answer's `model` is `<slot>@<generation>`) and its logprob. An
answer is stale if its generation is older than the one that server had acknowledged live when
the request started; mixed if its logprob matches neither fingerprint of the adapter that
generation holds. Prints requests, failed, stale, mixed, swap-to-live (median, max, per server:
time from the `active` link changing to the server reporting it live and to the first answer
from it), throughput with and without swaps, and the restart.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PROJECT))
PROMPT = "def add(a, b):\n    "
ROLES = {"coder": dict(rank=8, modules=("q_proj", "v_proj"), scale=0.05),
         "reviewer": dict(rank=16, modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), scale=0.03),
         "security": dict(rank=8, modules=("q_proj", "k_proj", "v_proj", "o_proj"), scale=0.05)}


def post(url, body, timeout=120.0):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def get(url, timeout=10.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def complete(url, model, max_tokens=1):
    body = post(f"{url}/v1/completions", {"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0.0, "logprobs": 1})
    return body["model"], body["choices"][0]["logprobs"]["token_logprobs"][0]


class Load:
    """Client threads; each request records server, role, start, end, generation, logprob, error."""

    def __init__(self, clients: int):
        self.clients = clients
        self.records: list[dict] = []
        self.up: list[str] = []
        self.acked: dict[tuple[str, str], int] = {}  # (server, role) -> generation acknowledged live
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.inflight = {}

    def client(self, seed: int):
        rng = random.Random(seed)
        while not self.stop.is_set():
            with self.lock:
                if not self.up:
                    continue
                url = rng.choice(self.up)
                self.inflight[url] = self.inflight.get(url, 0) + 1
            role = rng.choice(list(ROLES))
            with self.lock:
                acked = self.acked.get((url, role), 0)
            began = time.monotonic()
            rec = {"url": url, "role": role, "start": began, "acked": acked}
            try:
                model, lp = complete(url, role)
                rec.update(model=model, generation=int(model.split("@")[1]), logprob=lp)
            except Exception as exc:  # a failed request is a finding, not a crash
                rec["error"] = repr(exc)
            rec["end"] = time.monotonic()
            with self.lock:
                self.records.append(rec)
                self.inflight[url] -= 1

    def run(self):
        threads = [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(self.clients)]
        for t in threads:
            t.start()
        return threads


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--swaps", type=int, default=60)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--steady", type=float, default=20.0)
    ap.add_argument("--no-restart", action="store_true", help="skip restarting the second server mid-run")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ruv-serve-bench-"))
    os.environ.update({"RUV_HOME": str(root / "ruv"), "DAGSTER_HOME": str(root / "dagster_home"), "HF_HUB_OFFLINE": "1"})
    os.environ.pop("RUV_CATALOGUE", None)
    (root / "dagster_home").mkdir()
    shutil.copy(PROJECT / "dagster_home" / "dagster.yaml", root / "dagster_home" / "dagster.yaml")
    from ruv_resources.slot import Slot
    from ruv_assets.serving import launcher
    from ruv_assets.serving.model import ensure_serving_model, served_name
    from ruv_assets.serving.probe_adapters import write_probe_adapter
    from ruv_assets.serving import servers as srv

    home = root / "ruv"
    model_dir, source = ensure_serving_model(log=print)
    adapters = {}
    for i, (role, kw) in enumerate(ROLES.items()):
        for j, tag in enumerate("AB"):
            adapters[role, tag] = write_probe_adapter(root / "adapters" / f"{role}-{tag}", model_dir, 100 + 10 * i + j, **kw)
        Slot(home / "slots", role).promote(adapters[role, "A"])
    ports = [launcher_port() for _ in range(2)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    began = time.monotonic()
    starts = {}
    for port in ports:  # one after the other: two engines loading at once on 2 cores only slows both
        t0 = time.monotonic()
        launcher.start(Path(model_dir), served_name(source), home, port=port)
        starts[port] = time.monotonic() - t0
    print(f"two servers up in {time.monotonic() - began:.1f} s ({', '.join(f'{s:.1f}' for s in starts.values())})")
    try:
        run(args, home, urls, ports, adapters, Path(model_dir), served_name(source), launcher, srv, Slot, starts)
    finally:
        for record in launcher.launched(home):
            launcher.stop_record(record)
        shutil.rmtree(root, ignore_errors=True)


def launcher_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_acked(srv, urls, role, generation, timeout=30.0):
    """Poll both servers until each reports `generation` live for `role`; per URL the seconds."""
    t0, out = time.monotonic(), {}
    while len(out) < len(urls) and time.monotonic() - t0 < timeout:
        for url in urls:
            if url in out:
                continue
            try:
                live = get(f"{url}/ruv/v1/slots")["slots"].get(role, {}).get("generation")
            except Exception:
                continue
            if live is not None and live >= generation:
                out[url] = time.monotonic()
        time.sleep(0.01)
    return out


def run(args, home, urls, ports, adapters, model_dir, name, launcher, srv, Slot, starts):
    # fingerprints: the first-token logprob of each adapter, measured on the first server
    fingerprint, holds = {}, {}
    for role in ROLES:
        slot = Slot(home / "slots", role)
        _, fingerprint[role, "A"] = complete(urls[0], role)
        state = slot.promote(adapters[role, "B"])
        wait_acked(srv, urls[:1], role, state.generation)
        _, fingerprint[role, "B"] = complete(urls[0], role)
        state = slot.rollback()
        wait_acked(srv, urls, role, state.generation)
        holds.update({(role, 1): "A", (role, 2): "B", (role, 3): "A"})
        gap = abs(fingerprint[role, "A"] - fingerprint[role, "B"])
        print(f"{role}: first-token logprob A {fingerprint[role, 'A']:.5f}, B {fingerprint[role, 'B']:.5f} (apart by {gap:.4f})")
        assert gap > 1e-3, "the two probe adapters must be told apart"
    peft = peft_agreement(urls[0], model_dir, adapters, name)

    load = Load(args.clients)
    for url in urls:
        for role in ROLES:
            load.acked[url, role] = Slot(home / "slots", role).status().generation
    load.up = list(urls)
    threads = load.run()
    t0 = time.monotonic()
    time.sleep(args.steady)
    steady_end = time.monotonic()
    swaps, restart = [], {}
    roles = list(ROLES)
    for i in range(args.swaps):
        role = roles[i % len(roles)]
        slot = Slot(home / "slots", role)
        state = slot.promote(adapters[role, "B"]) if holds[role, slot.status().generation] == "A" else slot.rollback()
        changed = time.monotonic()
        holds[role, state.generation] = "B" if holds[role, state.generation - 1] == "A" else "A"
        up = list(load.up)
        acked = wait_acked(srv, up, role, state.generation)
        with load.lock:
            for url, when in acked.items():
                load.acked[url, role] = max(load.acked[url, role], state.generation)
        swaps.append({"role": role, "generation": state.generation, "changed": changed,
                      "acked": {u: acked[u] - changed for u in acked}, "missed": [u for u in up if u not in acked]})
        if i == args.swaps // 2 and not args.no_restart:  # restart the second server while the swaps go on against the first
            with load.lock:
                load.up = [urls[0]]
            while load.inflight.get(urls[1], 0):
                time.sleep(0.01)
            r0 = time.monotonic()
            for record in launcher.launched(home):
                if record.name.endswith(f"-{ports[1]}.launch.json"):
                    launcher.stop_record(record)
            stopped = time.monotonic()
            report = launcher.start(model_dir, name, home, port=ports[1])
            actives = {role: Slot(home / "slots", role).status().generation for role in ROLES}
            restart = {"stop": stopped - r0, "start": time.monotonic() - stopped,
                       "serves_active": all(report["slots"][r]["generation"] == g for r, g in actives.items())}
            with load.lock:
                for role in ROLES:
                    load.acked[urls[1], role] = report["slots"][role]["generation"]
                load.up = list(urls)
    swaps_end = time.monotonic()
    load.stop.set()
    for t in threads:
        t.join(timeout=120)
    print_report(load, swaps, holds, fingerprint, t0, steady_end, swaps_end, restart, peft, starts, args)


def peft_agreement(url, model_dir, adapters, name):
    """Max |server - PEFT| over 16 greedy tokens of 3 prompts, per role (adapter A) and the base."""
    try:
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError:
        return {"skipped": "torch/peft not installed (make bench installs them)"}
    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    prompts = [PROMPT, "The capital of France is", "Q: What does a code reviewer look for?\nA:"]
    out = {}
    for role in list(ROLES) + [None]:
        model = base if role is None else PeftModel.from_pretrained(base, str(adapters[role, "A"]))
        worst, agree = 0.0, 0
        for prompt in prompts:
            ids = tok(prompt)["input_ids"]
            body = post(f"{url}/v1/completions", {"model": role or name, "prompt": ids, "max_tokens": 16, "temperature": 0.0,
                                                  "logprobs": 1, "return_tokens_as_token_ids": True})
            lp_server = body["choices"][0]["logprobs"]["token_logprobs"]
            gen = [int(t.split(":")[1]) for t in body["choices"][0]["logprobs"]["tokens"]]
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([ids + gen])).logits[0].double(), -1)[len(ids) - 1:-1]
            ours = lp[torch.arange(len(gen)), torch.tensor(gen)]
            worst = max(worst, float((ours - torch.tensor(lp_server, dtype=torch.float64)).abs().max()))
            agree += int(lp.argmax(-1).tolist() == gen)
        out[role or name] = {"max_abs_logprob_diff": worst, "greedy_agree": f"{agree}/{len(prompts)}"}
        if role is not None:
            model.unload()
    return out


def print_report(load, swaps, holds, fingerprint, t0, steady_end, swaps_end, restart, peft, starts, args):
    recs = load.records
    failed = [r for r in recs if "error" in r]
    ok = [r for r in recs if "error" not in r]
    stale = [r for r in ok if r["generation"] < r["acked"]]
    mixed = [r for r in ok if abs(r["logprob"] - fingerprint[r["role"], holds[r["role"], r["generation"]]]) > 2e-4]
    steady = [r for r in ok if r["end"] <= steady_end]
    during = [r for r in ok if steady_end <= r["start"] and r["end"] <= swaps_end]
    ack = [s for sw in swaps for s in sw["acked"].values()]
    per_server = {}
    for sw in swaps:
        for url, s in sw["acked"].items():
            per_server.setdefault(url, []).append(s)
    first_answer = []
    for sw in swaps:
        for url in sw["acked"]:
            later = [r["end"] - sw["changed"] for r in ok if r["url"] == url and r["role"] == sw["role"]
                     and r["generation"] >= sw["generation"] and r["end"] >= sw["changed"]]
            if later:
                first_answer.append(min(later))
    slower = [max(sw["acked"].values()) for sw in swaps if sw["acked"]]
    print("\n== bench_serve")
    print(f"requests {len(recs)}, failed {len(failed)}, stale {len(stale)}, mixed {len(mixed)}; swaps {len(swaps)} "
          f"(missed acknowledgements {sum(len(s['missed']) for s in swaps)})")
    if failed:
        print("  first failure:", failed[0]["error"])
    print(f"swap -> acknowledged live: median {statistics.median(ack) * 1e3:.0f} ms, max {max(ack) * 1e3:.0f} ms over {len(ack)}")
    for url, v in per_server.items():
        print(f"  {url}: median {statistics.median(v) * 1e3:.0f} ms, max {max(v) * 1e3:.0f} ms")
    print(f"  slower of the two servers per swap: median {statistics.median(slower) * 1e3:.0f} ms, max {max(slower) * 1e3:.0f} ms")
    if first_answer:
        print(f"swap -> first answer from the new generation: median {statistics.median(first_answer) * 1e3:.0f} ms, "
              f"max {max(first_answer) * 1e3:.0f} ms over {len(first_answer)}")
    print(f"throughput: steady {len(steady) / (steady_end - t0):.2f} req/s ({len(steady)} in {steady_end - t0:.1f} s), "
          f"with swaps {len(during) / (swaps_end - steady_end):.2f} req/s ({len(during)} in {swaps_end - steady_end:.1f} s, "
          f"restart of the second server included)")
    lat = sorted(r["end"] - r["start"] for r in ok)
    print(f"latency (1 token, {args.clients} clients): median {statistics.median(lat) * 1e3:.0f} ms, p99 {lat[int(0.99 * (len(lat) - 1))] * 1e3:.0f} ms")
    print(f"restart: stop {restart.get('stop', 0):.1f} s, start {restart.get('start', 0):.1f} s, serves every active generation: {restart.get('serves_active')}")
    print(f"server start: {', '.join(f'{s:.1f} s' for s in starts.values())}")
    print("PEFT agreement (max |logprob server - PEFT| over 16 greedy tokens x 3 prompts, float32):")
    print(json.dumps(peft, indent=1))


if __name__ == "__main__":
    main()
