"""The app names the weights each run was recorded with (issue 23.5): hub revision or local content hash."""
from __future__ import annotations

from tests.view_records import open_page, single_stream_record, write_store
from ui.state import checkpoint_line

LOCAL = {"checkpoint": {"kind": "local", "path": "/models/my-vilt",
                        "content_hash": "sha256:b84e596e9ac4efcb4461f3c52e3d", "content_hash_rule": "..."}}
HUB = {"checkpoint": {"kind": "hub", "id": "dandelin/vilt-b32-finetuned-vqa",
                      "revision": "d0a1f6ab3a6d6b2c1f5e0e5e1c9b7a4f3e2d1c0b"}}


def test_checkpoint_line_names_hub_revision_and_local_hash():
    assert checkpoint_line(HUB) == "weights: dandelin/vilt-b32-finetuned-vqa @ d0a1f6ab3a6d"
    assert checkpoint_line(LOCAL) == "weights: my-vilt · b84e596e9ac4"
    assert checkpoint_line({"checkpoint": {"kind": "hub", "id": "x/y"}}) == "weights: x/y @ revision unknown"
    assert checkpoint_line({}) is None and checkpoint_line({"checkpoint": "odd"}) is None


def test_sidebar_shows_the_runs_checkpoint(tmp_path, monkeypatch):
    path = write_store(tmp_path / "p.zarr", [single_stream_record()], run="mine", provenance=LOCAL)
    at = open_page(monkeypatch, path, "views/browser.py")
    at.run()
    assert not at.exception, at.exception
    captions = [c.value for c in at.sidebar.caption]
    assert "weights: my-vilt · b84e596e9ac4" in captions, captions
