"""Read a VL-InterpreT database without ever running code from it.

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
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from core.errors import StoreError

MAX_VALUE_BYTES = 2 * 1024 ** 3  # a decompressed value larger than this is refused (lz4 bombs)
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
