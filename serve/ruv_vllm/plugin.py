"""The endpoint plugin: every slot under RUV_HOME is a model name on this vLLM server.

Loaded by vLLM from the `vllm.endpoint_plugins` entry point when `VLLM_PLUGINS` names `ruv`.
At start it loads every slot's active version before the server answers; then a watcher polls
each slot's `active` link (one `readlink` per slot, every `RUV_SERVE_POLL_SECONDS`, default 0.2).
When a slot's generation changes, the new version is

1. checked against the served model from its files (`fit.check_fits`): a wrong shape, rank,
   module or a partial file is refused with one line and the previous generation keeps serving;
2. loaded into the engine under a name and id of its own (`<slot>@<generation>`, a fresh id) from
   its immutable version directory, so the engine's adapter cache and prefix cache (keyed by name
   and path) can never hand out blocks computed with other weights;
3. published: `lora_requests[<slot>]` is replaced in one assignment on the event loop, so a
   request resolves either the old generation or the new one, never a mixture;
4. retired: the old generation's id is removed from the engine once every request that arrived
   before step 3 has finished (`inflight`).

Answers name the generation that produced them: `"model": "coder@17"`. Each answered request for
a slot is appended to that slot's traffic log (`traffic`), which the project's adaptation reads.

Routes: `GET /ruv/v1/slots` (what is live, what was refused and why), `POST /ruv/v1/check`
(`{"path": dir}`: would this adapter be served? checked and loaded under a throwaway id, then
removed; a promotion asks before it swaps), `GET /v1/models` (the base model and one card per
slot). The server registers itself in `RUV_HOME/servers/<host>-<port>.json` while it runs, which
is how the project's promotions find the servers to wait for.
"""

import asyncio
import atexit
import json
import logging
import os
import time
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ruv_vllm.fit import DoesNotFit, ServedShapes, check_fits
from ruv_vllm.inflight import InFlight, InFlightMiddleware
from ruv_vllm.slots import ActiveVersion, active_version, slot_names
from ruv_vllm.traffic import TrafficMiddleware, TrafficRecorder

log = logging.getLogger("vllm.ruv")  # under vLLM's logger, so its handlers print our lines
IDENTITY = "ruv_serving.json"  # written beside config.json by the project's export of the base model


def _now() -> float:
    return time.time()


class SlotServer:
    """What this server serves from the slots, and the work of keeping it current."""

    def __init__(self, engine_client, models, args) -> None:
        self.engine = engine_client
        self.models = models
        self.home = Path(os.environ.get("RUV_HOME") or ".ruv").resolve()
        self.slots_root = self.home / "slots"
        self.poll = float(os.environ.get("RUV_SERVE_POLL_SECONDS", "0.2"))
        self.model_dir = Path(args.model)
        self.shapes = ServedShapes.from_model_dir(self.model_dir, int(getattr(args, "max_lora_rank", None) or 16))
        names = getattr(args, "served_model_name", None) or [args.model]
        self.base_name = names[0] if isinstance(names, (list, tuple)) else names
        self.host = getattr(args, "host", None) or "127.0.0.1"
        self.port = int(getattr(args, "port", 8000))
        self.live: dict[str, dict] = {}
        self.refused: dict[str, dict] = {}
        self.retiring: list[tuple[int, int, str]] = []  # (mark, lora id, name)
        self.inflight: InFlight | None = None
        self.swaps = 0
        self.started_at = _now()
        self.identity = self._identity()
        self._task: asyncio.Task | None = None
        self._registered: Path | None = None

    def _identity(self) -> dict:
        try:
            return json.loads((self.model_dir / IDENTITY).read_text())
        except (OSError, ValueError):
            return {}

    # -- keeping current ------------------------------------------------------------------------

    def _next_id(self) -> int:
        return self.models.lora_id_counter.inc(1)

    async def _load(self, active: ActiveVersion) -> None:
        slot = active.slot
        if slot == self.base_name:
            self._refuse(active, f"slot name {slot!r} is the served base model's name")
            return
        try:
            summary = check_fits(active.path, self.shapes)
        except DoesNotFit as exc:
            self._refuse(active, str(exc))
            return
        from vllm.lora.request import LoRARequest

        request = LoRARequest(lora_name=f"{slot}@{active.generation}", lora_int_id=self._next_id(), lora_path=active.path,
                              base_model_name=self.base_name)
        began = _now()
        try:
            await self.engine.add_lora(request)
        except Exception as exc:  # the engine's refusal: keep the old generation
            self._refuse(active, f"vLLM refused it: {str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}")
            return
        previous = self.models.lora_requests.get(slot)
        self.models.lora_requests[slot] = request  # the swap: one assignment, no await in between
        self.swaps += 1
        if previous is not None and previous.lora_int_id != request.lora_int_id:
            self.retiring.append((self.inflight.mark() if self.inflight else 0, previous.lora_int_id, previous.lora_name))
        self.refused.pop(slot, None)
        self.live[slot] = {"generation": active.generation, "version": active.version, "path": active.path,
                           "lora_name": request.lora_name, "lora_int_id": request.lora_int_id,
                           "live_since": _now(), "load_seconds": round(_now() - began, 4), **summary}
        log.info("ruv: slot %s generation %d live as %s (%s)", slot, active.generation, request.lora_name, active.path)

    def _refuse(self, active: ActiveVersion, reason: str) -> None:
        known = self.refused.get(active.slot)
        if known is None or known["version"] != active.version:
            keeps = self.live.get(active.slot)
            still = f"; generation {keeps['generation']} keeps serving" if keeps else ""
            log.warning("ruv: slot %s generation %d not served: %s%s", active.slot, active.generation, reason, still)
        self.refused[active.slot] = {"generation": active.generation, "version": active.version, "reason": reason,
                                     "refused_at": _now()}

    async def sync_once(self) -> None:
        seen = set()
        for name in slot_names(self.slots_root):
            active = active_version(self.slots_root, name)
            if active is None:
                continue
            seen.add(name)
            live, refused = self.live.get(name), self.refused.get(name)
            if live is not None and live["version"] == active.version:
                if refused is not None:
                    self.refused.pop(name, None)  # rolled back to what is live
                continue
            if refused is not None and refused["version"] == active.version:
                continue
            await self._load(active)
        for name in list(self.live):
            if name not in seen and not (self.slots_root / name).exists():  # the slot was deleted
                request = self.models.lora_requests.pop(name, None)
                gone = self.live.pop(name)
                if request is not None:
                    self.retiring.append((self.inflight.mark() if self.inflight else 0, request.lora_int_id, gone["lora_name"]))
        await self._retire()

    async def _retire(self) -> None:
        keep = []
        for mark, lora_id, name in self.retiring:
            if self.inflight is None or self.inflight.drained_before(mark):
                try:
                    await self.engine.remove_lora(lora_id)
                except Exception as exc:  # already evicted by the engine's cache: nothing to free
                    log.debug("ruv: removing %s: %s", name, exc)
            else:
                keep.append((mark, lora_id, name))
        self.retiring = keep

    async def watch(self) -> None:
        while True:
            try:
                await self.sync_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one bad pass stop the watcher
                log.exception("ruv: slot sync failed; retrying")
            await asyncio.sleep(self.poll)

    # -- asking before a swap -------------------------------------------------------------------

    async def check(self, path: str) -> dict:
        target = Path(path).resolve()
        if not target.is_relative_to(self.home):
            return {"ok": False, "reason": f"{path}: not under this server's RUV_HOME {self.home}"}
        if not target.is_dir():
            return {"ok": False, "reason": f"{path}: not a directory"}
        try:
            summary = check_fits(target, self.shapes)
        except DoesNotFit as exc:
            return {"ok": False, "reason": str(exc)}
        from vllm.lora.request import LoRARequest

        request = LoRARequest(lora_name=f"ruv-check-{self._next_id()}", lora_int_id=self._next_id(), lora_path=str(target))
        try:
            await self.engine.add_lora(request)
        except Exception as exc:
            return {"ok": False, "reason": f"vLLM refused it: {str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__}"}
        try:
            await self.engine.remove_lora(request.lora_int_id)
        except Exception:
            pass
        return {"ok": True, **summary}

    def report(self) -> dict:
        return {"url": self.url, "base_model": self.base_name, "model_dir": str(self.model_dir), "identity": self.identity,
                "ruv_home": str(self.home), "served": self.shapes.describe(), "max_lora_rank": self.shapes.max_rank,
                "slots": self.live, "refused": self.refused, "swaps": self.swaps, "retiring": len(self.retiring),
                "in_flight": self.inflight.open_count if self.inflight else None, "pid": os.getpid(), "time": _now(),
                "traffic": self.traffic_report()}

    def traffic_report(self) -> dict:
        recorder = getattr(self, "traffic", None)
        if recorder is None:
            return {}
        return {"enabled": recorder.enabled, "logged": recorder.logged, "dropped": recorder.dropped,
                "dir": str(self.home / "traffic")}

    # -- being found ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def register(self) -> None:
        servers = self.home / "servers"
        servers.mkdir(parents=True, exist_ok=True)
        path = servers / f"{self.host}-{self.port}.json"
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps({"url": self.url, "pid": os.getpid(), "base_model": self.base_name,
                                   "model_dir": str(self.model_dir), "identity": self.identity,
                                   "started_at": self.started_at}, indent=1) + "\n")
        os.replace(tmp, path)
        self._registered = path
        atexit.register(self.unregister)

    def unregister(self) -> None:
        path = self._registered
        if path is None:
            return
        try:
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()
        except (OSError, ValueError):
            pass
        self._registered = None


class RuvSlotsPlugin:
    name = "ruv"
    required_tasks = ("generate",)

    def __init__(self) -> None:
        self.inflight = InFlight()
        self.server: SlotServer | None = None
        home = Path(os.environ.get("RUV_HOME") or ".ruv").resolve()
        self.traffic = TrafficRecorder(home, lambda: self.server.live if self.server is not None else {})

    def attach_router(self, app) -> None:
        app.add_middleware(InFlightMiddleware, tracker=self.inflight)
        app.add_middleware(TrafficMiddleware, recorder=self.traffic)
        router = APIRouter()
        plugin = self

        @router.get("/ruv/v1/slots")
        async def slots():
            if plugin.server is None:
                return JSONResponse({"error": "not started"}, status_code=503)
            return JSONResponse(plugin.server.report())

        @router.post("/ruv/v1/check")
        async def check(request: Request):
            if plugin.server is None:
                return JSONResponse({"ok": False, "reason": "not started"}, status_code=503)
            try:
                body = await request.json()
                path = body["path"]
                if not isinstance(path, str):
                    raise TypeError
            except Exception:
                return JSONResponse({"ok": False, "reason": 'the body must be {"path": "<adapter directory>"}'}, status_code=400)
            return JSONResponse(await plugin.server.check(path))

        @router.get("/v1/models")
        async def models():
            server = plugin.server
            listing = (await server.models.registry.show_available_models()).model_dump()
            for name, live in sorted(server.live.items()):
                listing["data"].append({"id": name, "object": "model", "created": int(live["live_since"]),
                                        "owned_by": "ruv-assets", "root": live["path"], "parent": server.base_name,
                                        "max_model_len": None, "permission": [],
                                        "ruv_generation": live["generation"], "ruv_lora_name": live["lora_name"]})
            return JSONResponse(listing)

        app.include_router(router)

    async def init_state(self, engine_client, state, args) -> None:
        if engine_client is None:
            return
        server = SlotServer(engine_client, state.openai_serving_models, args)
        server.inflight = self.inflight
        server.traffic = self.traffic
        await server.sync_once()  # every active generation is live before the first request
        server._task = asyncio.get_running_loop().create_task(server.watch())
        server.register()
        self.server = server
        log.info("ruv: serving %d slot(s) from %s (%d refused)", len(server.live), server.slots_root, len(server.refused))


def make_plugin() -> RuvSlotsPlugin:
    return RuvSlotsPlugin()
