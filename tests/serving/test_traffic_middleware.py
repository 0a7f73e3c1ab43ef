"""The plugin's traffic recorder (serve/ruv_vllm/traffic.py) without a server: an ASGI app that
answers like vLLM's OpenAI routes, and what lands in the slot's traffic log."""

import asyncio
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "serve"))

from ruv_vllm.traffic import TrafficMiddleware, TrafficRecorder  # noqa: E402

from ruv_resources import traffic_log  # noqa: E402


def fake_vllm(status=200, stream=False):
    async def app(scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = json.loads(body)
        chat = scope["path"].endswith("chat/completions")
        if stream:
            await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/event-stream")]})
            for piece in ("Rename ", "x."):
                choice = {"index": 0, **({"delta": {"content": piece}} if chat else {"text": piece})}
                await send({"type": "http.response.body", "body": f"data: {json.dumps({'choices': [choice]})}\n\n".encode(),
                            "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
            return
        choice = {"message": {"role": "assistant", "content": "Rename x."}} if chat else {"text": "Rename x."}
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps({"model": request["model"], "choices": [choice]}).encode()})
    return app


def call(app, path, body: dict):
    sent = []

    async def receive():
        return {"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app({"type": "http", "method": "POST", "path": path}, receive, send))
    return sent


@pytest.fixture
def recorder(tmp_path):
    return TrafficRecorder(tmp_path, lambda: {"reviewer": {}})


def logged(tmp_path, slot="reviewer"):
    return [(r.prompt, r.answer, r.source) for r in traffic_log.read(traffic_log.log_path(tmp_path, slot)).records]


@pytest.mark.parametrize("stream", [False, True])
def test_completions_and_chats_of_a_served_slot_are_logged(tmp_path, recorder, stream):
    app = TrafficMiddleware(fake_vllm(stream=stream), recorder)
    sent = call(app, "/v1/completions", {"model": "reviewer", "prompt": "def f(x): return x"})
    assert sent[0]["status"] == 200  # answered as it was
    call(app, "/v1/chat/completions", {"model": "reviewer", "messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "review: def g(): pass"}]})
    assert logged(tmp_path) == [("def f(x): return x", "Rename x.", "server"), ("review: def g(): pass", "Rename x.", "server")]
    assert recorder.logged == 2


def test_base_model_errors_and_other_routes_are_not_logged(tmp_path, recorder):
    call(TrafficMiddleware(fake_vllm(), recorder), "/v1/completions", {"model": "SmolLM2-135M-Instruct", "prompt": "hi"})
    call(TrafficMiddleware(fake_vllm(status=400), recorder), "/v1/completions", {"model": "reviewer", "prompt": "hi"})
    call(TrafficMiddleware(fake_vllm(), recorder), "/v1/embeddings", {"model": "reviewer", "prompt": "hi"})
    call(TrafficMiddleware(fake_vllm(), recorder), "/v1/completions", {"model": "reviewer", "prompt": ["a", "b"]})
    assert not traffic_log.log_path(tmp_path, "reviewer").exists()


def test_a_full_log_is_counted_and_the_answer_still_goes_out(tmp_path, recorder, monkeypatch):
    def full(*args, **kwargs):
        raise traffic_log.TrafficError("traffic: reviewer.jsonl is full")

    monkeypatch.setattr("ruv_vllm.traffic.traffic_log.append", full)
    sent = call(TrafficMiddleware(fake_vllm(), recorder), "/v1/completions", {"model": "reviewer", "prompt": "hi"})
    assert sent[0]["status"] == 200 and recorder.dropped == 1 and recorder.logged == 0


def test_off_with_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RUV_SERVE_TRAFFIC", "0")
    recorder = TrafficRecorder(tmp_path, lambda: {"reviewer": {}})
    call(TrafficMiddleware(fake_vllm(), recorder), "/v1/completions", {"model": "reviewer", "prompt": "hi"})
    assert not traffic_log.log_path(tmp_path, "reviewer").exists()
