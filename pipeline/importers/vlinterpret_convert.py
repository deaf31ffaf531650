"""Convert one VL-InterpreT example (a plain dict, read by pipeline/importers/vlinterpret_db.py) to a Record.

Fixes made on the way in (the imported Record states which token is what):

- Modality rule. VL-InterpreT marks modality by position only (the first ``txt_len`` tokens are
  text), and databases disagree on whether ``txt_len`` counts [CLS]/[SEP]. We decide per token:
  1. the last ``len(img_coords)`` tokens are the image tokens (img_coords has one entry per image
     token, and image tokens follow the text), each placed on its grid cell;
  2. every other token is text, except tokens whose string is a special token
     (``SPECIAL_TOKENS``: [CLS], [SEP], [PAD], [MASK], [IMG], <s>, </s>, <pad>, ...), which are
     "special" wherever they stand;
  3. with no img_coords, ``txt_len`` is the only evidence: tokens from ``txt_len`` on become image
     tokens covering the whole image (grid unknown), with a notice.
  When ``txt_len`` disagrees with the rule, the Record carries a notice with both numbers.
- Geometry. Image token (x, y) covers x in [x/w, (x+1)/w), y in [y/h, (y+1)/h) of the image, with
  (w, h) = img_grid_size, else max(img_coords) + 1. token_grid is (row, col) = (y, x).
- Question. The database keeps no question string; it is rebuilt from the text tokens (WordPiece
  "##" pieces joined to the previous token), and each text token's character span points into it.
- Prediction. The database stores only ``accuracy`` (correct or not), no answer and no
  probability. The Record's prediction is the placeholder ``NO_ANSWER`` with probability 0, and
  the label equals it when the answer was correct and is ``NOT_THE_ANSWER`` when it was not, so
  ``Record.correct`` reproduces ``accuracy`` (None when absent). The original value is kept in
  meta["vlinterpret"]["accuracy"].
- Attention rows that do not sum to 1 (their own example data uses uniform random numbers) are
  renormalized, with a notice giving the largest deviation; negative or non-finite values stop
  the import.
- Hidden states with a token count different from the tokens' (VL-InterpreT's demo dropped stop
  words) cannot be aligned to tokens: they are left out, with a notice.
- custom_metrics are kept in meta["vlinterpret"]["custom_metrics"] and appended to the stored head
  statistics as "custom:<name>" (the names of the first example fix the set; missing ones are NaN).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.errors import RecordError
from pipeline.importers.vlinterpret_db import VLInterpretError
from store.schema import AttentionBlock, HiddenBlock, Prediction, Record

IMPORTER_NAME = "vlinterpret-import"
IMPORTER_VERSION = "1"
HIDDEN_LAST = "as recorded by the tool that wrote the database"
NO_ANSWER = "(answer not in the VL-InterpreT database)"
NOT_THE_ANSWER = "(a different answer; not in the database)"
SPECIAL_TOKENS = frozenset({
    "[CLS]", "[SEP]", "[PAD]", "[MASK]", "[IMG]", "[BOS]", "[EOS]", "<s>", "</s>", "<pad>", "<mask>", "<cls>",
    "<sep>", "<img>", "<image>", "</image>", "<|endoftext|>",
})


def _numeric(value, where: str, name: str, ndim: int | None = None) -> np.ndarray:
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, np.ndarray) for v in value):
        try:
            value = np.stack(value)
        except ValueError as e:
            raise VLInterpretError(f"{where}: {name} holds arrays of different shapes") from e
    arr = np.asarray(value)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise VLInterpretError(f"{where}: {name} must be numeric, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise VLInterpretError(f"{where}: {name} must have {ndim} dimensions, got shape {arr.shape}")
    return arr


def _token_strings(tokens, where: str) -> list[str]:
    if isinstance(tokens, np.ndarray):
        tokens = tokens.tolist()
    if not isinstance(tokens, (list, tuple)) or not tokens:
        raise VLInterpretError(f"{where}: tokens must be a non-empty list of strings")
    out = []
    for t in tokens:
        if isinstance(t, (bytes, bytearray)):
            t = bytes(t).decode("utf-8", "replace")
        if not isinstance(t, str):  # np.str_ is a str subclass
            raise VLInterpretError(f"{where}: tokens must be strings, got {type(t).__name__}")
        out.append(str(t))
    return out


def _coords(value, where: str) -> np.ndarray:
    """img_coords -> (M, 2) int (x, y); accepts lists of tuples, (M, 2) arrays and structured arrays."""
    if value is None:
        return np.zeros((0, 2), np.int64)
    if isinstance(value, np.ndarray) and value.dtype.names:
        value = [tuple(v) for v in value.tolist()]
    arr = np.asarray(value)
    if arr.size == 0:
        return np.zeros((0, 2), np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2 or not np.issubdtype(arr.dtype, np.number):
        raise VLInterpretError(f"{where}: img_coords must be (x, y) pairs, got shape {arr.shape}")
    if (arr < 0).any() or (arr != np.round(arr)).any():
        raise VLInterpretError(f"{where}: img_coords must be non-negative integer grid cells")
    return arr.astype(np.int64)


def classify_tokens(tokens: list[str], txt_len, n_image: int) -> tuple[list[str], list[str]]:
    """(modality per token, notices) by the module's modality rule."""
    n = len(tokens)
    notices = []
    try:
        stored = int(txt_len)
    except (TypeError, ValueError):
        stored = None
    if n_image > n:
        raise ValueError(f"{n_image} image coordinates for {n} tokens")
    first_image = n - n_image if n_image else (min(max(stored, 0), n) if stored is not None else n)
    modality = []
    for i, t in enumerate(tokens):
        if t in SPECIAL_TOKENS or t.strip() in SPECIAL_TOKENS:
            modality.append("special")
        elif i >= first_image:
            modality.append("image")
        else:
            modality.append("text")
    if n_image and stored is not None and stored != first_image:
        n_spec = sum(1 for m in modality[:first_image] if m == "special")
        notices.append(f"txt_len was {stored}, but the tokens before the {n_image} image tokens number {first_image} "
                       f"({first_image - n_spec} text + {n_spec} special); modality set per token")
    if not n_image and n - first_image > 0:
        notices.append(f"no img_coords: the {n - first_image} tokens after txt_len={stored} are taken as image tokens "
                       "covering the whole image (their grid cells are unknown)")
    return modality, notices


def rebuild_question(tokens: list[str], modality: list[str]) -> tuple[str, np.ndarray]:
    """The question text from its text tokens, and each token's (start, end) span (-1 for others)."""
    spans = np.full((len(tokens), 2), -1, np.int32)
    text = ""
    for i, (t, m) in enumerate(zip(tokens, modality)):
        if m != "text":
            continue
        piece = t[2:] if t.startswith("##") and len(t) > 2 else t
        if t.startswith("##") and text:
            start = len(text)
        else:
            if text:
                text += " "
            start = len(text)
        text += piece
        spans[i] = (start, len(text))
    return text, spans


def _image_uint8(value, where: str) -> tuple[np.ndarray, list[str]]:
    if value is None or np.asarray(value).size == 0:
        return np.full((1, 1, 3), 128, np.uint8), ["the database holds no image for this example (gray placeholder)"]
    arr = _numeric(value, where, "image")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise VLInterpretError(f"{where}: image must be (H, W, 3), got shape {arr.shape}")
    arr = arr[..., :3]
    notices = []
    if np.issubdtype(arr.dtype, np.floating) and arr.size and arr.max() <= 1.0:
        arr = arr * 255.0  # a 0..1 float image
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        notices.append(f"image values outside 0..255 ({arr.min()}..{arr.max()}) were clipped")
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8), notices


@dataclass(frozen=True, kw_only=True)
class ConvertedExample:
    record: Record
    custom_metrics: dict[str, np.ndarray]  # name -> (layer, head)


def example_to_record(key: str, ex: dict, *, model_id: str, source_name: str) -> ConvertedExample:
    """One VL-InterpreT example dict -> a Record (see the module docstring for every rule)."""
    from core.ids import example_id_of  # the project-wide content hash, so runs join
    from PIL import Image

    where = f"example {key!r}"
    for required in ("tokens", "attention"):
        if required not in ex:
            raise VLInterpretError(f"{where}: missing {required!r}")
    tokens = _token_strings(ex["tokens"], where)
    coords = _coords(ex.get("img_coords"), where)
    try:
        modality, notices = classify_tokens(tokens, ex.get("txt_len"), len(coords))
    except ValueError as e:
        raise VLInterpretError(f"{where}: {e}") from e
    image, img_notices = _image_uint8(ex.get("image"), where)
    notices += img_notices
    boxes, grid, grid_size = _geometry(ex, coords, modality, where)
    question, spans = rebuild_question(tokens, modality)
    att = _attention(ex["attention"], len(tokens), where, notices)
    idx = np.arange(len(tokens))
    hidden, hs_shape = _hidden(ex.get("hidden_states"), len(tokens), where, notices)
    correct = _correctness(ex.get("accuracy"), where)
    notices.append("VL-InterpreT stores only whether the answer was correct: answer text and probability "
                   "are not available")
    custom = _custom_metrics(ex.get("custom_metrics"), att.shape[:2], where)
    meta = _meta(key, ex, model_id=model_id, source_name=source_name, correct=correct, grid_size=grid_size,
                 hs_shape=hs_shape, custom=custom)
    try:
        record = Record(
            example_id=example_id_of(Image.fromarray(image), question), question=question, tokens=tuple(tokens),
            modality=tuple(modality), token_boxes=boxes, token_grid=grid, token_spans=spans, image=image,
            attention={"self": AttentionBlock(values=att, query_index=idx, key_index=idx)}, hidden=hidden,
            prediction=Prediction(answers=(NO_ANSWER,), probabilities=(0.0,)),
            label=None if correct is None else (NO_ANSWER if correct else NOT_THE_ANSWER),
            source_key=f"vlinterpret/{source_name}/{key}", notices=tuple(notices), meta=meta,
        )
    except RecordError as e:
        raise VLInterpretError(f"{where}: {e}") from e
    return ConvertedExample(record=record, custom_metrics=custom)


def _grid_size(ex: dict, coords: np.ndarray, where: str) -> tuple[int, int]:
    """(w, h) of the image token grid: img_grid_size when stored, else the extent of img_coords."""
    if ex.get("img_grid_size") is None:
        return int(coords[:, 0].max()) + 1, int(coords[:, 1].max()) + 1
    gs = _numeric(ex["img_grid_size"], where, "img_grid_size").reshape(-1)
    if gs.size != 2 or (gs < 1).any():
        raise VLInterpretError(f"{where}: img_grid_size must be (w, h) >= 1, got {gs.tolist()}")
    return int(gs[0]), int(gs[1])


def _geometry(ex: dict, coords: np.ndarray, modality: list[str],
              where: str) -> tuple[np.ndarray, np.ndarray, tuple[int, int] | None]:
    """(token_boxes (N, 4), token_grid (N, 2), grid size (w, h) or None) by the geometry rule."""
    n = len(modality)
    boxes = np.full((n, 4), np.nan, np.float32)
    grid = np.full((n, 2), -1, np.int32)
    if not len(coords):  # no grid: an image token covers the whole image
        boxes[[i for i, m in enumerate(modality) if m == "image"]] = (0.0, 0.0, 1.0, 1.0)
        return boxes, grid, None
    w, h = grid_size = _grid_size(ex, coords, where)
    if (coords[:, 0] >= w).any() or (coords[:, 1] >= h).any():
        raise VLInterpretError(f"{where}: img_coords fall outside img_grid_size {grid_size}")
    image_pos = np.arange(n - len(coords), n)
    x, y = coords[:, 0].astype(np.float64), coords[:, 1].astype(np.float64)
    boxes[image_pos] = np.stack([x / w, y / h, (x + 1) / w, (y + 1) / h], axis=1)
    grid[image_pos] = np.stack([coords[:, 1], coords[:, 0]], axis=1)
    # a special token among the image positions (an [IMG] marker) has no cell
    marker = [i for i in image_pos if modality[i] != "image"]
    boxes[marker] = np.nan
    grid[marker] = -1
    return boxes, grid, grid_size


def _attention(value, n: int, where: str, notices: list[str]) -> np.ndarray:
    """(layer, head, N, N) float32 softmax rows; rows off by more than 1e-3 are renormalized (noted)."""
    att = _numeric(value, where, "attention", ndim=4).astype(np.float32)
    if att.shape[2] != n or att.shape[3] != n:
        raise VLInterpretError(f"{where}: attention is {att.shape} for {n} tokens")
    if not np.isfinite(att).all() or (att < 0).any():
        raise VLInterpretError(f"{where}: attention holds negative or non-finite values; not softmax weights")
    sums = att.sum(-1, keepdims=True)
    worst = float(np.abs(sums - 1.0).max()) if att.size else 0.0
    if worst > 1e-3:
        if (sums <= 0).any():
            raise VLInterpretError(f"{where}: attention has all-zero rows; cannot be read as softmax weights")
        att = att / sums
        notices.append(f"attention rows did not sum to 1 (off by up to {worst:.3g}); renormalized")
    return att


def _hidden(value, n: int, where: str, notices: list[str]) -> tuple[dict, list[int] | None]:
    """({"joint": HiddenBlock} or {} when absent or not aligned to the tokens, the stored shape)."""
    if value is None:
        return {}, None
    hs = _numeric(value, where, "hidden_states", ndim=3).astype(np.float32)
    if hs.shape[1] == n:
        return {"joint": HiddenBlock(values=hs, token_index=np.arange(n))}, list(hs.shape)
    notices.append(f"hidden_states cover {hs.shape[1]} tokens, not the {n} tokens (the database dropped "
                   "some, e.g. stop words); they cannot be aligned and were left out")
    return {}, list(hs.shape)


def _correctness(acc, where: str) -> bool | None:
    """``accuracy`` as True / False / None (absent): the only prediction the database records."""
    if isinstance(acc, np.ndarray) and acc.size == 1:
        acc = acc.item()
    if isinstance(acc, np.generic):
        acc = acc.item()
    if acc is not None and not isinstance(acc, (bool, int, float)):
        raise VLInterpretError(f"{where}: accuracy must be True, False or absent, got {type(acc).__name__}")
    return None if acc is None else bool(acc)


def _custom_metrics(value, layers_heads: tuple[int, int], where: str) -> dict[str, np.ndarray]:
    """name -> (layer, head) float32; each must match the attention's layers and heads."""
    custom = {}
    for name, vals in (value or {}).items():
        arr = _numeric(vals, where, f"custom_metrics[{name!r}]", ndim=2).astype(np.float32)
        if arr.shape != tuple(layers_heads):
            raise VLInterpretError(f"{where}: custom_metrics[{name!r}] is {arr.shape}, expected (layers, heads) "
                                   f"{tuple(layers_heads)}")
        custom[str(name)] = arr
    return custom


def _meta(key: str, ex: dict, *, model_id: str, source_name: str, correct: bool | None,
          grid_size: tuple[int, int] | None, hs_shape: list[int] | None, custom: dict) -> dict:
    """The Record's meta: the importer, and what the database said that the Record has no field for."""
    ex_id = ex.get("ex_id", key)
    if isinstance(ex_id, np.generic):
        ex_id = ex_id.item()
    return {
        "model_id": model_id, "adapter": IMPORTER_NAME, "adapter_version": IMPORTER_VERSION,
        "vlinterpret": {
            "database": source_name, "key": key, "ex_id": ex_id if isinstance(ex_id, (int, str)) else str(ex_id),
            "txt_len": None if ex.get("txt_len") is None else int(ex["txt_len"]), "accuracy": correct,
            "img_grid_size": None if grid_size is None else list(grid_size), "hidden_states_shape": hs_shape,
            "custom_metrics": {k: v.tolist() for k, v in custom.items()},
            "ignored": sorted(k for k in ex if k in ("tsne",)),
        },
        "hidden_last": HIDDEN_LAST,
    }
