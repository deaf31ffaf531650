"""`cli.py record` / `models`: progress, resume, and one-line errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import cli
from store.zarr_store import VLStore

ROOT = Path(__file__).resolve().parent.parent


def test_record_then_resume(tmp_path, tiny_vilt_dir, capsys):
    out = tmp_path / "s.zarr"
    assert cli.main(["record", "--model", f"vilt:{tiny_vilt_dir}", "--limit", "3", "--out", str(out),
                     "--run", "tiny"]) == 0
    assert "3 written, 0 already there" in capsys.readouterr().out
    assert cli.main(["record", "--model", f"vilt:{tiny_vilt_dir}", "--limit", "5", "--out", str(out),
                     "--run", "tiny"]) == 0
    assert "2 written, 3 already there" in capsys.readouterr().out
    reader = VLStore(out).run("tiny")
    assert len(reader.example_ids()) == 5
    keys = [s.source_key for s in reader.summaries()]
    assert sorted(keys) == sorted(f"easyvqa/test/{i}" for i in range(5))
    prov = reader.provenance
    assert prov["adapter"] == "vilt" and prov["config"]["layers"] == 2 and "torch" in prov["versions"]


@pytest.mark.parametrize("args, message", [
    (["record", "--model", "no-such-model", "--out", "X"], "unknown model 'no-such-model'"),
    (["record", "--model", "vilt:/no/such/dir", "--out", "X"], "does not exist"),
    (["record", "--model", "vilt-easyvqa", "--out", "/no/such/parent/s.zarr"], "does not exist"),
    (["record", "--model", "vilt-easyvqa", "--dataset", "nope", "--out", "OUT"], "unknown data set"),
])
def test_errors_are_one_clear_line(args, message, tmp_path):
    args = [a.replace("OUT", str(tmp_path / "s.zarr")).replace("X", str(tmp_path / "x.zarr")) for a in args]
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True,
                          timeout=120, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert message in err[-1] and "Traceback" not in proc.stderr


def test_unreachable_hub_is_a_clear_error(monkeypatch):
    from core.errors import AdapterError
    from adapters.registry import load_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AdapterError, match="not reachable|cannot load"):
        load_model("vilt:someone/not-a-local-model")


def test_models_lists_registry(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "vilt" in out and "vilt-easyvqa" in out and "single-stream" in out
