"""Fixtures of the browser test: a `dagster dev` server on a free loopback port, a GraphQL helper and
a headless Chromium driven over the DevTools protocol. Everything started here is stopped here,
also when a test fails. See docs/ui-test.md."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOCATION_NAME = "ruv_assets"  # workspace.yaml
SERVER_START_TIMEOUT = 120.0
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, n: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def stop_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the process group (started with start_new_session), then SIGKILL what is left."""
    pgid = proc.pid  # session leader: its pid is the group id
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    try:  # children (webserver, daemon, code server, run workers) that outlived the leader
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


class GraphQLError(AssertionError):
    pass


@dataclass
class DagsterUI:
    url: str
    dagster_home: Path
    ruv_home: Path
    log: Path

    def gql(self, query: str, variables: dict | None = None, timeout: float = 60.0) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.load(response)
        if payload.get("errors"):
            raise GraphQLError(f"GraphQL errors: {json.dumps(payload['errors'], indent=1)[:3000]}")
        return payload["data"]


def _wait_until_loaded(ui: DagsterUI, proc: subprocess.Popen) -> None:
    """Bounded wait: the webserver answers and the code location has loaded (or failed to)."""
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"`dagster dev` exited with {proc.returncode} before serving:\n{log_tail(ui.log)}")
        try:
            data = ui.gql("""{ workspaceOrError { __typename
                ... on Workspace { locationEntries { name loadStatus
                    locationOrLoadError { __typename ... on PythonError { message } } } }
                ... on PythonError { message } } }""", timeout=5)
            entries = {e["name"]: e for e in data["workspaceOrError"].get("locationEntries", [])}
            entry = entries.get(LOCATION_NAME)
            if entry and entry["loadStatus"] == "LOADED":
                error = entry["locationOrLoadError"]
                if error and error["__typename"] == "PythonError":
                    pytest.fail(f"code location {LOCATION_NAME} failed to load:\n{error['message']}")
                return
            last = f"workspace: {data}"
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, GraphQLError) as exc:
            last = repr(exc)
        time.sleep(0.5)
    pytest.fail(f"Dagster UI not ready after {SERVER_START_TIMEOUT:.0f}s ({last}):\n{log_tail(ui.log)}")


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory) -> DagsterUI:
    """`dagster dev` (webserver + daemon: the instance's QueuedRunCoordinator needs the daemon to
    start launched runs) with a fresh DAGSTER_HOME holding the shipped dagster.yaml, a fresh
    RUV_HOME and the repository's Numba cache. The whole process group is stopped on teardown."""
    root = tmp_path_factory.mktemp("ui")
    dagster_home, ruv_home = root / "dagster_home", root / "ruv"
    dagster_home.mkdir()
    shutil.copy(REPO / "dagster_home" / "dagster.yaml", dagster_home / "dagster.yaml")
    dagster = Path(sys.executable).with_name("dagster")
    if not dagster.exists():
        pytest.fail(f"{dagster} not found: install the project into the venv (make install)")
    port = free_port()
    # The daemon's catalogue_sensor builds the whole catalogue in the background: a small geometry
    # keeps that quick. The partitions exist before the server starts, so a run can be launched at once.
    env = dict(os.environ, DAGSTER_HOME=str(dagster_home), RUV_HOME=str(ruv_home), PYTHONUNBUFFERED="1",
               NUMBA_CACHE_DIR=os.environ.get("NUMBA_CACHE_DIR", str(REPO / ".numba_cache")),
               RUV_HIDDEN_SIZE="64", RUV_INTERMEDIATE_SIZE="128", RUV_NUM_LAYERS="1")
    subprocess.run([str(Path(sys.executable).with_name("ruv")), "run-all", "--sync-only"], env=env, check=True,
                   capture_output=True, timeout=120)
    ui = DagsterUI(f"http://127.0.0.1:{port}", dagster_home, ruv_home, root / "dagster-dev.log")
    with open(ui.log, "wb") as log:
        proc = subprocess.Popen(
            [str(dagster), "dev", "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        _wait_until_loaded(ui, proc)
        yield ui
    finally:
        stop_group(proc)


class Browser:
    """Headless Chromium with one page, driven over the DevTools protocol (`websockets`, which
    dagster-webserver already depends on through uvicorn[standard])."""

    def __init__(self, profile: Path, width: int, height: int, log: Path):
        binary = shutil.which("chromium")
        if binary is None:
            pytest.fail("chromium is not installed: run `bash scripts/test-deps.sh` (as root it installs "
                        "Debian's chromium package; `make test` runs it first)")
        try:
            from websockets.sync.client import connect
        except ImportError as exc:  # pragma: no cover - dagster-webserver pulls it in
            pytest.fail(f"the `websockets` package (a dagster-webserver dependency) is missing: {exc}")
        self.width, self.height, self.log = width, height, log
        shutil.rmtree(profile, ignore_errors=True)  # a fresh profile, and no stale DevToolsActivePort
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        try:
            port = self._devtools_port(profile / "DevToolsActivePort")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
                pages = [t for t in json.load(response) if t["type"] == "page"]
            self._connection = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
            self.ws = self._connection.__enter__()
        except BaseException:
            stop_group(self.proc, grace=5)
            raise
        self._next_id = 0
        self.call("Page.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def _devtools_port(self, active_port: Path, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"chromium exited with {self.proc.returncode}:\n{log_tail(self.log)}")
            try:
                return int(active_port.read_text().split()[0])
            except (OSError, IndexError, ValueError):
                time.sleep(0.1)
        pytest.fail(f"chromium opened no DevTools port in {timeout:.0f}s:\n{log_tail(self.log)}")

    def call(self, method: str, timeout: float = 30.0, **params) -> dict:
        self._next_id += 1
        ident = self._next_id
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            message = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == ident:  # skip events and stale answers
                if "error" in message:
                    raise RuntimeError(f"DevTools {method}: {message['error']}")
                return message.get("result", {})

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self._connection.__exit__(None, None, None)
        except Exception:
            pass
        stop_group(self.proc, grace=5)


@contextlib.contextmanager
def open_browser(tmp_path: Path, width: int = 1600, height: int = 1000):
    """A context manager rather than a fixture, so a missing chromium is a test failure, not an error."""
    b = Browser(tmp_path / "chromium-profile", width, height, tmp_path / "chromium.log")
    try:
        yield b
    finally:
        b.close()
