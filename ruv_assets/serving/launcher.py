"""Starting and stopping the vLLM server that follows the slots (`ruv serve up|down`).

The server runs from vLLM's own environment (`.venv-serve`, `scripts/serve-deps.sh`) in a session
of its own, so `down` can stop the whole process group it started and nothing else; what it
started is recorded in `<RUV_HOME>/servers/<host>-<port>.launch.json` (the log beside it).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from ruv_assets.cli import UserError
from ruv_assets.serving import servers

PROJECT = Path(__file__).resolve().parents[2]
MAX_LORA_RANK = 64  # the composites come out at the summed rank (code_review 24, multi_agent 60): served as they are
START_TIMEOUT = 900.0


def serve_venv() -> Path:
    return Path(os.environ.get("RUV_SERVE_VENV") or PROJECT / ".venv-serve")


def serve_python() -> Path:
    python = serve_venv() / "bin" / "python"
    if not python.exists():
        raise UserError(f"vLLM's environment {serve_venv()} is missing: run `bash scripts/serve-deps.sh` (make serve does)")
    return python


def port_free(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def launch_record(home: Path, host: str, port: int) -> Path:
    return servers.servers_dir(home) / f"{host}-{port}.launch.json"


def command(model_dir: Path, name: str, host: str, port: int, max_model_len: int) -> list[str]:
    return [str(serve_python()), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--served-model-name", name, "--enable-lora", "--max-lora-rank", str(MAX_LORA_RANK), "--max-loras", "4",
            "--max-cpu-loras", "32", "--enforce-eager", "--dtype", "float32", "--max-model-len", str(max_model_len),
            "--host", host, "--port", str(port), "--disable-uvicorn-access-log"]


def environment(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHONPATH", "NUMBA_"))}
    env.update({"VLLM_PLUGINS": "ruv", "RUV_HOME": str(home), "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
                "DO_NOT_TRACK": "1", "VLLM_CPU_KVCACHE_SPACE": env.get("VLLM_CPU_KVCACHE_SPACE", "1"),
                "PATH": f"{serve_venv() / 'bin'}:{env.get('PATH', '')}"})
    return env


def start(model_dir: Path, name: str, home: Path, host: str = "127.0.0.1", port: int = 8000, max_model_len: int = 2048,
          timeout: float = START_TIMEOUT, log=print) -> dict:
    """Start the server and wait until it answers with every slot loaded; returns its slots report."""
    home = home.resolve()
    record = launch_record(home, host, port)
    if record.exists():
        known = json.loads(record.read_text())
        if _alive(known.get("pgid")):
            raise UserError(f"a server this project started is already running on {host}:{port} (pid {known['pid']}); "
                            "`ruv serve down` stops it")
        record.unlink()
    if not port_free(host, port):
        raise UserError(f"{host}:{port} is in use by another program: pass --port")
    servers.servers_dir(home).mkdir(parents=True, exist_ok=True)
    logfile = servers.servers_dir(home) / f"{host}-{port}.log"
    with open(logfile, "wb") as out:
        process = subprocess.Popen(command(model_dir, name, host, port, max_model_len), env=environment(home), cwd=str(home),
                                   stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    record.write_text(json.dumps({"pid": process.pid, "pgid": process.pid, "host": host, "port": port, "log": str(logfile),
                                  "model_dir": str(model_dir), "name": name, "started_at": time.time()}, indent=1) + "\n")
    url = f"http://{host}:{port}"
    began = time.monotonic()
    while True:
        if process.poll() is not None:
            record.unlink(missing_ok=True)
            raise UserError(f"the server exited with status {process.returncode} while starting: {_last_line(logfile)} (log: {logfile})")
        try:
            return servers.slots_report(servers.Server(url, record), timeout=2.0)
        except servers.Unreachable:
            pass
        if time.monotonic() - began > timeout:
            stop_record(record)
            raise UserError(f"the server did not answer within {timeout:.0f} s: {_last_line(logfile)} (log: {logfile})")
        time.sleep(1.0)


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1].strip()[:300] if lines else "(empty log)"


def _alive(pgid) -> bool:
    if not isinstance(pgid, int):
        return False
    try:  # our own child (started by this process): reap it, or a zombie leader counts as alive forever
        os.waitpid(pgid, os.WNOHANG)
    except ChildProcessError:
        pass
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def stop_record(record: Path, grace: float = 30.0) -> bool:
    """Stop the process group a launch record names (TERM, then KILL after `grace`); True if it ran."""
    try:
        known = json.loads(record.read_text())
    except (OSError, ValueError):
        return False
    pgid = known.get("pgid")
    ran = _alive(pgid)
    if ran:
        os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
            deadline = time.monotonic() + grace
            while _alive(pgid) and time.monotonic() < deadline:
                time.sleep(0.1)
        # a vLLM worker can stay in the kernel's exit path after SIGKILL (seen here: state R, no memory
        # map, parent gone); the server (the port's owner) is gone by then, so the wait is bounded
    # its registration, if the plugin could not remove it (killed)
    registration = record.with_name(record.name.replace(".launch.json", ".json"))
    try:
        if json.loads(registration.read_text()).get("pid") in (known.get("pid"), None) or not ran:
            registration.unlink()
    except (OSError, ValueError):
        pass
    record.unlink(missing_ok=True)
    return ran


def launched(home: Path) -> list[Path]:
    directory = servers.servers_dir(home)
    return sorted(directory.glob("*.launch.json")) if directory.is_dir() else []
