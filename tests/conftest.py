"""Shared fixtures: tiny random models saved to a temp dir (no hub), offline settings."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def tiny_vilt_dir(tmp_path_factory) -> Path:
    from testkit.tiny_vilt import make_tiny_vilt

    return make_tiny_vilt(tmp_path_factory.mktemp("tiny_vilt"))


@pytest.fixture(scope="session")
def tiny_vilt(tiny_vilt_dir):
    from adapters.vilt import ViltAdapter

    return ViltAdapter.load(str(tiny_vilt_dir))


@pytest.fixture
def rgb_image():
    from PIL import Image

    rng = np.random.RandomState(0)
    return Image.fromarray((rng.rand(40, 56, 3) * 255).astype(np.uint8))


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, tiny_vilt_dir):
    """A store with 6 easy-VQA test examples recorded by the tiny random ViLT (run 'tiny')."""
    from adapters.vilt import ViltAdapter
    from pipeline.record import limited, record_examples
    from sources.easyvqa import EasyVQA
    from store.zarr_store import VLStore

    path = tmp_path_factory.mktemp("stores") / "tiny.zarr"
    store = VLStore(path, mode="a")
    adapter = ViltAdapter.load(str(tiny_vilt_dir))
    record_examples(adapter, limited(iter(EasyVQA("test")), 6), store, "tiny", total=6, progress=False)
    return path
