"""What the server answered, into each role's traffic log (`RUV_HOME/traffic/<slot>.jsonl`), the
data the project's adaptation learns from.

An ASGI middleware beside `inflight`: for a `POST /v1/completions` or `/v1/chat/completions` whose
`model` is a slot this server serves, it keeps the request body and the answer as they pass
(streamed answers too, from their `data:` lines), and once the answer is complete and was a 200,
appends `{prompt, answer}` to the slot's log through `traffic_log` (the project's own module, the
same file: locked, one write, fsynced) on a worker thread, so the event loop never waits on the
disk. A request for the base model, an error, or a body that is not what the OpenAI API says is
not logged; a log that cannot take it (full, a failed write) is counted and reported once, and the
request is answered as if nothing happened. `RUV_SERVE_TRAFFIC=0` turns it off.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

from ruv_vllm import traffic_log

log = logging.getLogger("vllm.ruv")
PATHS = {"/v1/completions": "completion", "/v1/chat/completions": "chat"}
MAX_BODY = traffic_log.MAX_RECORD_BYTES * 4  # larger requests or answers are not kept


def prompt_of(kind: str, body: dict) -> str | None:
    """The request's text: a completion's prompt, or a chat's last user message."""
    if kind == "completion":
        prompt = body.get("prompt")
        return prompt if isinstance(prompt, str) else None
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user" and isinstance(message.get("content"), str):
            return message["content"]
    return None


def answer_of(kind: str, raw: bytes, streamed: bool) -> str | None:
    """The first choice's text, from a JSON answer or the `data:` lines of a streamed one."""
    try:
        if not streamed:
            choice = json.loads(raw)["choices"][0]
            return choice["text"] if kind == "completion" else choice["message"]["content"]
        parts = []
        for line in raw.decode("utf-8").splitlines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            for choice in chunk.get("choices", []):
                if choice.get("index", 0) == 0:
                    parts.append(choice.get("text") if kind == "completion" else (choice.get("delta") or {}).get("content") or "")
        return "".join(p for p in parts if p)
    except (ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError):
        return None


class TrafficRecorder:
    def __init__(self, home: Path, served) -> None:
        self.home = home
        self.served = served  # callable: the slot names served now
        self.enabled = os.environ.get("RUV_SERVE_TRAFFIC", "1") != "0"
        self.logged = 0
        self.dropped = 0
        self._warned = False

    def wanted(self, model: str | None) -> bool:
        return self.enabled and isinstance(model, str) and model in self.served()

    async def record(self, slot: str, prompt: str, answer: str | None) -> None:
        record, _ = traffic_log.validate({"prompt": prompt, "answer": answer}, source="server")
        if record is None:
            self.dropped += 1
            return
        try:
            await asyncio.to_thread(traffic_log.append, traffic_log.log_path(self.home, slot), [record])
            self.logged += 1
        except (ValueError, OSError) as exc:  # traffic_log.TrafficError is a ValueError
            self.dropped += 1
            if not self._warned:
                log.warning("ruv: traffic of %s not logged (%s); answering goes on, further failures are only counted", slot, exc)
                self._warned = True


class TrafficMiddleware:
    def __init__(self, app, recorder: TrafficRecorder) -> None:
        self.app = app
        self.recorder = recorder

    async def __call__(self, scope, receive, send):
        kind = PATHS.get(scope.get("path", "")) if scope.get("type") == "http" and scope.get("method") == "POST" else None
        if kind is None or not self.recorder.enabled:
            return await self.app(scope, receive, send)
        body, answer, state = bytearray(), bytearray(), {"status": 0, "streamed": False, "too_big": False}

        async def tee_receive():
            message = await receive()
            if message.get("type") == "http.request" and len(body) <= MAX_BODY:
                body.extend(message.get("body", b""))
            return message

        async def tee_send(message):
            if message["type"] == "http.response.start":
                state["status"] = message.get("status", 0)
                headers = dict(message.get("headers") or [])
                state["streamed"] = headers.get(b"content-type", b"").startswith(b"text/event-stream")
            elif message["type"] == "http.response.body":
                if len(answer) + len(message.get("body", b"")) <= MAX_BODY:
                    answer.extend(message.get("body", b""))
                else:
                    state["too_big"] = True
            await send(message)

        await self.app(scope, tee_receive, tee_send)
        if state["status"] != 200 or state["too_big"] or len(body) > MAX_BODY:
            return
        try:
            request = json.loads(bytes(body))
        except ValueError:
            return
        model = request.get("model") if isinstance(request, dict) else None
        if not self.recorder.wanted(model):
            return
        prompt = prompt_of(kind, request)
        if prompt:
            await self.recorder.record(model, prompt, answer_of(kind, bytes(answer), state["streamed"]))
