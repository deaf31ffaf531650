"""Import a VL-InterpreT database into a VL-Lens store, without ever running code from it.

The format (IntelLabs/VL-InterpreT, app/database/database.py): an LMDB environment whose values
are lz4-frame-compressed msgpack. ``n_examples``, ``n_layers`` and ``n_heads`` hold integers;
``faiss`` holds pickle bytes (a nearest-neighbour table over per-example t-SNE points: we never
read it); each decimal key "0", "1", ... holds the *pickle* bytes of one example dict:

    ex_id, image (H, W, 3) int array, tokens (text tokens then image tokens), txt_len,
    img_coords [(x, y) grid cell per image token, top-left origin], accuracy (optional bool),
    attention (layers, heads, N, N), hidden_states (layers + 1, N, d) or a list of (N, d),
    custom_metrics {name: (layers, heads)} (optional), and after their preprocessing
    img_grid_size (w, h) and tsne (ignored: fit per layer and example, so not comparable).

Safety: example pickles are read with ``RestrictedUnpickler``, which resolves only numpy's array,
dtype and scalar reconstructors (numpy.core / numpy._core) and refuses every other global with
``UnsafePickleError`` naming the example. A pickle that would call os.system, eval, a class's
__reduce__ etc. stops the import before anything in it is called. ``pickle.load(s)`` is never
called on file data. Decompressed values are capped (``MAX_VALUE_BYTES``).

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

import io
import pickle
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from store.schema import AttentionBlock, HiddenBlock, Prediction, Record
from core.errors import RecordError
from core.errors import StoreError
from store.zarr_store import VLStore

IMPORTER_NAME = "vlinterpret-import"
IMPORTER_VERSION = "1"
MAX_VALUE_BYTES = 2 * 1024 ** 3  # a decompressed value larger than this is refused (lz4 bombs)
NO_ANSWER = "(answer not in the VL-InterpreT database)"
NOT_THE_ANSWER = "(a different answer; not in the database)"
SPECIAL_TOKENS = frozenset({
    "[CLS]", "[SEP]", "[PAD]", "[MASK]", "[IMG]", "[BOS]", "[EOS]", "<s>", "</s>", "<pad>", "<mask>", "<cls>",
    "<sep>", "<img>", "<image>", "</image>", "<|endoftext|>",
})
_HEADER_KEYS = ("n_examples", "n_layers", "n_heads")


class VLInterpretError(StoreError):
    """The VL-InterpreT database cannot be imported; the message names the example and the problem."""


class UnsafePickleError(VLInterpretError):
    """A pickle in the database references something other than plain data and numpy arrays."""


# ---- restricted unpickling --------------------------------------------------------------------------
def _numpy_reconstructors() -> dict[tuple[str, str], object]:
    """The only globals an example pickle may name: numpy's array / dtype / scalar rebuilders."""
    try:  # numpy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for mod in ("numpy.core", "numpy._core"):
        allowed[(f"{mod}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{mod}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{mod}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


def _latin1_encode(text, encoding="latin1"):
    """Protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1'); nothing else is allowed."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin1")


_ALLOWED_GLOBALS: dict[tuple[str, str], object] | None = None


def _allowed_globals() -> dict[tuple[str, str], object]:
    global _ALLOWED_GLOBALS
    if _ALLOWED_GLOBALS is None:
        allowed = _numpy_reconstructors()
        allowed[("builtins", "set")] = set
        allowed[("builtins", "frozenset")] = frozenset
        allowed[("builtins", "bytearray")] = bytearray
        allowed[("_codecs", "encode")] = _latin1_encode
        _ALLOWED_GLOBALS = allowed
    return _ALLOWED_GLOBALS


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles plain containers, numbers, strings and numpy arrays; refuses every other global.

    ``find_class`` is the only way a pickle reaches a callable (REDUCE, NEWOBJ, BUILD and the
    extension registry all go through it), so refusing there stops code execution before it starts.
    """

    def __init__(self, data: bytes, *, where: str):
        super().__init__(io.BytesIO(data))
        self.where = where

    def find_class(self, module, name):
        obj = _allowed_globals().get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"{self.where}: refusing to load: its pickle references {module}.{name}, which is not a plain "
                f"container, number, string or numpy array (nothing from it was run)")
        return obj

    def persistent_load(self, pid):
        raise UnsafePickleError(f"{self.where}: refusing to load: its pickle uses persistent ids")


def restricted_loads(data: bytes, *, where: str):
    try:
        return RestrictedUnpickler(data, where=where).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # truncated / corrupt pickles, bad numpy state
        raise VLInterpretError(f"{where}: not a readable example pickle ({type(e).__name__}: {e})") from e


# ---- the LMDB layer ---------------------------------------------------------------------------------
def _decode_value(raw: bytes, where: str):
    """lz4 frame -> msgpack -> Python value (msgpack's own types only: no ext hooks)."""
    import lz4.frame
    import msgpack

    try:
        dec = lz4.frame.LZ4FrameDecompressor()
        data = dec.decompress(bytes(raw), max_length=MAX_VALUE_BYTES)
        if not dec.eof:
            raise VLInterpretError(f"{where}: value is truncated or larger than {MAX_VALUE_BYTES} bytes decompressed")
    except VLInterpretError:
        raise
    except Exception as e:
        raise VLInterpretError(f"{where}: value is not lz4-frame compressed ({e})") from e
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as e:
        raise VLInterpretError(f"{where}: value is not msgpack ({type(e).__name__}: {e})") from e


def _as_int(value, where: str) -> int:
    """An integer header value; msgpack_numpy may have written a numpy scalar as {nd: False, ...}."""
    if isinstance(value, bool):
        raise VLInterpretError(f"{where}: expected an integer, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        get = lambda k: value.get(k, value.get(k.encode()))  # noqa: E731 - str or bytes keys
        if get("nd") is False and isinstance(get("data"), (bytes, bytearray)) and isinstance(get("type"), (str, bytes)):
            dtype = np.dtype(get("type").decode() if isinstance(get("type"), bytes) else get("type"))
            if dtype.kind in "iu":
                return int(np.frombuffer(get("data"), dtype=dtype, count=1)[0])
    raise VLInterpretError(f"{where}: expected an integer, got {type(value).__name__}")


class VLInterpretDatabase:
    """Read-only view of a VL-InterpreT LMDB database. Examples are unpickled with restrictions."""

    def __init__(self, path: str | Path):
        import lmdb

        self.path = Path(path)
        if not self.path.exists():
            raise VLInterpretError(f"no VL-InterpreT database at {self.path}")
        if not (self.path / "data.mdb").is_file():
            raise VLInterpretError(f"{self.path} is not a VL-InterpreT database (an LMDB directory with data.mdb)")
        try:
            self.env = lmdb.open(str(self.path), readonly=True, lock=False, create=False, subdir=True,
                                 readahead=False, max_readers=4)
        except lmdb.Error as e:
            raise VLInterpretError(f"{self.path}: cannot open the LMDB database ({e})") from e

    def close(self):
        self.env.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _get(self, key: str):
        with self.env.begin(buffers=False) as txn:
            raw = txn.get(key.encode("utf-8"))
        if raw is None:
            return None
        return _decode_value(raw, f"key {key!r}")

    def header(self) -> dict:
        """n_examples / n_layers / n_heads as stored (None when absent)."""
        out = {}
        for k in _HEADER_KEYS:
            v = self._get(k)
            out[k] = None if v is None else _as_int(v, f"key {k!r}")
        return out

    def example_keys(self) -> list[str]:
        """The decimal keys, in numeric order. 'faiss' and other keys are never read."""
        with self.env.begin() as txn:
            keys = [bytes(k).decode("utf-8", "replace") for k in txn.cursor().iternext(keys=True, values=False)]
        return sorted((k for k in keys if k.isdigit()), key=int)

    def example(self, key: str) -> dict:
        where = f"example {key!r}"
        value = self._get(key)
        if value is None:
            raise VLInterpretError(f"{where}: not in the database")
        if not isinstance(value, (bytes, bytearray)):
            raise VLInterpretError(f"{where}: expected pickle bytes, got {type(value).__name__}")
        ex = restricted_loads(bytes(value), where=where)
        if not isinstance(ex, dict):
            raise VLInterpretError(f"{where}: expected a dict, got {type(ex).__name__}")
        return ex


# ---- conversion -------------------------------------------------------------------------------------
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
    n = len(tokens)
    coords = _coords(ex.get("img_coords"), where)
    try:
        modality, notices = classify_tokens(tokens, ex.get("txt_len"), len(coords))
    except ValueError as e:
        raise VLInterpretError(f"{where}: {e}") from e
    image, img_notices = _image_uint8(ex.get("image"), where)
    notices += img_notices

    # geometry
    boxes = np.full((n, 4), np.nan, np.float32)
    grid = np.full((n, 2), -1, np.int32)
    grid_size = None
    if len(coords):
        if ex.get("img_grid_size") is not None:
            gs = _numeric(ex["img_grid_size"], where, "img_grid_size").reshape(-1)
            if gs.size != 2 or (gs < 1).any():
                raise VLInterpretError(f"{where}: img_grid_size must be (w, h) >= 1, got {gs.tolist()}")
            grid_size = (int(gs[0]), int(gs[1]))
        else:
            grid_size = (int(coords[:, 0].max()) + 1, int(coords[:, 1].max()) + 1)
        w, h = grid_size
        if (coords[:, 0] >= w).any() or (coords[:, 1] >= h).any():
            raise VLInterpretError(f"{where}: img_coords fall outside img_grid_size {grid_size}")
        image_pos = np.arange(n - len(coords), n)
        x, y = coords[:, 0].astype(np.float64), coords[:, 1].astype(np.float64)
        boxes[image_pos] = np.stack([x / w, y / h, (x + 1) / w, (y + 1) / h], axis=1)
        grid[image_pos] = np.stack([coords[:, 1], coords[:, 0]], axis=1)
        # a special token among the image positions (an [IMG] marker) has no cell
        for i in image_pos:
            if modality[i] != "image":
                boxes[i] = np.nan
                grid[i] = -1
    else:
        for i, m in enumerate(modality):
            if m == "image":
                boxes[i] = (0.0, 0.0, 1.0, 1.0)

    question, spans = rebuild_question(tokens, modality)

    # attention
    att = _numeric(ex["attention"], where, "attention", ndim=4).astype(np.float32)
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
    idx = np.arange(n)
    attention = {"self": AttentionBlock(values=att, query_index=idx, key_index=idx)}

    # hidden states
    hidden = {}
    hs_shape = None
    if ex.get("hidden_states") is not None:
        hs = _numeric(ex["hidden_states"], where, "hidden_states", ndim=3).astype(np.float32)
        hs_shape = list(hs.shape)
        if hs.shape[1] == n:
            hidden["joint"] = HiddenBlock(values=hs, token_index=idx)
        else:
            notices.append(f"hidden_states cover {hs.shape[1]} tokens, not the {n} tokens (the database dropped "
                           "some, e.g. stop words); they cannot be aligned and were left out")

    # prediction: only correctness is recorded
    acc = ex.get("accuracy")
    if isinstance(acc, np.ndarray) and acc.size == 1:
        acc = acc.item()
    if isinstance(acc, np.generic):
        acc = acc.item()
    if acc is not None and not isinstance(acc, (bool, int, float)):
        raise VLInterpretError(f"{where}: accuracy must be True, False or absent, got {type(acc).__name__}")
    correct = None if acc is None else bool(acc)
    label = None if correct is None else (NO_ANSWER if correct else NOT_THE_ANSWER)
    notices.append("VL-InterpreT stores only whether the answer was correct: answer text and probability "
                   "are not available")

    custom = {}
    for name, vals in (ex.get("custom_metrics") or {}).items():
        arr = _numeric(vals, where, f"custom_metrics[{name!r}]", ndim=2).astype(np.float32)
        if arr.shape != att.shape[:2]:
            raise VLInterpretError(f"{where}: custom_metrics[{name!r}] is {arr.shape}, expected (layers, heads) "
                                   f"{att.shape[:2]}")
        custom[str(name)] = arr

    ex_id = ex.get("ex_id", key)
    if isinstance(ex_id, np.generic):
        ex_id = ex_id.item()
    meta = {
        "model_id": model_id, "adapter": IMPORTER_NAME, "adapter_version": IMPORTER_VERSION,
        "vlinterpret": {
            "database": source_name, "key": key, "ex_id": ex_id if isinstance(ex_id, (int, str)) else str(ex_id),
            "txt_len": None if ex.get("txt_len") is None else int(ex["txt_len"]), "accuracy": correct,
            "img_grid_size": None if grid_size is None else list(grid_size), "hidden_states_shape": hs_shape,
            "custom_metrics": {k: v.tolist() for k, v in custom.items()},
            "ignored": sorted(k for k in ex if k in ("tsne",)),
        },
        "hidden_last": "as recorded by the tool that wrote the database",
    }
    try:
        record = Record(
            example_id=example_id_of(Image.fromarray(image), question), question=question, tokens=tuple(tokens),
            modality=tuple(modality), token_boxes=boxes, token_grid=grid, token_spans=spans, image=image,
            attention=attention, hidden=hidden, prediction=Prediction(answers=(NO_ANSWER,), probabilities=(0.0,)),
            label=label, source_key=f"vlinterpret/{source_name}/{key}", notices=tuple(notices), meta=meta,
        )
    except RecordError as e:
        raise VLInterpretError(f"{where}: {e}") from e
    return ConvertedExample(record=record, custom_metrics=custom)


# ---- the import -------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class ImportResult:
    run: str
    examples: int  # decimal keys in the database
    written: int
    skipped: int  # already committed (a rerun resumes)
    seconds: float
    n_layers: int | None
    n_heads: int | None
    notices: tuple[str, ...] = field(default_factory=tuple)


def _with_custom(stats: dict, custom: dict[str, np.ndarray], names: tuple[str, ...]) -> dict:
    from analysis.head_stats import HeadStats

    if not names:
        return stats
    base = stats["self"]
    L, H = base.values.shape[1:]
    extra = np.stack([custom.get(n, np.full((L, H), np.nan, np.float32)) for n in names])
    return {**stats, "self": HeadStats(names=base.names + tuple(f"custom:{n}" for n in names),
                                       values=np.concatenate([base.values, extra]).astype(np.float32))}


def import_vlinterpret(path: str | Path, store: VLStore, run: str, *, limit: int | None = None,
                       progress: bool = True, on_progress: Callable[[int, int], None] | None = None) -> ImportResult:
    """Import every example of the database at ``path`` into ``store`` as run ``run``.

    Stops at the first example that is unsafe or malformed (VLInterpretError naming it); examples
    committed before it are kept, and a rerun resumes after them.
    """
    from analysis.head_stats import compute_head_stats

    start = time.time()
    path = Path(path)
    source_name = re.sub(r"[^A-Za-z0-9._-]+", "-", path.resolve().name).strip("-") or "database"
    with VLInterpretDatabase(path) as db:
        header = db.header()
        keys = db.example_keys()
        notices = []
        if not keys:
            raise VLInterpretError(f"{path} holds no examples (no decimal keys)")
        if header["n_examples"] is not None and header["n_examples"] != len(keys):
            notices.append(f"n_examples says {header['n_examples']} but the database holds {len(keys)} examples")
        if limit is not None:
            keys = keys[:limit]
        model_id = f"vlinterpret:{source_name}"
        writer = None
        written = skipped = 0
        custom_names: tuple[str, ...] | None = None
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(keys), desc=f"import {run}", unit="ex", dynamic_ncols=True)
        try:
            for i, key in enumerate(keys):
                conv = example_to_record(key, db.example(key), model_id=model_id, source_name=source_name)
                rec = conv.record
                att = rec.attention["self"].values
                for hk, actual in (("n_layers", att.shape[0]), ("n_heads", att.shape[1])):
                    if header[hk] is not None and header[hk] != actual:
                        raise VLInterpretError(f"example {key!r}: attention has {actual} {hk[2:]}, the database "
                                               f"header says {header[hk]}")
                if writer is None:
                    hidden = rec.hidden.get("joint")
                    provenance = {
                        "model_id": model_id, "adapter": IMPORTER_NAME, "adapter_version": IMPORTER_VERSION,
                        "architecture": "single-stream",
                        "config": {"layers": int(att.shape[0]), "heads": int(att.shape[1]),
                                   "hidden": None if hidden is None else int(hidden.values.shape[-1]),
                                   "hidden_last": "as recorded by the tool that wrote the database",
                                   "probability": "not recorded (VL-InterpreT stores correctness only)"},
                        "attention_kinds": ["self"],
                        "source": {"format": "VL-InterpreT LMDB database", "path": str(path.resolve()),
                                   "header": header},
                    }
                    writer = store.writer(run, provenance)
                    done = writer.committed_ids()
                    custom_names = tuple(conv.custom_metrics)
                if rec.example_id in done:
                    skipped += 1
                else:
                    stats = _with_custom(compute_head_stats(rec), conv.custom_metrics, custom_names)
                    if writer.write(rec, stats):
                        written += 1
                        done.add(rec.example_id)
                    else:
                        skipped += 1
                if bar is not None:
                    bar.update(1)
                if on_progress is not None:
                    on_progress(i + 1, len(keys))
        finally:
            if bar is not None:
                bar.close()
            if writer is not None:
                writer.consolidate()
    return ImportResult(run=run, examples=len(keys), written=written, skipped=skipped,
                        seconds=round(time.time() - start, 2), n_layers=header["n_layers"],
                        n_heads=header["n_heads"], notices=tuple(notices))
