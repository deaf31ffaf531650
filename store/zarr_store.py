"""Read and write Records in a Zarr v3 store.

Layout, store version 4 (one group per model run; every array has ``dimension_names``, and every
dimension a coordinate array, so xarray opens an example or the run index as labelled data)::

    <root>/                                   attrs: {"vl_lens": {"format": ..., "schema_version": N}}
      runs/<run>/                             attrs: provenance (model, adapter, versions, config)
        examples/                             a plain directory (no group document)
          <example_id>/                       attrs: tokens, modality, token_boxes / token_grid /
                                              token_spans, head_stats, prediction, ...; "committed" last;
                                              consolidated metadata of everything below
          image              (y, x, channel)            uint8
          tokens, modality   (token)                    text     } coordinates of the
          token_boxes        (token, coord)  float32    x0 y0 x1 y1 in 0..1 (NaN: not an image token)
          token_grid         (token, axis)   int32      row col (-1: none)  } ``token`` dimension
          attention/<kind>/  attention (layer, head, query, key) float16, chunk = one (layer, head) block;
                             query, key: coordinates, the token positions of queries and keys (left
                             out where they are every token in order: ViLT, KD-VLP)
          full_attention/<kind>/  only where chosen layers / heads were recorded with every query row
                             (``record --full-layers``): attention (layer, head, query, key) over those
                             alone, with their model positions as the layer and head coordinates (and
                             in the example's document, "full_attention": {kind: {layers, heads}})
          hidden/<stream>/   hidden (layer, token, dim) float16, chunk = one layer (a stream over some
                             tokens only: dimension <stream>_token, a coordinate of their positions)
        index/             summary (example) text: a JSON summary row per example it covers; example (ids)
          head_stats/<kind>/ head_stats (example, stat, layer, head) float32; example (ids), stat
                             (names), layer, head: coordinates; metadata consolidated

    xarray.open_datatree("store.zarr/runs/<run>/examples/<id>", engine="zarr")
    xarray.open_zarr("store.zarr/runs/<run>/index/head_stats/self").head_stats.sel(stat="text_to_image")
    xarray.open_datatree("store.zarr", engine="zarr")     # every run's index (no example)

Consolidated metadata: each example carries its own (written with it); at the end of a run
(``RunWriter.consolidate``) the index, the run, ``runs`` and the root are consolidated, so xarray
and zarr open any of them in one read and without a warning. Their consolidated metadata covers
the runs and their indexes only: ``examples/`` is not a group, so each example is a hierarchy of
its own (open it by its path, as above) and the run's and root's documents do not grow with every
example's arrays (consolidating them over the examples made a 300-example run's document 13 MB and
took longer than recording it). A writer drops the root's, ``runs``' and its run's consolidated
metadata when it opens, so nobody reads a stale listing while it writes. In an example, layer, head and token are
positions (``isel``); the index has layer and head coordinates too. Each array costs two files,
and creating files is most of a small model's write, so an example holds no more than that. Attention and hidden states are sharded: each
array is one file holding its chunks and an index of their byte ranges (zarr's ``sharding_indexed``
codec), so reading one head still reads one chunk (plus the small index). The token table and the
head statistics are also kept as JSON in the example's group document, which is what the app reads
(one small read). Chunks: float16 attention and hidden states blosc (byte shuffle + lz4), the
image zstd, the token table raw (store/shard_writer.py says why). Version 3 (examples/ a group,
nothing above an example or the index consolidated, zstd chunks), version 2 (no coordinate arrays;
attention/<kind> and hidden/<stream> were the arrays themselves) and version 1 (one file per chunk;
token coordinates and head statistics as arrays) still read; writing into an older store makes it
version 4 (its runs' examples/ group documents are removed at the next consolidation).

Commit protocol: an example's arrays are written first and its group attribute ``committed``
last, so a reader never sees a half-written example and a run killed midway keeps every
committed example; a rerun deletes uncommitted leftovers and resumes. Writers of different
examples touch disjoint keys, so parallel workers need no lock. ``index/`` is a consolidated
summary written after a run; readers merge it with any committed example it does not yet cover,
so it is an accelerator, never a source of truth.

Only JSON and numeric arrays are ever read back: nothing here unpickles anything. How an example's
files are encoded and written (the fast shard writer) is store/shard_writer.py.
"""
from __future__ import annotations

import errno
import json
import os
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import zarr
from zarr.core.sync import sync

from core.errors import RecordError, StoreError
from store.json_values import array_from_json, array_to_json, jsonable
from store.schema import SCHEMA_VERSION, AttentionBlock, FullAttention, HiddenBlock, Prediction, Record, as_float32
from store.shard_writer import NOT_LOCAL, ArrayPlan, committed_attributes, write_example

FORMAT_NAME = "vl-lens-store"
RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _open_store(location: str | Path, read_only: bool):
    loc = str(location)
    if "://" in loc and not loc.startswith("file://"):
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(loc, read_only=read_only)
    from zarr.storage import LocalStore

    path = Path(loc.removeprefix("file://"))
    if read_only and not path.exists():
        raise StoreError(f"no store at {path}")
    return LocalStore(path, read_only=read_only)


def _check_writable(location) -> None:
    """Refuse early, with a clear message, to open a local store for writing where nothing can be written."""
    loc = str(location)
    if "://" in loc and not loc.startswith("file://"):
        return
    path = Path(loc.removeprefix("file://"))
    probe = path if path.exists() else path.parent
    if probe.exists() and not os.access(probe, os.W_OK):
        raise PermissionError(errno.EACCES, "not writable", str(probe))


def _store_error(location, e: BaseException) -> StoreError:
    """Map what the file system or zarr raised on open / write to one clear StoreError."""
    if isinstance(e, StoreError):
        return e
    if isinstance(e, OSError) and e.errno == errno.EROFS:
        return StoreError(f"cannot write to {location}: the file system is read-only (open the store read-only "
                          "to browse it, or record into another --out)")
    if isinstance(e, PermissionError) or (isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM)):
        return StoreError(f"cannot write to {location}: permission denied (open the store read-only to browse it, "
                          "or record into another --out)")
    if isinstance(e, FileExistsError) or (isinstance(e, NotADirectoryError)):
        return StoreError(f"{location} is a file, not a store directory")
    if isinstance(e, zarr.errors.ContainsArrayError):
        return StoreError(f"{location} holds a single Zarr array, not a VL-Lens store (it may come from another tool)")
    if isinstance(e, (FileNotFoundError, zarr.errors.NodeNotFoundError)):
        return StoreError(f"{location} is not a Zarr store (no group found)")
    if isinstance(e, OSError):
        return StoreError(f"cannot open store {location}: {e}")
    detail = str(e).splitlines()[0] if str(e) else type(e).__name__
    return StoreError(f"{location} is not a readable Zarr store (corrupt metadata: {detail})")


@contextmanager
def _writing(location):
    """Errors while writing (read-only file system, permissions, full disk) become a StoreError."""
    try:
        yield
    except StoreError:
        raise
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise StoreError(f"cannot write to {location}: no space left on the device") from e
        raise _store_error(location, e) from e


def _list_dir(store, prefix: str) -> list[str]:
    async def collect():
        # Child node names only: zarr.json is the node's own metadata document.
        return [k async for k in store.list_dir(prefix) if k != "zarr.json"]

    try:
        return sync(collect())
    except FileNotFoundError:
        return []


# The Record's token coordinates: name -> (dtype, columns). Version 2 keeps them in the example's
# group document (they are a few hundred numbers, like ``tokens`` and ``modality`` beside them).
TOKEN_ARRAYS = {"token_boxes": (np.float32, 4), "token_grid": (np.int32, 2), "token_spans": (np.int32, 2)}


@dataclass(frozen=True)
class ExampleSummary:
    """One row of a run's example table (what the browser and aggregates need, no arrays)."""

    example_id: str
    question: str
    label: str | None
    answer: str
    confidence: float
    answers: tuple[str, ...]
    probabilities: tuple[float, ...]
    correct: bool | None
    source_key: str | None
    n_tokens: int
    group: str | None = None

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class VLStore:
    """A VL-Lens store: a Zarr group holding one group per model run."""

    def __init__(self, location: str | Path, *, mode: str = "r"):
        if mode not in ("r", "a"):
            raise ValueError("mode must be 'r' (read) or 'a' (read and write)")
        self.location = str(location)
        self.read_only = mode == "r"
        try:
            self._store = _open_store(location, read_only=self.read_only)
            if mode == "a":
                _check_writable(location)
                root = zarr.open_group(self._store, mode="a", use_consolidated=False)
                meta = root.attrs.get("vl_lens")
                if meta is None:
                    if list(root.keys()):
                        raise StoreError(f"{location} is a Zarr store from another tool (no 'vl_lens' attributes); "
                                         "refusing to write into it")
                    root.attrs["vl_lens"] = {"format": FORMAT_NAME, "schema_version": SCHEMA_VERSION}
                    root.require_group("runs")
            else:
                # its attributes only: the consolidated runs and indexes are not needed here
                root = zarr.open_group(self._store, mode="r", use_consolidated=False)
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001 - whatever zarr raises on a bad store becomes one clear line
            raise _store_error(location, e) from e
        self._root = root
        meta = root.attrs.get("vl_lens")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
            raise StoreError(f"{location} is not a VL-Lens store (it may come from another tool)")
        version = meta.get("schema_version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise StoreError(f"{location} has an unreadable store schema version {version!r} (corrupt metadata)")
        if version > SCHEMA_VERSION:
            raise StoreError(f"{location} was written with store schema version {version}; this VL-Lens reads "
                             f"up to version {SCHEMA_VERSION}. Upgrade VL-Lens to read it.")
        if mode == "a" and version < SCHEMA_VERSION:
            # New examples are written in the current layout: an older VL-Lens must refuse the
            # store with "upgrade" rather than fail on them. Old examples stay readable here.
            try:
                root.attrs["vl_lens"] = {**meta, "schema_version": SCHEMA_VERSION}
            except OSError as e:
                raise _store_error(location, e) from e

    # ---- runs --------------------------------------------------------------------------------
    def runs(self) -> list[str]:
        """The store's runs, leaving out one that a writer is creating right now (its group
        document missing, half-written, or not yet holding the provenance), so a reader never
        opens a half-created run. A run whose document is complete JSON but not a group stays
        listed: opening it gives the "cannot be read" error."""
        return sorted(n for n in _list_dir(self._store, "runs") if not self._run_being_created(n))

    def _run_being_created(self, name: str) -> bool:
        from zarr.core.buffer import default_buffer_prototype

        try:
            raw = sync(self._store.get(f"runs/{name}/zarr.json", prototype=default_buffer_prototype()))
            if raw is None:
                return True
            doc = json.loads(raw.to_bytes())
        except ValueError:  # cut off mid-write
            return True
        except OSError:
            return False
        return isinstance(doc, dict) and "provenance" not in (doc.get("attributes") or {})

    def run(self, name: str) -> "RunReader":
        if name not in self.runs():
            raise StoreError(f"store {self.location} has no run {name!r}; runs: {', '.join(self.runs()) or 'none'}")
        return RunReader(self, name)

    def writer(self, name: str, provenance: dict) -> "RunWriter":
        if self.read_only:
            raise StoreError(f"store {self.location} is open read-only")
        if not RUN_NAME_RE.match(name):
            raise StoreError(f"run name {name!r} must be letters, digits, '.', '_' or '-'")
        with _writing(self.location):
            return RunWriter(self, name, provenance)


class RunReader:
    """Reads one run. Each method reads only what it returns (one head = one chunk)."""

    def __init__(self, store: VLStore, name: str):
        self.store = store
        self.name = name
        self.path = f"runs/{name}"
        try:
            self._group = zarr.open_group(store._store, path=self.path, mode="r", use_consolidated=False)
        except Exception as e:  # noqa: BLE001 - a damaged run group: one clear line
            raise StoreError(f"run {name!r} of {store.location} cannot be read (corrupt metadata: "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__})") from e

    # ---- provenance / listing ----------------------------------------------------------------
    @property
    def provenance(self) -> dict:
        return dict(self._group.attrs.get("provenance", {}))

    def _example_group(self, eid: str):
        return zarr.open_group(self.store._store, path=f"{self.path}/examples/{eid}", mode="r")

    def _example_attrs(self, eid: str) -> dict | None:
        attrs = committed_attributes(self.store._store, f"{self.path}/examples/{eid}")
        if attrs is not NOT_LOCAL:
            return attrs
        try:
            attrs = dict(self._example_group(eid).attrs)
        except Exception:  # missing or half-written metadata: not committed
            return None
        return attrs if attrs.get("committed") is True else None

    def _index(self) -> tuple[list[dict], dict[str, np.ndarray]]:
        try:
            idx = zarr.open_group(self.store._store, path=f"{self.path}/index", mode="r")
            rows = _index_rows(self.store._store, f"{self.path}/index", idx)
            stats = {}
            base = f"{self.path}/index/head_stats"
            for kind in _list_dir(self.store._store, base):
                # version 3: a group per kind holding the values and their coordinates; before, an array
                arr = _open_array(self.store._store, f"{base}/{kind}/head_stats", f"{base}/{kind}")
                if arr.shape[0] != len(rows):
                    return [], {}  # being rewritten: fall back to a scan
                stats[kind] = arr
            return rows, stats
        except Exception:
            return [], {}

    def _listing(self) -> tuple[list[dict], dict[str, object], dict[str, dict]]:
        """(summary rows of committed examples, index stat arrays, the attributes of the committed
        examples the index does not cover, read for their summaries and kept for their head stats)."""
        names = _list_dir(self.store._store, f"{self.path}/examples")
        rows, stats = self._index()
        covered = {r["example_id"] for r in rows}
        present = set(names)
        rows = [r for r in rows if r["example_id"] in present]
        extra = {}
        for eid in sorted(present - covered):
            attrs = self._example_attrs(eid)
            if attrs is not None:
                rows.append(attrs["summary"])
                extra[eid] = attrs
        return rows, stats, extra

    def summaries(self) -> list[ExampleSummary]:
        rows, _, _ = self._listing()
        return [ExampleSummary(**{**r, "answers": tuple(r["answers"]), "probabilities": tuple(r["probabilities"])})
                for r in rows]

    def example_ids(self) -> list[str]:
        return [s.example_id for s in self.summaries()]

    def __len__(self) -> int:
        return len(self.summaries())

    # ---- per-example reads -------------------------------------------------------------------
    def attrs(self, eid: str) -> dict:
        attrs = self._example_attrs(eid)
        if attrs is None:
            raise StoreError(f"run {self.name!r} has no committed example {eid!r}")
        return attrs

    def tokens(self, eid: str) -> dict:
        """Token coordinates: tokens, modality, boxes, grid, spans (small; no attention read)."""
        a = self.attrs(eid)
        out = {"tokens": list(a["tokens"]), "modality": list(a["modality"])}
        n = len(out["tokens"])
        out["role"] = list(a.get("role") or ["prompt"] * n)  # written for generative models only
        for name, (dtype, width) in TOKEN_ARRAYS.items():
            if name in a:  # version 2: in the example's group document
                out[name] = self._json_array(eid, name, a[name], dtype, (n, width))
            else:  # version 1: an array of its own
                path = f"{self.path}/examples/{eid}/{name}"
                out[name] = zarr.open_array(self.store._store, path=path, mode="r")[:]
        return out

    def _json_array(self, eid: str, name: str, values, dtype, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """An array kept as JSON in the example's group document; a malformed one is a StoreError."""
        try:
            arr = array_from_json(values, dtype, shape)
        except (TypeError, ValueError) as e:
            raise StoreError(f"example {eid!r} of run {self.name!r} is corrupt: {name} is not a numeric array "
                             f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from e
        if shape is not None and arr.shape != shape:
            raise StoreError(f"example {eid!r} of run {self.name!r} is corrupt: {name} must have shape {shape}, "
                             f"got {arr.shape}")
        return arr

    def image(self, eid: str) -> np.ndarray:
        return zarr.open_array(self.store._store, path=f"{self.path}/examples/{eid}/image", mode="r")[:]

    def attention_kinds(self, eid: str | None = None) -> list[str]:
        if eid is None:
            return list(self.provenance.get("attention_kinds", []))
        return sorted(_list_dir(self.store._store, f"{self.path}/examples/{eid}/attention"))

    def attention_array(self, eid: str, kind: str):
        """The lazy zarr array (layer, head, query, key); index it to read only what you need."""
        base = f"{self.path}/examples/{eid}/attention/{kind}"
        return _open_array(self.store._store, f"{base}/attention", base)  # version 3, then 1 and 2

    def attention_index(self, eid: str, kind: str) -> tuple[np.ndarray, np.ndarray]:
        arr = self.attention_array(eid, kind)
        return np.asarray(arr.attrs["query_index"], np.int32), np.asarray(arr.attrs["key_index"], np.int32)

    def attention(self, eid: str, kind: str, layer: int, head: int | None = None) -> np.ndarray:
        """(query, key) of one head (one chunk), or (head, query, key) of one layer when head is None."""
        arr = self.attention_array(eid, kind)
        if head is None:
            return as_float32(arr[layer])
        return as_float32(arr[layer, head])

    def full_attention_layout(self, eid: str, kind: str) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
        """(model layers, model heads) of ``kind`` recorded with every query row
        (``--full-layers`` / ``--full-heads``), or None (from the example's document: no array read)."""
        full = (self.attrs(eid).get("full_attention") or {}).get(kind)
        if not isinstance(full, dict):
            return None
        return tuple(int(v) for v in full.get("layers", ())), tuple(int(v) for v in full.get("heads", ()))

    def attention_rows(self, eid: str, kind: str, layer: int,
                       head: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(values, query_index, key_index) of model ``layer`` (and ``head``; None: (head, query,
        key) of every head): every query row where that layer (and head, or every head) was recorded
        in full, else the kind's own rows (``attention``)."""
        layout = self.full_attention_layout(eid, kind)
        if layout is not None and layer in layout[0]:
            n_heads = int(self.attention_array(eid, kind).shape[1])
            if (head is None and list(layout[1]) == list(range(n_heads))) or (head is not None and head in layout[1]):
                arr = self._full_attention_array(eid, kind)
                i = layout[0].index(layer)
                vals = arr[i] if head is None else arr[i, layout[1].index(head)]
                return (as_float32(vals), np.asarray(arr.attrs["query_index"], np.int32),
                        np.asarray(arr.attrs["key_index"], np.int32))
        qi, ki = self.attention_index(eid, kind)
        return self.attention(eid, kind, layer, head), qi, ki

    def _full_attention_array(self, eid: str, kind: str):
        return zarr.open_array(self.store._store, path=f"{self.path}/examples/{eid}/full_attention/{kind}/attention",
                               mode="r")

    def hidden_streams(self, eid: str) -> list[str]:
        return sorted(_list_dir(self.store._store, f"{self.path}/examples/{eid}/hidden"))

    def hidden(self, eid: str, stream: str, layer: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(values, token_index): values (token, dim) of one layer, or (layer, token, dim)."""
        arr = self._hidden_array(eid, stream)
        vals = arr[:] if layer is None else arr[layer]
        return as_float32(vals), np.asarray(arr.attrs["token_index"], np.int32)

    def _hidden_array(self, eid: str, stream: str):
        base = f"{self.path}/examples/{eid}/hidden/{stream}"
        return _open_array(self.store._store, f"{base}/hidden", base)  # version 3, then 1 and 2

    def head_stats(self, eid: str, attrs: dict | None = None) -> dict[str, tuple[list[str], np.ndarray]]:
        """kind -> (stat names, (stat, layer, head)). ``attrs``: the example's, if already read."""
        attrs = self.attrs(eid) if attrs is None else attrs
        if "head_stats" in attrs:  # version 2: in the example's group document
            out = {}
            stored = attrs["head_stats"]
            for kind, hs in (stored.items() if isinstance(stored, dict) else [("?", None)]):
                names = hs.get("names") if isinstance(hs, dict) else None
                if not isinstance(names, list):
                    raise StoreError(f"example {eid!r} of run {self.name!r} is corrupt: head_stats[{kind!r}] "
                                     "has no list of stat names")
                values = self._json_array(eid, f"head_stats[{kind!r}]", hs.get("values"), np.float32)
                if values.ndim != 3 or values.shape[0] != len(names):
                    raise StoreError(f"example {eid!r} of run {self.name!r} is corrupt: head_stats[{kind!r}] "
                                     f"must be (stat, layer, head) with {len(names)} stats, got shape {values.shape}")
                out[kind] = (list(names), values)
            return out
        out = {}
        base = f"{self.path}/examples/{eid}/head_stats"
        for kind in _list_dir(self.store._store, base):
            arr = zarr.open_array(self.store._store, path=f"{base}/{kind}", mode="r")
            out[kind] = (list(arr.attrs["names"]), arr[:])
        return out

    def head_stats_all(self, kind: str,
                       example_ids: Iterable[str] | None = None) -> tuple[list[str], list[str], np.ndarray]:
        """(example ids, stat names, (example, stat, layer, head)) over committed examples.

        Reads the consolidated index (one array read) plus any example it does not cover.
        """
        rows, stats, unindexed = self._listing()
        wanted = None if example_ids is None else set(example_ids)
        ids, blocks, names = [], [], None
        full, pos = None, {}
        if kind in stats:
            arr = stats[kind]
            names = list(arr.attrs["names"])
            full = arr[:]  # one read for the whole run
            pos = {r["example_id"]: i for i, r in enumerate(self._index()[0])}
        for r in rows:
            eid = r["example_id"]
            if wanted is not None and eid not in wanted:
                continue
            if full is not None and eid in pos:
                ids.append(eid)
                blocks.append(full[pos[eid]])
                continue
            hs = self.head_stats(eid, unindexed.get(eid))  # not in the index: from its own document
            if kind in hs:
                names = names or hs[kind][0]
                ids.append(eid)
                blocks.append(hs[kind][1])
        if not blocks:
            return [], names or [], np.zeros((0, 0, 0, 0), np.float32)
        return ids, names, np.stack(blocks)

    def record(self, eid: str) -> Record:
        """Rebuild the full Record (reads everything of the example)."""
        a = self.attrs(eid)
        tok = self.tokens(eid)
        attention = {}
        for kind in self.attention_kinds(eid):
            arr = self.attention_array(eid, kind)
            attention[kind] = AttentionBlock(values=arr[:], query_index=np.asarray(arr.attrs["query_index"]),
                                             key_index=np.asarray(arr.attrs["key_index"]))
        full = {}
        for kind in a.get("full_attention") or {}:
            arr = self._full_attention_array(eid, kind)
            block = AttentionBlock(values=arr[:], query_index=np.asarray(arr.attrs["query_index"]),
                                   key_index=np.asarray(arr.attrs["key_index"]))
            full[kind] = FullAttention(block=block, layers=tuple(arr.attrs["layers"]), heads=tuple(arr.attrs["heads"]))
        hidden = {}
        for stream in self.hidden_streams(eid):
            arr = self._hidden_array(eid, stream)
            hidden[stream] = HiddenBlock(values=arr[:], token_index=np.asarray(arr.attrs["token_index"]))
        try:
            return Record(
                example_id=eid, question=a["question"], tokens=tuple(tok["tokens"]), modality=tuple(tok["modality"]),
                token_boxes=tok["token_boxes"], token_grid=tok["token_grid"], token_spans=tok["token_spans"],
                image=self.image(eid), attention=attention, hidden=hidden,
                prediction=Prediction(answers=tuple(a["prediction"]["answers"]),
                                      probabilities=tuple(a["prediction"]["probabilities"]),
                                      token_probabilities=tuple(a["prediction"].get("token_probabilities", ()))),
                label=a.get("label"), source_key=a.get("source_key"), notices=tuple(a.get("notices", ())),
                meta=a.get("meta", {}), role=tuple(tok["role"]), full_attention=full,
            )
        except RecordError as e:
            raise StoreError(f"example {eid!r} of run {self.name!r} is corrupt: {e}") from e


class RunWriter(RunReader):
    """Writes examples of one run; safe to run in several processes on disjoint examples."""

    def __init__(self, store: VLStore, name: str, provenance: dict):
        self.store = store
        self.name = name
        self.path = f"runs/{name}"
        grp = zarr.open_group(store._store, path=self.path, mode="a", use_consolidated=False)
        old = grp.attrs.get("provenance")
        prov = jsonable(provenance)
        if old and old.get("model_id") not in (None, prov.get("model_id")):
            raise StoreError(f"run {name!r} already holds model {old.get('model_id')!r}, not "
                             f"{prov.get('model_id')!r}; choose another run name")
        if not old:
            grp.attrs["provenance"] = prov
        # examples/ is a plain directory (each example is a Zarr hierarchy of its own, opened by
        # its path), so the run's consolidated metadata need not list every example's arrays.
        # Until this writer's ``consolidate`` the store changes under the consolidated documents:
        # drop them, so zarr and xarray read the store itself meanwhile.
        for path in ("", "runs", self.path):
            _drop_consolidated(store._store, path)
        self._group = grp

    def committed_ids(self) -> set[str]:
        names = _list_dir(self.store._store, f"{self.path}/examples")
        rows, _, _ = self._listing()
        return {r["example_id"] for r in rows} & set(names)

    def is_committed(self, eid: str) -> bool:
        """Whether example ``eid`` is committed in this run (one small metadata read)."""
        return self._example_attrs(eid) is not None

    def write(self, record: Record, head_stats: dict | None = None, *, group: str | None = None) -> bool:
        """Write one example atomically. Returns False (and writes nothing) if already committed."""
        with _writing(self.store.location):
            return self._write(record, head_stats, group=group)

    def _write(self, record: Record, head_stats: dict | None, *, group: str | None) -> bool:
        """Write one example (see ``write``): its arrays, then its group document with ``committed``
        (store/shard_writer.py: on local disk from this thread, elsewhere through zarr's event loop)."""
        path = f"{self.path}/examples/{record.example_id}"
        return write_example(self.store._store, path, _array_plans(record),
                             _example_document(record, head_stats, group))

    def consolidate(self) -> int:
        """Rewrite index/ from the committed examples and consolidate the store's metadata (the
        module docstring says what); returns how many examples the index covers."""
        with _writing(self.store.location):
            return self._consolidate()

    def _consolidate(self) -> int:
        names = _list_dir(self.store._store, f"{self.path}/examples")
        rows, stacks, names_by_kind = [], {}, {}
        for eid in sorted(names):
            attrs = self._example_attrs(eid)
            if attrs is None:
                continue
            rows.append(attrs["summary"])
            for kind, (snames, vals) in self.head_stats(eid, attrs).items():
                stacks.setdefault(kind, []).append(vals)
                names_by_kind[kind] = snames
        idx = zarr.open_group(self.store._store, path=f"{self.path}/index", mode="w")
        ids = np.array([r["example_id"] for r in rows], dtype=object)
        for kind, vals in stacks.items():
            if len(vals) != len(rows):
                continue  # a kind missing from some examples is read per example instead
            _write_index_kind(idx.require_group(f"head_stats/{kind}"), np.stack(vals).astype(np.float32), ids,
                              names_by_kind[kind])
        if rows:  # version 4: the rows as an array, out of the consolidated documents (one JSON text each)
            _put(idx, "summary", np.array([json.dumps(r) for r in jsonable(rows)], dtype=object), ("example",))
            _put(idx, "example", ids, ("example",))
        idx.attrs["written"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        _consolidate_metadata(self.store._store, f"{self.path}/index")
        _consolidate_store(self.store._store, self.path)
        return len(rows)


def _index_rows(store, path: str, idx) -> list[dict]:
    """The summary rows of the run index at ``path``: version 4 keeps them in the ``summary`` array
    (example,) of JSON texts, so the run's and the root's consolidated metadata, which copy every
    attribute of the index, stay small; versions 1-3 in the index's ``examples`` attribute."""
    if "examples" in idx.attrs:
        return list(idx.attrs["examples"])
    try:
        texts = zarr.open_array(store, path=f"{path}/summary", mode="r")[:]
    except Exception:  # noqa: BLE001 - no rows (an empty run) or a damaged array: the scan covers it
        return []
    return [json.loads(t) for t in texts.tolist()]


def _open_array(store, *paths: str):
    """The array at the first of ``paths`` that holds one (layouts of different store versions)."""
    for path in paths[:-1]:
        try:
            return zarr.open_array(store, path=path, mode="r")
        except Exception:  # noqa: BLE001 - not there (or a group): the next layout
            continue
    return zarr.open_array(store, path=paths[-1], mode="r")


def _write_index_kind(grp, values: np.ndarray, example_ids: np.ndarray, stat_names: list[str]) -> None:
    """index/head_stats/<kind>/: (example, stat, layer, head) values and a coordinate per dimension
    (example ids, statistic names, layer and head indices), so xarray selects by label."""
    E, S, L, H = values.shape
    coords = {"example": example_ids, "stat": np.array(stat_names, dtype=object), "layer": np.arange(L, dtype=np.int32),
              "head": np.arange(H, dtype=np.int32)}
    _put(grp, "head_stats", values, ("example", "stat", "layer", "head"), {"names": list(stat_names)})
    for dim, data in coords.items():
        _put(grp, dim, data, (dim,))


def _put(grp, name: str, data: np.ndarray, dims: tuple[str, ...], attrs: dict | None = None) -> None:
    """One array written by zarr (index arrays: once per run, so zarr's own writer is fast enough)."""
    text = data.dtype.kind in "UOT"
    arr = grp.create_array(name, shape=data.shape, dtype=str if text else data.dtype, chunks=data.shape or None,
                           dimension_names=dims, attributes=jsonable(attrs or {}), overwrite=True)
    arr[...] = data


def _consolidate_metadata(store, path: str) -> None:
    """Consolidate the metadata of the group at ``path`` and of every group below it (deepest first),
    so xarray opens any of them in one read and without its "no consolidated metadata" warning."""
    import warnings

    groups = [path]
    for g in groups:  # grows while it walks
        groups += [f"{g}/{c}" for c in _list_dir(store, g) if _is_group(store, f"{g}/{c}")]
    with warnings.catch_warnings():  # "not part of the Zarr format 3 specification": zarr-python reads it
        warnings.simplefilter("ignore")
        for g in sorted(groups, key=lambda g: -g.count("/")):
            zarr.consolidate_metadata(store, path=g)


def _consolidate_store(store, run_path: str) -> None:
    """Consolidate the run at ``run_path``, ``runs`` and the root (store version 4), so xarray and
    zarr open the store or the run in one read and without a warning. Their metadata covers the
    runs and their indexes only: an example is a hierarchy of its own below the plain directory
    ``examples/`` (versions 1-3 made that directory a group: its document is removed here, or
    consolidating would copy every example's metadata into the run's and the root's documents).
    Other runs keep theirs: one may be being written right now."""
    import warnings

    for run in _list_dir(store, "runs"):
        _delete(store, f"runs/{run}/examples/zarr.json")
    with warnings.catch_warnings():  # "not part of the Zarr format 3 specification": zarr-python reads it
        warnings.simplefilter("ignore")
        for path in (run_path, "runs", ""):
            zarr.consolidate_metadata(store, path=path or None)


def _drop_consolidated(store, path: str) -> None:
    """Remove the consolidated metadata from the group document at ``path`` ("" the root), if any."""
    from zarr.core.buffer import default_buffer_prototype

    key = f"{path}/zarr.json" if path else "zarr.json"
    proto = default_buffer_prototype()
    raw = sync(store.get(key, prototype=proto))
    if raw is None:
        return
    doc = json.loads(raw.to_bytes())
    if isinstance(doc, dict) and doc.pop("consolidated_metadata", None) is not None:
        sync(store.set(key, proto.buffer.from_bytes(json.dumps(doc).encode())))  # atomic on local disk


def _delete(store, key: str) -> None:
    try:
        sync(store.delete(key))
    except FileNotFoundError:
        pass


def _is_group(store, path: str) -> bool:
    try:
        zarr.open_group(store, path=path, mode="r")
        return True
    except Exception:  # noqa: BLE001 - an array
        return False


# Version 3: the token table as coordinate arrays of the example group (xarray reads them as the
# coordinates of the ``token`` dimension); name -> (dims, what the columns are). The character
# spans stay in the group document only: every array is two more files, and creating files is
# most of a small model's write.
TOKEN_COORDS = {"tokens": (("token",), None), "modality": (("token",), None),
                "token_boxes": (("token", "coord"), ["x0", "y0", "x1", "y1"]),
                "token_grid": (("token", "axis"), ["row", "col"])}


def _array_plans(record: Record) -> list[ArrayPlan]:
    """The example's arrays (store version 3; the module docstring shows the layout)."""
    plans = [ArrayPlan("image", record.image, ("y", "x", "channel"), None, None, "zstd")]
    for name, (dims, columns) in TOKEN_COORDS.items():
        data = getattr(record, name)
        plans.append(ArrayPlan(name, np.asarray(data, dtype=object) if len(dims) == 1 else data, dims, None,
                               {"columns": columns} if columns else None, "raw"))
    for kind, block in record.attention.items():
        plans += _attention_plans(f"attention/{kind}", block, record.n_tokens)
    for kind, full in record.full_attention.items():
        plans += _full_attention_plans(kind, full, record.n_tokens)
    for stream, block in record.hidden.items():
        plans += _hidden_plans(stream, block, record.n_tokens)
    return plans


def _attention_plans(base: str, block: AttentionBlock, n_tokens: int, attrs: dict | None = None) -> list[ArrayPlan]:
    """attention/<kind>/ (``base``): the values (one shard, one inner chunk per (layer, head) block)
    and, where its queries or keys are not every token in order (LXMERT's kinds), their token
    positions as the coordinate of ``query`` / ``key``."""
    L, H, Q, K = block.values.shape
    plans = [ArrayPlan(f"{base}/attention", block.values, AttentionBlock.DIMS, (1, 1, Q, K),
                       {"query_index": block.query_index, "key_index": block.key_index, **(attrs or {})}, "shuffle")]
    for dim, index in (("query", block.query_index), ("key", block.key_index)):
        if not _every_token(index, n_tokens):
            plans.append(ArrayPlan(f"{base}/{dim}", np.asarray(index, np.int32), (dim,), None, None, "raw"))
    return plans


def _full_attention_plans(kind: str, full: FullAttention, n_tokens: int) -> list[ArrayPlan]:
    """full_attention/<kind>/: like attention/<kind>/ for the chosen layers x heads only, with their
    model positions as the ``layer`` and ``head`` coordinates (and the array's attributes)."""
    base = f"full_attention/{kind}"
    plans = _attention_plans(base, full.block, n_tokens, {"layers": list(full.layers), "heads": list(full.heads)})
    for dim, index in (("layer", full.layers), ("head", full.heads)):
        plans.append(ArrayPlan(f"{base}/{dim}", np.asarray(index, np.int32), (dim,), None, None, "raw"))
    return plans


def _every_token(index: np.ndarray, n_tokens: int) -> bool:
    """Whether a block's token positions are 0 .. n_tokens - 1: then positions need no coordinate."""
    return len(index) == n_tokens and np.array_equal(index, np.arange(n_tokens))


def _hidden_plans(stream: str, block: HiddenBlock, n_tokens: int) -> list[ArrayPlan]:
    """hidden/<stream>/: the values (one shard, one inner chunk per layer).

    A stream over every token, in order, shares the example's ``token`` dimension (its rows are
    the rows of the token table); a stream over some tokens (LXMERT's language and vision
    streams) has its own dimension ``<stream>_token``, whose coordinate holds their positions.
    """
    L, T, D = block.values.shape
    every = _every_token(block.token_index, n_tokens)
    token_dim = "token" if every else f"{stream}_token"
    plans = [ArrayPlan(f"hidden/{stream}/hidden", block.values, ("layer", token_dim, "dim"), (1, T, D),
                       {"token_index": block.token_index}, "shuffle")]
    if not every:
        plans.append(ArrayPlan(f"hidden/{stream}/{token_dim}", np.asarray(block.token_index, np.int32),
                               (token_dim,), None, None, "raw"))
    return plans


def _example_document(record: Record, head_stats: dict | None, group: str | None) -> dict:
    """The example's group attributes: everything small (tokens, coordinates, prediction, head
    statistics, its summary row), as plain JSON."""
    pred = record.prediction
    summary = ExampleSummary(
        example_id=record.example_id, question=record.question, label=record.label, answer=pred.top,
        confidence=pred.confidence, answers=pred.answers, probabilities=pred.probabilities,
        correct=record.correct, source_key=record.source_key, n_tokens=record.n_tokens, group=group,
    )
    attrs = jsonable({
        "question": record.question, "tokens": list(record.tokens), "modality": list(record.modality),
        "prediction": {"answers": list(pred.answers), "probabilities": list(pred.probabilities)},
        "label": record.label, "source_key": record.source_key, "notices": list(record.notices),
        "meta": dict(record.meta), "summary": summary.as_dict(),
    })
    if record.generative:  # classifier records keep the documents they always had
        attrs["role"] = list(record.role)
        attrs["prediction"]["token_probabilities"] = list(pred.token_probabilities)
    # xarray: the token table's arrays are coordinates of the example's dataset.
    attrs["coordinates"] = " ".join(TOKEN_COORDS)
    # Small arrays, already plain JSON (kept out of jsonable's element-by-element walk).
    for name in TOKEN_ARRAYS:
        attrs[name] = array_to_json(getattr(record, name))
    if record.full_attention:  # which kinds' layers / heads have every query row (the app reads this)
        attrs["full_attention"] = {kind: {"layers": list(f.layers), "heads": list(f.heads)}
                                   for kind, f in record.full_attention.items()}
    attrs["head_stats"] = {kind: {"names": list(hs.names), "dims": ["stat", "layer", "head"],
                                  "values": array_to_json(np.asarray(hs.values, np.float32))}
                           for kind, hs in (head_stats or {}).items()}
    return attrs


def open_store(location: str | Path, mode: str = "r") -> VLStore:
    return VLStore(location, mode=mode)
