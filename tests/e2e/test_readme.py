"""The README's quick start and CLI section, run as a newcomer types them: a fresh clone, nothing
installed, a fresh instance, the commands taken from the README itself (so it cannot drift from
what is tested), in the order written. Three are not run here, each for a stated reason."""

from __future__ import annotations

import os
import re
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import free_port, log_tail, stop_group

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("## Quick start", "## Materialising from the CLI")
NOT_RUN = {  # command -> why this test does not run it
    "make test": "it is this suite",
    "make demo": "45 min on 2 cores; its steps are tests/realmodel's",
    "make cluster && make cluster-run && make cluster-down": "tests/cluster runs the same script, from a private temporary directory",
}
SERVES = {"make ui"}  # runs until stopped: started, asked for its server info, stopped


def readme_commands(text: str) -> list[str]:
    """Every command line of the bash blocks of SECTIONS, comments stripped, in order."""
    commands = []
    for heading in SECTIONS:
        start = text.index(heading + "\n")
        end = text.find("\n## ", start + len(heading))
        section = text[start:end if end > 0 else None]
        for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
            for line in block.splitlines():
                line = re.sub(r"(^|\s+)#\s.*$", "", line).strip()
                if line:
                    commands.append(line)
    return commands


def test_the_readme_lists_the_commands_this_test_runs():
    commands = readme_commands((REPO / "README.md").read_text())
    assert commands[0] == "make run"
    assert set(NOT_RUN) <= set(commands), "a command this test skips is no longer in the README: update NOT_RUN"
    assert any(c.startswith(".venv/bin/ruv materialize") for c in commands)


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A clone of the committed tree, as `git clone` gives it (no .venv, no caches, no instance)."""
    dest = tmp_path_factory.mktemp("newcomer") / "ruv-assets"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(dest)], check=True, timeout=300)
    return dest


def newcomer_env() -> dict[str, str]:
    """The environment of a shell that has never seen the project: none of its variables, no venv."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RUV_", "DAGSTER_", "NUMBA_", "VIRTUAL_ENV", "PYTEST", "UI_PORT"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if "/.venv" not in p)
    return env


@pytest.mark.slow
@pytest.mark.e2e
def test_the_readme_as_a_newcomer_types_it(clone):
    commands = readme_commands((clone / "README.md").read_text())
    env = newcomer_env()
    exports: list[str] = []  # `export X=...` lines hold for the commands after them, as in one shell
    ran = []
    for command in commands:
        if command in NOT_RUN:
            continue
        script = "\n".join(["set -euo pipefail", *exports, command])
        if command in SERVES:
            check_serves(clone, env, script)
        else:
            started = time.monotonic()
            done = subprocess.run(["bash", "-c", script], cwd=clone, env=env, capture_output=True, text=True, timeout=1800)
            assert done.returncode == 0, f"`{command}` exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            print(f"{time.monotonic() - started:6.1f} s  {command}")
            check_outcome(clone, command, done.stdout + done.stderr)
        if command.startswith("export "):
            exports.append(command)
        ran.append(command)
    assert "make run" in ran and "make ui" in ran and len(ran) >= 8


def check_outcome(clone: Path, command: str, output: str) -> None:
    """What the command was for is there, not only its exit status."""
    store = clone / ".ruv"
    if command in ("make run", ".venv/bin/ruv run-all"):
        assert re.search(r"built \d+ runs", output), output[-2000:]
        slots = sorted(p.parent.name for p in (store / "slots").glob("*/active"))
        assert {"coder", "reviewer", "multi_agent"} <= set(slots), slots
    elif command.startswith(".venv/bin/ruv materialize"):
        assert "RUN_SUCCESS" in output, output[-2000:]
        asset = re.search(r"--select '?([a-z_,]+)", command).group(1).split(",")[-1]
        partition = command.split("--partition ")[1].split()[0]
        assert list((store / asset / partition).glob("*/adapter_model.safetensors")), f"no {asset}[{partition}] in the store"
    elif command.startswith(".venv/bin/dagster job execute"):
        assert "RUN_SUCCESS" in output, output[-2000:]


def check_serves(clone: Path, env: dict[str, str], script: str) -> None:
    """`make ui`: the webserver answers on its port, then it and its daemon stop."""
    port = free_port()
    log = clone / "make-ui.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(["bash", "-c", script], cwd=clone, env=dict(env, UI_PORT=str(port)), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, f"make ui exited {proc.returncode}:\n{log_tail(log)}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5) as response:
                    assert response.status == 200
                    assert b"dagster_webserver_version" in response.read()
                    break
            except OSError:
                assert time.monotonic() < deadline, f"make ui did not answer on {port} in 180 s:\n{log_tail(log)}"
                time.sleep(1)
    finally:
        stop_group(proc)
