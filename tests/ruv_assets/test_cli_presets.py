"""`ruv presets`: the table and the JSON, in-process and through the installed executable."""

import json
import shutil
import subprocess

from ruv_assets.cli import main


def test_table(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["name", "rank", "alpha", "dropout", "targets", "tags", "params", "memory"]
    coder = next(line for line in lines if line.startswith("coder"))
    assert coder.split() == ["coder", "16", "32", "0.05", "q,k,v,o", "code-gen,refactoring,syntax", "196,608", "768.0", "KiB"]
    assert "hidden 768, intermediate 3072, 2 layers" in out


def test_json_and_tag(capsys):
    assert main(["presets", "--json", "--tag", "audit"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [a["name"] for a in data["adapters"]] == ["security"]
    assert data["adapters"][0]["params"] == 565248 and data["adapters"][0]["memory_bytes"] == 4 * 565248


def test_installed_executable_and_bad_catalogue(tmp_path):
    ruv = shutil.which("ruv") or str(__import__("pathlib").Path(__import__("sys").executable).with_name("ruv"))
    ok = subprocess.run([ruv, "presets", "--json"], capture_output=True, text=True, check=True)
    assert len(json.loads(ok.stdout)["adapters"]) == 5
    bad = tmp_path / "c.yaml"
    bad.write_text("adapters:\n  - {name: z, rank: -1, alpha: 1, target_modules: [q]}\n")
    res = subprocess.run([ruv, "presets"], capture_output=True, text=True, env={**__import__("os").environ, "RUV_CATALOGUE": str(bad)})
    assert res.returncode != 0
    assert "adapters[z]: rank" in res.stderr
