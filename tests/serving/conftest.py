"""One real vLLM server for every test here (CPU build, `.venv-serve`, `scripts/serve-deps.sh`),
serving SmolLM2-135M-Instruct exported by `serving_model` on a RUV_HOME of the session's own.

Before it starts, the RUV_HOME has three slots: `coder` (q,v rank 8) and `reviewer` (all seven
modules, rank 16), both probe adapters of the served shapes, and `tiny`, an adapter of the
default catalogue's synthetic geometry (hidden 768, 2 layers) that the server must skip.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PROJECT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict, timeout: float = 120.0) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def get(url: str, timeout: float = 30.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


@dataclass
class Served:
    url: str
    port: int
    home: Path
    model_dir: Path
    name: str
    adapters: Path
    env: dict = field(default_factory=dict)

    def complete(self, model: str, prompt, max_tokens: int = 4, **extra) -> tuple[int, dict]:
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, "logprobs": 1,
                "return_tokens_as_token_ids": True, **extra}
        return post(f"{self.url}/v1/completions", body)

    def slots(self) -> dict:
        return get(f"{self.url}/ruv/v1/slots")

    def ruv(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ruv_assets.cli", *args], env=self.env, capture_output=True, text=True,
                              timeout=300, check=check)


def _serve_env(home: Path, dagster_home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUV_", "DAGSTER_"))}
    env.update({"RUV_HOME": str(home), "DAGSTER_HOME": str(dagster_home), "HF_HUB_OFFLINE": "1"})
    return env


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    from ruv_assets.serving import launcher

    if not (launcher.serve_venv() / "bin" / "python").exists():
        pytest.fail("vLLM's environment .venv-serve is missing: run scripts/serve-deps.sh (make test does)")
    root = tmp_path_factory.mktemp("serving")
    home, dagster_home, adapters = root / "ruv", root / "dagster_home", root / "adapters"
    dagster_home.mkdir()
    shutil.copy(PROJECT / "dagster_home" / "dagster.yaml", dagster_home / "dagster.yaml")
    env = _serve_env(home, dagster_home)
    saved = {k: os.environ.get(k) for k in ("RUV_HOME", "DAGSTER_HOME", "RUV_CATALOGUE")}
    os.environ.update({"RUV_HOME": str(home), "DAGSTER_HOME": str(dagster_home)})
    os.environ.pop("RUV_CATALOGUE", None)
    try:
        from ruv_assets.serving.model import ensure_serving_model, served_name
        from ruv_assets.serving.probe_adapters import write_probe_adapter

        model_dir, source = ensure_serving_model(log=lambda m: None)
        write_probe_adapter(adapters / "coder-1", model_dir, 1)
        write_probe_adapter(adapters / "coder-2", model_dir, 2)
        write_probe_adapter(adapters / "reviewer-1", model_dir, 11, rank=16,
                            modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), scale=0.03)
        write_probe_adapter(adapters / "tiny", model_dir, 5, num_layers=2, dims={"q_proj": (768, 768), "v_proj": (768, 768)})
        served = Served("", 0, home, Path(model_dir), served_name(source), adapters, env)
        for slot, adapter, extra in (("coder", "coder-1", ()), ("reviewer", "reviewer-1", ()),
                                     ("tiny", "tiny", ("--hidden-size", "768", "--num-layers", "2"))):
            served.ruv("slot", "promote", *extra, str(home / "slots" / slot), str(adapters / adapter), check=True)
        port = free_port()
        launcher.start(served.model_dir, served.name, home, port=port, timeout=900)
        served.url, served.port = f"http://127.0.0.1:{port}", port
        yield served
    finally:
        from ruv_assets.serving import launcher as _launcher

        for record in _launcher.launched(home):
            _launcher.stop_record(record)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
