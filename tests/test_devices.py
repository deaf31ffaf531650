"""--device: "auto" takes a GPU only when one is visible; a missing GPU is a one-line error; captured
maps come back as CPU float16 whatever the device (the resolution logic is tested with torch's
availability checks monkeypatched: these machines have no GPU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from adapters.loading import resolve_device
from core.errors import AdapterError


@pytest.fixture
def gpus(monkeypatch):
    """Pretend the machine has ``cuda`` CUDA GPUs and (or) Apple's MPS backend."""
    def set_(cuda: int = 0, mps: bool = False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    return set_


@pytest.mark.parametrize("cuda, mps, expected", [(0, False, "cpu"), (1, False, "cuda"), (0, True, "mps"),
                                                 (2, True, "cuda")])
def test_auto_takes_a_gpu_when_one_is_visible(gpus, cuda, mps, expected):
    gpus(cuda=cuda, mps=mps)
    assert resolve_device("auto") == expected
    assert resolve_device(None) == expected
    assert resolve_device(" Auto ") == expected


def test_explicit_devices(gpus):
    gpus(cuda=2, mps=True)
    assert [resolve_device(d) for d in ("cpu", "CUDA", "cuda:1", "mps")] == ["cpu", "cuda", "cuda:1", "mps"]


@pytest.mark.parametrize("device, message", [("cuda", "no CUDA GPU"), ("cuda:0", "no CUDA GPU"), ("mps", "MPS"),
                                             ("tpu", "unknown device"), ("cpu:1", "unknown device"),
                                             ("cuda:x", "unknown device")])
def test_missing_or_unknown_devices_are_one_line_errors(gpus, device, message):
    gpus(cuda=0, mps=False)
    with pytest.raises(AdapterError, match=message) as e:
        resolve_device(device)
    assert "\n" not in str(e.value)


def test_cuda_index_past_the_last_gpu(gpus):
    gpus(cuda=1)
    with pytest.raises(AdapterError, match="1 CUDA GPU"):
        resolve_device("cuda:1")


def test_adapters_load_on_the_resolved_device(tiny_vilt_dir, gpus):
    from adapters.vilt import ViltAdapter

    gpus(cuda=0)
    adapter = ViltAdapter.load(str(tiny_vilt_dir), device="auto")
    assert adapter.device == "cpu" and next(adapter.model.parameters()).device.type == "cpu"
    with pytest.raises(AdapterError, match="no CUDA GPU"):
        ViltAdapter.load(str(tiny_vilt_dir), device="cuda")


def test_cli_device_flag_reaches_the_adapter(tiny_vilt_dir, tmp_path, capsys, gpus):
    from PIL import Image

    from cli import main

    gpus(cuda=0)
    img = tmp_path / "a.png"
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(img)
    args = ["attribute", "--model", f"vilt:{tiny_vilt_dir}", "--image", str(img), "--question", "what color?",
            "--method", "attention", "--out", str(tmp_path / "a.npz")]
    assert main(args + ["--device", "cuda"]) != 0
    err = capsys.readouterr().err
    assert "no CUDA GPU" in err and "Traceback" not in err
    assert main(args + ["--device", "cpu"]) == 0


def test_lxmert_offloaded_capture_is_the_float16_of_the_maps(tmp_path):
    """Offloading as captured changes where the maps live, not what the Record holds."""
    from testkit.tiny_lxmert import make_tiny_adapter

    adapter, image = make_tiny_adapter(tmp_path)
    _, _, inputs, _, _, _ = adapter._encode(image, "what color is the shape?", None)
    kwargs = adapter._model_kwargs(inputs)
    with torch.no_grad(), adapter._capture() as full:
        adapter.model(**kwargs)
    with torch.no_grad(), adapter._capture(offload=True) as off:
        adapter.model(**kwargs)
    for kind, maps in full["attention"].items():
        for ref, ours in zip(maps, off["attention"][kind]):
            assert ours.dtype == torch.float16 and ours.device.type == "cpu"
            torch.testing.assert_close(ours, ref.to(torch.float16), rtol=0, atol=0)


def test_the_device_setting_decides_what_auto_means(gpus, monkeypatch):
    """VL_LENS_DEVICE (the app's setting; bench --device sets it) overrides auto; explicit devices stay."""
    from adapters.loading import DEVICE_ENV

    gpus(cuda=1)
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert resolve_device("auto") == "cpu" and resolve_device(None) == "cpu"
    assert resolve_device("cuda") == "cuda"
    monkeypatch.setenv(DEVICE_ENV, "auto")
    assert resolve_device("auto") == "cuda"
    gpus(cuda=0)
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    with pytest.raises(AdapterError, match="VL_LENS_DEVICE: .*no CUDA GPU"):
        resolve_device("auto")


def test_bench_device_flag_sets_the_setting(monkeypatch):
    import argparse
    import os

    from adapters.loading import DEVICE_ENV
    from commands import bench

    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    args = p.parse_args(["--device", "cpu", "--only", "nonexistent"])
    monkeypatch.setenv(DEVICE_ENV, "auto")  # restored (unset) after the test
    with pytest.raises(ValueError, match="unknown benchmark"):
        bench.run(args)
    assert os.environ[DEVICE_ENV] == "cpu"
