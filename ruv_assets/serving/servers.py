"""The servers following a RUV_HOME, as a promotion talks to them (standard library HTTP only).

Each running server registers itself in `<RUV_HOME>/servers/<host>-<port>.json` (the `ruv_vllm`
plugin writes it at start and removes it at exit). Before a swap, a promotion asks every server
that serves the slot whether it would serve the new version (`POST /ruv/v1/check`); a refusal
fails the promotion and the slot is left as it was. After the swap it waits, bounded, until each
server reports the new generation live (`GET /ruv/v1/slots`). A server that does not answer is
reported as unreachable (a server that is down serves nothing stale: on restart it loads every
slot's active version), never waited on for long.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

CONNECT_TIMEOUT = 2.0


@dataclass(frozen=True)
class Server:
    url: str
    registration: Path


def servers_dir(home: str | os.PathLike | None = None) -> Path:
    return Path(home if home is not None else os.environ.get("RUV_HOME", ".ruv")) / "servers"


def registered(home: str | os.PathLike | None = None) -> list[Server]:
    found = []
    directory = servers_dir(home)
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        if path.name.endswith(".launch.json"):  # what `ruv serve up` started, not a registration
            continue
        try:
            url = json.loads(path.read_text())["url"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(url, str) and url.startswith("http"):
            found.append(Server(url.rstrip("/"), path))
    return found


class Unreachable(Exception):
    pass


def _request(url: str, body: dict | None = None, timeout: float = CONNECT_TIMEOUT) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            return json.loads(exc.read())
        except ValueError:
            raise Unreachable(f"HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise Unreachable(str(getattr(exc, "reason", exc))) from None


def slots_report(server: Server, timeout: float = CONNECT_TIMEOUT) -> dict:
    return _request(f"{server.url}/ruv/v1/slots", timeout=timeout)


def live_generation(report: dict, slot: str) -> int | None:
    live = (report.get("slots") or {}).get(slot)
    return None if live is None else int(live["generation"])


def precheck(slot: str, adapter_dir: str | os.PathLike, home: str | os.PathLike | None = None,
             timeout: float = 60.0) -> dict[str, dict]:
    """Ask every registered server about `adapter_dir` before it goes into `slot`. Returns, per
    server URL, {"status": "accepts" | "refuses" | "unreachable" | "not serving", "reason": ...};
    a server refuses what it currently serves `slot` with only when the answer's "fails" is True."""
    answers = {}
    found = registered(home)
    if not found:
        return answers
    staged = None
    path = Path(adapter_dir).resolve()
    root = servers_dir(home).resolve().parent
    if not path.is_relative_to(root):  # the servers read only under RUV_HOME: a copy beside their registrations
        staged = servers_dir(home) / f".check-{secrets.token_hex(6)}"
        staged.mkdir()
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            if (path / name).is_file():
                shutil.copyfile(path / name, staged / name)
        path = staged.resolve()
    try:
        return _precheck(found, slot, path, timeout)
    finally:
        if staged is not None:
            shutil.rmtree(staged, ignore_errors=True)


def _precheck(found: list[Server], slot: str, path: Path, timeout: float) -> dict[str, dict]:
    answers = {}
    for server in found:
        try:
            report = slots_report(server)
        except Unreachable as exc:
            answers[server.url] = {"status": "unreachable", "reason": str(exc)}
            continue
        serving = live_generation(report, slot) is not None
        try:
            answer = _request(f"{server.url}/ruv/v1/check", {"path": str(path)}, timeout=timeout)
        except Unreachable as exc:
            answers[server.url] = {"status": "unreachable", "reason": str(exc)}
            continue
        if answer.get("ok"):
            answers[server.url] = {"status": "accepts", "serving": serving}
        else:
            answers[server.url] = {"status": "refuses", "reason": str(answer.get("reason")), "serving": serving,
                                   "fails": serving}
    return answers


def refusal(answers: dict[str, dict], slot: str) -> str | None:
    """One line for a promotion to fail with, when a server that serves `slot` refuses the new version."""
    for url, answer in answers.items():
        if answer.get("fails"):
            return (f"the server at {url} serves slot {slot} and refuses the new version: {answer['reason']}; "
                    f"the slot is unchanged and its generation keeps serving")
    return None


def following(home: str | os.PathLike | None = None) -> dict[str, dict]:
    """Every registered server, as `wait_live` takes them, for a swap to a version already checked
    (a rollback, or a version that is already active)."""
    return {server.url: {"status": "accepts"} for server in registered(home)}


def wait_live(slot: str, generation: int, answers: dict[str, dict], timeout: float = 30.0, poll: float = 0.05) -> dict[str, dict]:
    """Wait until every server that accepted the version reports `generation` live for `slot`.
    Returns per URL {"status": "live" | "timeout" | "unreachable" | ..., "seconds": ...}."""
    began = time.monotonic()
    waiting = {url for url, answer in answers.items() if answer["status"] == "accepts"}
    result = {url: dict(answer) for url, answer in answers.items() if url not in waiting}
    while waiting:
        for url in sorted(waiting):
            try:
                report = slots_report(Server(url, Path()))
            except Unreachable as exc:
                result[url] = {"status": "unreachable", "reason": str(exc)}
                waiting.discard(url)
                continue
            live = live_generation(report, slot)
            if live is not None and live >= generation:
                result[url] = {"status": "live", "generation": live, "seconds": round(time.monotonic() - began, 3)}
                waiting.discard(url)
            elif (report.get("refused") or {}).get(slot, {}).get("generation") == generation:
                result[url] = {"status": "refused", "reason": report["refused"][slot]["reason"]}
                waiting.discard(url)
        if waiting and time.monotonic() - began > timeout:
            for url in waiting:
                result[url] = {"status": "timeout", "seconds": round(time.monotonic() - began, 3)}
            break
        if waiting:
            time.sleep(poll)
    return result


def summary(result: dict[str, dict]) -> str:
    """`http://127.0.0.1:8000 live in 0.21 s; http://... unreachable (...)` for logs and the CLI."""
    parts = []
    for url, r in sorted(result.items()):
        if r["status"] == "live":
            parts.append(f"{url} live (generation {r['generation']}) in {r['seconds']:.2f} s")
        else:
            parts.append(f"{url} {r['status']}" + (f" ({r['reason']})" if r.get("reason") else ""))
    return "; ".join(parts)
