"""A run's provenance says where the weights came from: the hub id and the commit the files were
resolved at, or the local directory (whose content hash the store adds)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from adapters.loading import checkpoint_info

ROOT = Path(__file__).resolve().parent.parent
REVISION = "0123456789abcdef0123456789abcdef01234567"


def test_checkpoint_info_of_hub_and_local_sources(tmp_path):
    assert checkpoint_info("org/model", False, SimpleNamespace(_commit_hash=REVISION)) == \
        {"kind": "hub", "id": "org/model", "revision": REVISION}
    assert checkpoint_info("org/model", False, SimpleNamespace()) == {"kind": "hub", "id": "org/model",
                                                                      "revision": None}
    assert checkpoint_info(str(tmp_path), True) == {"kind": "local", "path": str(tmp_path.resolve())}


def test_local_checkpoints_name_their_directory(tiny_vilt_dir, tmp_path):
    from testkit.tiny_kdvlp import make_tiny_adapter as tiny_kdvlp
    from testkit.tiny_lxmert import make_tiny_adapter as tiny_lxmert

    from adapters.vilt import ViltAdapter

    adapters = [ViltAdapter.load(str(tiny_vilt_dir)), tiny_lxmert(tmp_path / "l")[0], tiny_kdvlp(tmp_path / "k")[0]]
    for adapter, path in zip(adapters, [tiny_vilt_dir, tmp_path / "l" / "lxmert", tmp_path / "k" / "kdvlp"]):
        assert adapter.provenance()["checkpoint"] == {"kind": "local", "path": str(Path(path).resolve())}


def test_a_hub_model_read_offline_from_the_cache_records_its_commit(tiny_vilt_dir, tmp_path):
    """The hub's cache layout (models--ORG--NAME/snapshots/COMMIT, refs/main), read with the hub offline:
    the adapter loads by hub id and its provenance carries the commit."""
    repo = tmp_path / "hub" / "models--vl-lens--tiny-vilt"
    shutil.copytree(tiny_vilt_dir, repo / "snapshots" / REVISION)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    script = ("import json; from adapters.vilt import ViltAdapter; "
              "print(json.dumps(ViltAdapter.load('vl-lens/tiny-vilt').provenance()['checkpoint']))")
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"), PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"kind": "hub", "id": "vl-lens/tiny-vilt",
                                                               "revision": REVISION}
