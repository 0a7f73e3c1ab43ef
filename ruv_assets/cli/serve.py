"""`ruv serve up|down|status`: the slots on a running vLLM server (OpenAI-compatible API).

`up` exports the base model for vLLM once (`serving_model`), starts vLLM from `.venv-serve` with
the `ruv_vllm` plugin on 127.0.0.1, waits until every slot under RUV_HOME that fits is loaded,
says which it skipped and why, and prints the API's base URL alone on its last line. Promotions
and rollbacks then reach the server by themselves. `down` stops exactly the servers `up` started
for this RUV_HOME; `status` shows what each registered server serves.
"""

from __future__ import annotations

import os
from pathlib import Path

from ruv_assets.cli import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="serve the slots on vLLM (up, down, status)")
    sub = parser.add_subparsers(dest="serve_command", required=True)
    up = sub.add_parser("up", help="start vLLM serving every slot that fits the base model; prints the base URL last")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=int(os.environ.get("RUV_SERVE_PORT", "8000")))
    up.add_argument("--max-model-len", type=int, default=2048, help="context length the server allows (default 2048)")
    up.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the server to answer (default 900)")
    up.set_defaults(handler=run_up)
    down = sub.add_parser("down", help="stop the servers `ruv serve up` started for this RUV_HOME")
    down.add_argument("--port", type=int, help="only the one on this port")
    down.set_defaults(handler=run_down)
    status = sub.add_parser("status", help="what each registered server serves")
    status.set_defaults(handler=run_status)


def _home() -> Path:
    return Path(os.environ.get("RUV_HOME", ".ruv")).resolve()


def _print_report(report: dict) -> None:
    live, refused = report.get("slots") or {}, report.get("refused") or {}
    print(f"serving {report['base_model']} ({report['served']}) at {report['url']}/v1, slots from {report['ruv_home']}")
    for name, slot in sorted(live.items()):
        print(f"  {name:<14} generation {slot['generation']:<4} rank {slot['rank']:<3} {', '.join(slot['modules'])}")
    for name, slot in sorted(refused.items()):
        print(f"  skipped {name} (generation {slot['generation']}): {slot['reason']}")
    if not live:
        print("  no slot fits this model yet: promote one (ruv slot promote, make demo) and it is served without a restart")


def run_up(args) -> int:
    from ruv_assets.serving import launcher
    from ruv_assets.serving.model import ensure_serving_model, served_name

    launcher.serve_python()  # the environment first: a clear line before minutes of export
    model_dir, source = ensure_serving_model()
    home = _home()
    print(f"starting vLLM on {args.host}:{args.port} (35-60 s on 2 cores; log in {home / 'servers'})", flush=True)
    report = launcher.start(model_dir, served_name(source), home, args.host, args.port, args.max_model_len, args.timeout)
    _print_report(report)
    print(f"{report['url']}/v1")
    return 0


def run_down(args) -> int:
    from ruv_assets.serving import launcher

    records = launcher.launched(_home())
    if args.port is not None:
        records = [r for r in records if r.name.endswith(f"-{args.port}.launch.json")]
    if not records:
        print("no server started by `ruv serve up` for this RUV_HOME")
        return 0
    for record in records:
        ran = launcher.stop_record(record)
        print(f"{'stopped' if ran else 'was not running:'} {record.name.removesuffix('.launch.json')}")
    return 0


def run_status(args) -> int:
    from ruv_assets.serving import servers

    found = servers.registered(_home())
    if not found:
        print("no server follows this RUV_HOME (ruv serve up starts one)")
        return 0
    for server in found:
        try:
            _print_report(servers.slots_report(server))
        except servers.Unreachable as exc:
            print(f"{server.url}: unreachable ({exc}); registered in {server.registration}")
    return 0
