"""`cli.py attribute`: .npz contents for one image and for a data set; one-line errors for bad input."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli import main

ROOT = Path(__file__).resolve().parent.parent
KEYS = {"region_boxes", "region_scores", "tokens", "token_scores", "target", "probability"}


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("img") / "shape.png"
    arr = np.full((40, 48, 3), 240, np.uint8)
    arr[10:30, 12:30] = (220, 30, 30)
    Image.fromarray(arr).save(p)
    return p


def test_image_ig_writes_npz(tiny_vilt_dir, image_path, tmp_path, capsys):
    out = tmp_path / "a.npz"
    rc = main(["attribute", "--model", f"vilt:{tiny_vilt_dir}", "--image", str(image_path), "--question",
               "what color is the shape?", "--method", "ig", "--steps", "8", "--target", "red rather than blue",
               "--out", str(out)])
    assert rc == 0
    with np.load(out, allow_pickle=False) as z:
        assert KEYS | {"delta", "score_difference"} <= set(z.files)
        r = len(z["region_scores"])
        assert z["region_boxes"].shape == (r, 4) and r > 0
        assert (z["region_boxes"] >= 0).all() and (z["region_boxes"] <= 1).all()
        assert len(z["tokens"]) == len(z["token_scores"]) and "what" in list(z["tokens"])
        assert str(z["target"]) == "red rather than blue" and str(z["method"]) == "ig"
        assert 0 < float(z["probability"]) < 1
        # completeness: the scores add up to the score change, up to the stored delta
        total = z["region_scores"].astype(np.float64).sum() + z["token_scores"].astype(np.float64).sum()
        assert total - float(z["score_difference"]) == pytest.approx(float(z["delta"]), abs=1e-5)
    assert "ig: red rather than blue" in capsys.readouterr().out


def test_dataset_writes_one_file_per_example_and_resumes(tiny_vilt_dir, tmp_path, capsys):
    out = tmp_path / "maps"
    argv = ["attribute", "--model", f"vilt:{tiny_vilt_dir}", "--dataset", "easyvqa", "--split", "test",
            "--limit", "3", "--method", "rollout", "--out", str(out)]
    assert main(argv) == 0
    files = sorted(out.glob("*.npz"))
    assert [f.name for f in files] == ["easyvqa-test-0.npz", "easyvqa-test-1.npz", "easyvqa-test-2.npz"]
    from sources.easyvqa import EasyVQA

    with np.load(files[1], allow_pickle=False) as z:
        assert KEYS <= set(z.files) and "delta" not in z.files
        assert str(z["question"]) == EasyVQA("test")[1].question
        assert str(z["label"]) == EasyVQA("test")[1].label
    assert "3 written" in capsys.readouterr().out
    assert main(argv) == 0
    assert "0 written, 3 already there" in capsys.readouterr().out


@pytest.mark.parametrize("case, message", [
    ("not_image", "is not an image"),
    ("unknown_model", "unknown model"),
    ("unknown_method", "unknown attribution method"),
    ("empty_question", "--question is required"),
    ("unknown_target", "unknown answer"),
    ("steps_without_ig", "--steps applies to --method ig only"),
])
def test_bad_input_is_one_clear_line(case, message, tiny_vilt_dir, image_path, tmp_path, capsys):
    model, image, question, method, extra = f"vilt:{tiny_vilt_dir}", str(image_path), "what shape?", "ig", []
    if case == "not_image":
        image = str(tmp_path / "notes.png")
        Path(image).write_text("hello, I am text")
    elif case == "unknown_model":
        model = "gpt-vision"
    elif case == "unknown_method":
        method = "gradcam"
    elif case == "empty_question":
        question = "   "
    elif case == "unknown_target":
        extra = ["--target", "purple"]
    elif case == "steps_without_ig":
        method, extra = "rollout", ["--steps", "5"]
    out = tmp_path / "x.npz"
    rc = main(["attribute", "--model", model, "--image", image, "--question", question, "--method", method,
               "--out", str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert rc != 0
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err
    assert not out.exists()


def test_subprocess_exit_code_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    proc = subprocess.run([sys.executable, "cli.py", "attribute", "--model", "vilt-easyvqa", "--image", str(bad),
                           "--question", "what?", "--method", "nope", "--out", str(tmp_path / "o.npz")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "unknown attribution method" in proc.stderr


DEMO_LXMERT = ROOT / "demo" / "models" / "lxmert-easyvqa"


@pytest.mark.skipif(not (DEMO_LXMERT / "config.json").exists(), reason="demo LXMERT weights are not present")
def test_relevance_on_the_demo_lxmert(image_path, tmp_path, capsys):
    """Issue 19 item 1: the last cross layer's vision-side maps get no gradient; relevance still runs and
    gives a finite map that is not constant, over regions and over words."""
    out = tmp_path / "lx.npz"
    rc = main(["attribute", "--model", "lxmert-easyvqa", "--image", str(image_path), "--question",
               "what color is the shape?", "--method", "relevance", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    with np.load(out, allow_pickle=False) as z:
        assert np.isfinite(z["region_scores"]).all() and np.ptp(z["region_scores"]) > 0
        words = z["token_scores"][~z["token_is_special"]]
        assert np.isfinite(words).all() and np.ptp(words) > 0
        assert any("contribute nothing" in str(n) for n in z["notes"])
