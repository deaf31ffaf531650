"""Bad input gives one clear InputError and nothing else: images, questions, and the source tree.

Images go through sources/images.py ``decode_image`` (what the Ask page runs on an upload);
questions through the ViLT adapter (tiny random model from tests/tiny_vilt.py).
"""
from __future__ import annotations

import io
import json
import re
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from core.errors import InputError
from sources.images import MAX_PIXELS, WORK_SIDE, decode_image

ROOT = Path(__file__).resolve().parent.parent


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_with_declared_size(width: int, height: int) -> bytes:
    """A valid-looking PNG whose IHDR declares width x height but whose data is one tiny row."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    idat = zlib.compress(b"\x00" + b"\x00" * 3)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


# ---- files that are not (whole) images ------------------------------------------------------------
def test_text_file_is_not_an_image():
    with pytest.raises(InputError, match="not an image"):
        decode_image(b"question,answer\nwhat color?,red\n", name="data.csv")


def test_empty_file():
    with pytest.raises(InputError, match="empty"):
        decode_image(b"", name="empty.png")


def test_not_bytes():
    with pytest.raises(InputError, match="bytes"):
        decode_image("a path, not bytes")  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_fails_instead_of_grey_padding(fmt):
    rng = np.random.RandomState(0)
    data = encode(Image.fromarray((rng.rand(64, 64, 3) * 255).astype(np.uint8)), fmt)
    assert decode_image(data).size == (64, 64)  # the whole file decodes
    with pytest.raises(InputError, match="damaged or truncated"):
        decode_image(data[: len(data) // 2], name=f"cut.{fmt.lower()}")


def test_format_outside_the_accepted_list_is_named():
    data = encode(Image.new("RGB", (8, 8)), "PPM")
    with pytest.raises(InputError, match="PPM image; accepted: PNG, JPEG"):
        decode_image(data)


# ---- decompression bombs: refused from the header, before any pixel is decoded --------------------
@pytest.mark.parametrize("width,height", [(12_000, 12_000), (100_000, 100_000), (2**31 - 1, 1)])
def test_decompression_bomb_refused_from_header(width, height):
    import time

    data = png_with_declared_size(width, height)
    assert len(data) < 100  # tiny file, huge declared image
    t0 = time.perf_counter()
    with pytest.raises(InputError, match="MP|too many pixels"):
        decode_image(data, name="bomb.png")
    assert time.perf_counter() - t0 < 1.0  # refused from the header, nothing was allocated


def test_patched_size_field_of_a_real_png():
    """A PIL-saved PNG whose IHDR size was patched (CRC fixed up): refused, not decoded."""
    data = bytearray(encode(Image.new("RGB", (4, 4), (1, 2, 3)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", 50_000, 50_000)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    with pytest.raises(InputError, match=f"limit is {MAX_PIXELS / 1e6:.0f} MP|too many pixels"):
        decode_image(bytes(data))


# ---- every mode becomes RGB with the right pixel values -------------------------------------------
def rgb_array(data: bytes) -> np.ndarray:
    im = decode_image(data)
    assert im.mode == "RGB"
    return np.asarray(im)


def test_rgba_is_composited_on_white():
    px = np.zeros((2, 3, 4), np.uint8)
    px[0, 0] = (255, 0, 0, 255)  # opaque red
    px[0, 1] = (255, 0, 0, 0)  # fully transparent red -> white
    px[0, 2] = (0, 0, 255, 128)  # half-transparent blue -> light blue
    px[1, :] = (0, 0, 0, 255)
    out = rgb_array(encode(Image.fromarray(px, "RGBA"), "PNG"))
    assert tuple(out[0, 0]) == (255, 0, 0)
    assert tuple(out[0, 1]) == (255, 255, 255)
    np.testing.assert_allclose(out[0, 2], (127, 127, 255), atol=1)
    assert tuple(out[1, 0]) == (0, 0, 0)


def test_palette_image_and_palette_transparency():
    pal = Image.new("P", (4, 2))
    pal.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    pal.putpixel((1, 0), 1)
    out = rgb_array(encode(pal, "PNG"))
    assert tuple(out[0, 0]) == (10, 20, 30) and tuple(out[0, 1]) == (200, 100, 50)
    out_t = rgb_array(encode(pal, "PNG", transparency=0))  # palette index 0 transparent -> white
    assert tuple(out_t[0, 0]) == (255, 255, 255) and tuple(out_t[0, 1]) == (200, 100, 50)
    out_g = rgb_array(encode(pal, "GIF"))
    assert tuple(out_g[0, 1]) == (200, 100, 50)


def test_grayscale_and_gray_alpha_and_bilevel():
    out = rgb_array(encode(Image.new("L", (3, 3), 100), "PNG"))
    assert (out == 100).all()
    la = np.zeros((1, 2, 2), np.uint8)
    la[0, 0] = (0, 255)
    la[0, 1] = (0, 0)
    out = rgb_array(encode(Image.fromarray(la, "LA"), "PNG"))
    assert tuple(out[0, 0]) == (0, 0, 0) and tuple(out[0, 1]) == (255, 255, 255)
    bw = Image.new("1", (2, 1), 0)
    bw.putpixel((1, 0), 1)
    out = rgb_array(encode(bw, "PNG"))
    assert tuple(out[0, 0]) == (0, 0, 0) and tuple(out[0, 1]) == (255, 255, 255)


def test_sixteen_bit_is_scaled_by_bit_depth_not_stretched():
    a = np.array([[0, 32896, 65535]], np.uint16)
    out = rgb_array(encode(Image.fromarray(a), "PNG"))
    assert out[0, :, 0].tolist() == [0, 128, 255]
    # a flat 16-bit mid-grey stays mid-grey (a per-image stretch would turn it black)
    flat = rgb_array(encode(Image.fromarray(np.full((2, 2), 32896, np.uint16)), "PNG"))
    assert (flat == 128).all()
    tif = rgb_array(encode(Image.fromarray(a), "TIFF"))
    assert tif[0, :, 0].tolist() == [0, 128, 255]


@pytest.mark.parametrize("fmt,tol", [("TIFF", 0), ("JPEG", 12)])
def test_cmyk(fmt, tol):
    im = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red in CMYK
    out = rgb_array(encode(im, fmt))
    np.testing.assert_allclose(out.reshape(-1, 3).mean(0), (255, 0, 0), atol=tol + 1e-9)


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (40, 20), (0, 200, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = decode_image(encode(im, "JPEG", exif=exif.tobytes()))
    assert out.size == (20, 40)


def test_animated_gif_gives_its_first_frame():
    frames = [Image.new("P", (4, 4), i) for i in range(3)]
    for i, f in enumerate(frames):
        f.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=10)
    out = rgb_array(buf.getvalue())
    assert (out == 0).all()  # frame 0 is palette index 0 = black


def test_large_image_is_reduced_to_work_side_keeping_aspect():
    im = Image.new("RGB", (WORK_SIDE * 2 + 100, 1000), (10, 20, 30))
    out = decode_image(encode(im, "PNG"))
    assert max(out.size) == WORK_SIDE
    assert abs(out.size[0] / out.size[1] - im.size[0] / im.size[1]) < 0.01
    assert np.asarray(out)[5, 5].tolist() == [10, 20, 30]


# ---- a 100-megapixel image decodes with bounded memory ---------------------------------------------
PEAK_SCRIPT = textwrap.dedent("""
    import resource, sys, json
    sys.path.insert(0, {root!r})
    from sources.images import decode_image
    data = open({path!r}, "rb").read()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    im = decode_image(data)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({{"size": im.size, "mode": im.mode, "grew_kb": after - before, "peak_kb": after}}))
""")


def _peak(path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT.format(root=str(ROOT), path=str(path))],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _write_gray_png(path: Path, width: int, height: int) -> None:
    """Stream a width x height 8-bit grayscale PNG (a horizontal ramp) without holding it in memory."""
    row = b"\x00" + (np.arange(width) % 256).astype(np.uint8).tobytes()
    comp = zlib.compressobj(1)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)))
        body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
        f.write(png_chunk(b"IDAT", body) + png_chunk(b"IEND", b""))


@pytest.mark.slow
def test_100_megapixel_images_decode_with_bounded_memory(tmp_path):
    side = 10_000  # 100 MP: a full RGB decode alone would be 300 MB
    jpg = tmp_path / "big.jpg"
    subprocess.run([sys.executable, "-c",
                    f"from PIL import Image; Image.new('RGB', ({side}, {side}), (200, 30, 40))"
                    f".save({str(jpg)!r}, 'JPEG', quality=80)"], check=True, timeout=120)
    res = _peak(jpg)
    assert max(res["size"]) == WORK_SIDE and res["mode"] == "RGB"
    # decoded at 1/4 scale (2500 x 2500 x 3 = 19 MB): far below the 300 MB a full decode needs
    assert res["grew_kb"] < 80_000, res

    png = tmp_path / "big.png"
    _write_gray_png(png, side, side)
    res = _peak(png)
    assert max(res["size"]) == WORK_SIDE and res["mode"] == "RGB"
    # PNG has no reduced-scale decoding: the 100 MB grayscale decode is the floor, but it is
    # reduced before conversion, so no 300-400 MB full-size RGB(A) copy is ever made
    assert res["grew_kb"] < 160_000, res


# ---- property-based: decode_image never raises anything but InputError ----------------------------
PREFIXES = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\x00", b"RIFF\x00\x00\x00\x00WEBP"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prefix=st.sampled_from(PREFIXES), body=st.binary(max_size=400))
def test_random_bytes_only_ever_raise_input_error(prefix, body):
    try:
        im = decode_image(prefix + body)
    except InputError as e:
        assert str(e) and "\n" not in str(e)  # one clear line
    else:
        assert im.mode == "RGB" and max(im.size) <= WORK_SIDE


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_valid_images_decode_to_rgb_of_the_same_size(data):
    mode, fmt = data.draw(st.sampled_from([
        ("RGB", "PNG"), ("RGBA", "PNG"), ("L", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("I;16", "PNG"),
        ("1", "PNG"), ("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("CMYK", "TIFF"), ("RGB", "BMP"),
        ("RGB", "WEBP"), ("P", "GIF"), ("RGBA", "TIFF"),
    ]))
    w = data.draw(st.integers(1, 70))
    h = data.draw(st.integers(1, 70))
    seed = data.draw(st.integers(0, 2**16))
    rng = np.random.RandomState(seed)
    bands = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2, "CMYK": 4}
    if mode == "I;16":
        im = Image.fromarray(rng.randint(0, 65536, (h, w)).astype(np.uint16))
    elif mode in ("P", "1"):
        im = Image.fromarray(rng.randint(0, 256, (h, w)).astype(np.uint8), "L").convert(mode)
    else:
        arr = rng.randint(0, 256, (h, w, bands[mode])).astype(np.uint8)
        im = Image.fromarray(arr[..., 0] if mode == "L" else arr, mode)
    out = decode_image(encode(im, fmt))
    assert out.mode == "RGB"
    assert out.size == (w, h)
    if (mode, fmt) == ("RGB", "PNG"):
        assert np.array_equal(np.asarray(out), np.asarray(im))  # lossless stays exact
    if (mode, fmt) == ("L", "PNG"):
        arr = np.asarray(out)
        assert np.array_equal(arr[..., 0], np.asarray(im)) and np.array_equal(arr[..., 0], arr[..., 2])


# ---- questions: empty, too long, only unknown characters ------------------------------------------
@pytest.mark.parametrize("question", ["", "   ", "\n\t"])
def test_empty_question(tiny_vilt, rgb_image, question):
    with pytest.raises(InputError, match="empty"):
        tiny_vilt.run(rgb_image, question)
    with pytest.raises(InputError, match="empty"):
        tiny_vilt.predict(rgb_image, question)


def test_question_over_the_text_limit_is_truncated_with_a_notice(tiny_vilt, rgb_image):
    question = " ".join(["what color is the shape"] * 20)  # about 100 tokens; the tiny model reads 16
    rec = tiny_vilt.run(rgb_image, question)
    assert any("truncated" in n for n in rec.notices), rec.notices
    n_text = sum(1 for m in rec.modality if m != "image") - 1  # minus the image [CLS]
    assert n_text == tiny_vilt.max_text_tokens
    assert rec.tokens[n_text - 1] == "[SEP]"  # the cut keeps the closing special token
    assert rec.question == question  # the record keeps the full question; spans stay inside it
    short = tiny_vilt.run(rgb_image, "what color is the shape?")
    assert not any("truncated" in n for n in short.notices)


@pytest.mark.parametrize("question", ["😀🚀🎉", "ɸ ж ק ㄱ", "🙂 🙃"])
def test_question_of_only_unknown_characters_gives_a_notice(tiny_vilt, rgb_image, question):
    rec = tiny_vilt.run(rgb_image, question)
    assert any("unknown" in n for n in rec.notices), rec.notices
    assert rec.prediction.answers  # still answers
    for kind, block in rec.attention.items():
        np.testing.assert_allclose(block.values.astype(np.float32).sum(-1), 1.0, atol=2e-2)


# ---- the source tree: no unpickling, no remote code ----------------------------------------------
def _python_files():
    skip = {".venv", ".git", "__pycache__", "node_modules", ".hypothesis"}
    for p in ROOT.rglob("*.py"):
        if not skip.intersection(p.relative_to(ROOT).parts):
            yield p


# The one place allowed to mention unpickling: the restricted importer of other tools' formats,
# which only accepts plain containers and numeric arrays.
RESTRICTED_IMPORTER = re.compile(r"pipeline/importers/")
UNPICKLE = re.compile(r"\b(pickle|cPickle|dill|joblib|cloudpickle)\.(load|loads|Unpickler)\b|torch\.load\(")
REMOTE_CODE = re.compile(r"trust_remote_code\s*=\s*True")


def test_no_unpickling_of_user_data_outside_the_restricted_importer():
    this = Path(__file__).resolve()
    offenders = []
    for p in _python_files():
        if p.resolve() == this:
            continue
        rel = p.relative_to(ROOT).as_posix()
        for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if UNPICKLE.search(line) and not RESTRICTED_IMPORTER.match(rel):
                if "torch.load(" in line and "weights_only=True" in line:
                    continue  # torch's restricted loader: tensors and plain containers only
                offenders.append(f"{rel}:{i}: {line.strip()}")
    assert not offenders, "unpickling outside pipeline/importers/:\n" + "\n".join(offenders)


def test_no_model_load_passes_trust_remote_code():
    this = Path(__file__).resolve()
    offenders = [f"{p.relative_to(ROOT)}:{i}"
                 for p in _python_files() if p.resolve() != this
                 for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
                 if REMOTE_CODE.search(line)]
    assert not offenders, offenders


def test_the_scanners_can_fail(tmp_path):
    """The patterns above do catch the lines they are meant to catch."""
    assert UNPICKLE.search("obj = pickle.loads(blob)")
    assert UNPICKLE.search("pickle.Unpickler(f).load()")
    assert UNPICKLE.search("state = torch.load(path)")
    assert not UNPICKLE.search("msgpack.unpackb(raw)")
    assert REMOTE_CODE.search("AutoModel.from_pretrained(x, trust_remote_code = True)")
    assert not REMOTE_CODE.search("trust_remote_code=False")
