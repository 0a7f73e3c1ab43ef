"""`ruv slot ...`: exit codes, output and one-line errors, through `main()` and the installed `ruv`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from ruv_kernels.adapter import AdapterSpec, LoraAdapter
from ruv_resources.peft_format import WEIGHTS_NAME, load_adapter, save_adapter
from ruv_assets.cli import main

SPEC = AdapterSpec(rank=4, alpha=8.0, targets=("q_proj", "v_proj"), hidden_size=32, intermediate_size=64, num_layers=1)


def make_adapter(directory: Path, seq: int, spec: AdapterSpec = SPEC) -> Path:
    adapter = LoraAdapter.initialise(spec, seed=seq)
    for key in adapter.keys():
        adapter.B[key][:] = seq
    directory.mkdir(parents=True, exist_ok=True)
    save_adapter(adapter, directory, metadata={"seq": seq})
    return directory


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def seq_of(directory: Path) -> int:
    return load_adapter(directory).metadata["seq"]


def snapshot(path: Path) -> dict:
    return {str(p.relative_to(path)): (os.readlink(p) if p.is_symlink() else p.stat().st_size if p.is_file() else "d")
            for p in sorted(path.rglob("*")) if p.name != ".lock"}


@pytest.fixture
def slot_dir(tmp_path):
    return tmp_path / "slots" / "coder"


def test_promote_status_history_rollback_gc(capsys, tmp_path, slot_dir):
    code, out, err = run(capsys, "slot", "promote", slot_dir, make_adapter(tmp_path / "a1", 1),
                         "--provenance", "run_id=r1", "--provenance", "partition=coder")
    assert code == 0 and err == "" and "promoted coder: generation 1" in out
    code, out, _ = run(capsys, "slot", "promote", slot_dir, make_adapter(tmp_path / "a2", 2), "--expected-generation", "1", "--json")
    state = json.loads(out)
    assert code == 0 and state["generation"] == 2 and state["standby"].startswith("00000001-")

    code, out, _ = run(capsys, "slot", "status", slot_dir)
    assert code == 0 and "generation  2" in out and f"{state['active']}  (active)" in out
    code, out, _ = run(capsys, "slot", "status", slot_dir, "--json")
    assert json.loads(out)["active"] == state["active"]

    code, out, err = run(capsys, "slot", "rollback", slot_dir, "--expected-generation", "1")
    assert code == 2 and out == ""
    assert err.startswith("ruv slot: error: slot coder is at generation 2, not the expected 1") and err.count("\n") == 1
    code, out, _ = run(capsys, "slot", "rollback", slot_dir, "--expected-generation", "2")
    assert code == 0 and "rolled back coder: generation 3" in out and seq_of(slot_dir / "active") == 1

    code, out, _ = run(capsys, "slot", "history", slot_dir)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 3 and "rollback" in lines[2] and "run_id=r1" in lines[0] and "partition=coder" in lines[0]
    code, out, _ = run(capsys, "slot", "history", slot_dir, "--json", "--limit", "2")
    entries = json.loads(out)
    assert [e["generation"] for e in entries] == [2, 3] and entries[1]["action"] == "rollback"

    for seq in (4, 5, 6):
        assert run(capsys, "slot", "promote", slot_dir, make_adapter(tmp_path / f"a{seq}", seq))[0] == 0
    code, out, _ = run(capsys, "slot", "gc", slot_dir, "--keep", "2", "--json")
    assert code == 0 and len(json.loads(out)["removed"]) == 4
    code, out, _ = run(capsys, "slot", "verify", slot_dir)
    assert code == 0 and "2 version(s), all ok" in out


def test_prepare_only_then_swap(capsys, tmp_path, slot_dir):
    run(capsys, "slot", "promote", slot_dir, make_adapter(tmp_path / "a1", 1))
    code, out, _ = run(capsys, "slot", "promote", slot_dir, make_adapter(tmp_path / "a2", 2), "--prepare-only")
    assert code == 0 and "active unchanged" in out and seq_of(slot_dir / "active") == 1
    code, out, _ = run(capsys, "slot", "swap", slot_dir, "--expected-generation", "1")
    assert code == 0 and "swapped coder: generation 2" in out and seq_of(slot_dir / "active") == 2


def test_verify_exits_non_zero_and_names_the_corrupt_file(capsys, tmp_path, slot_dir):
    run(capsys, "slot", "promote", slot_dir, make_adapter(tmp_path / "a1", 1))
    run(capsys, "slot", "promote", slot_dir, make_adapter(tmp_path / "a2", 2))
    weights = slot_dir / "standby" / WEIGHTS_NAME
    os.chmod(weights, 0o644)
    data = bytearray(weights.read_bytes())
    data[-2] ^= 0x55
    weights.write_bytes(bytes(data))
    code, out, err = run(capsys, "slot", "verify", slot_dir)
    assert code == 1 and "BAD  00000001-" in out and "adapter_model.safetensors: sha256 mismatch" in out
    assert "ruv slot: verify: coder has broken version(s): 00000001-" in err
    code, out, _ = run(capsys, "slot", "verify", slot_dir, "--json")
    report = json.loads(out)
    assert code == 1 and report["ok"] is False and [v["ok"] for v in report["versions"]] == [False, True]
    before = snapshot(slot_dir)
    code, out, err = run(capsys, "slot", "rollback", slot_dir)
    assert code == 2 and "refusing to roll back to 00000001-" in err and "it is corrupt" in err
    assert snapshot(slot_dir) == before and seq_of(slot_dir / "active") == 2


def test_refusals_are_one_line_and_change_nothing(capsys, tmp_path, slot_dir):
    run(capsys, "slot", "promote", slot_dir, make_adapter(tmp_path / "a1", 1))
    before = snapshot(slot_dir)
    nan = make_adapter(tmp_path / "nan", 9)
    tensors = load_file(str(nan / WEIGHTS_NAME))
    name = sorted(tensors)[-1]
    tensors[name] = np.full_like(tensors[name], np.nan)
    save_file(tensors, str(nan / WEIGHTS_NAME), metadata={"format": "pt"})
    wide = make_adapter(tmp_path / "wide", 3, AdapterSpec(4, 8.0, ("q_proj", "v_proj"), 48, 64, 1))
    cases = [
        (("promote", slot_dir, nan), "non-finite values (NaN or inf)"),
        (("promote", slot_dir, wide), "geometry differs from the active version"),
        (("promote", slot_dir, wide, "--hidden-size", "32"), "expected [4, 32]"),
        (("promote", slot_dir, tmp_path / "missing"), "not a directory"),
        (("promote", slot_dir, make_adapter(tmp_path / "a2", 2), "--expected-generation", "5"), "not the expected 5"),
        (("promote", slot_dir, make_adapter(tmp_path / "a3", 2), "--provenance", "nokey"), "KEY=VALUE"),
        (("promote", tmp_path / "slots" / ".hidden", make_adapter(tmp_path / "a4", 2)), "is not a safe name"),
        (("rollback", slot_dir, "--to", "../../etc"), "is not a safe name"),
        (("rollback", slot_dir), "nothing to roll back to"),
        (("status", tmp_path / "slots" / "other"), "no slot at"),
    ]
    for argv, message in cases:
        code, out, err = run(capsys, "slot", *argv)
        assert code == 2, (argv, out, err)
        assert err.startswith("ruv slot: error: ") and message in err and err.count("\n") == 1, (argv, err)
    assert snapshot(slot_dir) == before
    assert not (tmp_path / "slots" / ".hidden").exists() and not (tmp_path / "slots" / "other").exists()
    with pytest.raises(SystemExit) as exc:
        main(["slot", "gc", str(slot_dir), "--keep", "0"])
    assert exc.value.code == 2 and "expected an integer >= 1" in capsys.readouterr().err


def _ruv() -> str:
    candidate = Path(sys.executable).parent / "ruv"
    return str(candidate) if candidate.exists() else shutil.which("ruv")


@pytest.mark.e2e
def test_the_installed_ruv_executable(tmp_path, slot_dir):
    ruv = _ruv()
    assert ruv, "the ruv entry point is not installed"

    def call(*argv):
        return subprocess.run([ruv, "slot", *map(str, argv)], capture_output=True, text=True, timeout=120)

    assert main(["slot", "promote", str(slot_dir), str(make_adapter(tmp_path / "a1", 1))]) == 0
    done = call("promote", slot_dir, make_adapter(tmp_path / "a2", 2), "--provenance", "run_id=r2", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["generation"] == 2 and seq_of(slot_dir / "active") == 2
    done = call("rollback", slot_dir, "--expected-generation", "7")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == "ruv slot: error: slot coder is at generation 2, not the expected 7: another promoter got there first; read the status again and retry"
    weights = slot_dir / "standby" / WEIGHTS_NAME
    os.chmod(weights, 0o644)
    weights.write_bytes(weights.read_bytes()[:-1] + b"!")
    done = call("verify", slot_dir)
    assert done.returncode == 1 and "sha256 mismatch" in done.stdout and "broken version(s): 00000001-" in done.stderr
