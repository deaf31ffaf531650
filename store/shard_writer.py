"""Write one example's files: the fast shard encoder and the commit protocol on disk and object stores.

Zarr's own write path costs a few event-loop trips and thread hops per chunk, which for a small
model took longer than the forward pass. This module encodes an example's arrays itself, into
exactly the files zarr would write (metadata documents made by zarr once per dtype and rank, then
filled in; chunks compressed as COMPRESSORS says; shards in zarr's ``sharding_indexed`` layout, chunks in Morton
order, index and CRC32C at the end), and writes them:

- ``write_example`` on a local directory: plain ``os`` calls from the calling thread;
- elsewhere (an fsspec object store): one trip to zarr's event loop setting every key.

If zarr's defaults ever differ from what the encoder produces, ``encode_arrays`` returns None and
zarr itself writes the arrays, so the format cannot drift (tests/test_store_fast_write.py compares
both paths byte for byte). Either way an example's group document, carrying ``committed``, is
written after every array.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import zarr
from zarr.core.sync import sync

from store.json_values import jsonable


class ArrayPlan(NamedTuple):
    """One array of an example: where, what, dimension names, inner chunk shape, attributes, codec.

    ``inner_chunks`` None: one chunk holding the whole array. Otherwise the array is one shard
    (one file) holding chunks of that shape, each readable on its own. ``codec``: a key of
    COMPRESSORS (how its chunks are compressed).
    """

    name: str
    data: np.ndarray
    dims: tuple[str, ...]
    inner_chunks: tuple[int, ...] | None
    attrs: dict | None
    codec: str = "zstd"


# Example arrays keep their chunk file directly in the array's directory ("c.0.0.0.0"), not under
# zarr's default nested "c/0/0/0/0": a nested key costs up to four directories, and creating
# directories was most of a small model's store write. Readers (zarr, xarray) follow the encoding
# named in each array's metadata, so stores written either way read.
CHUNK_KEY_ENCODING = {"name": "default", "configuration": {"separator": "."}}

# How the fast path compresses, by the ArrayPlan's ``codec``; zarr must describe the same codecs in
# its metadata or the fast path steps aside.
# - "shuffle" (attention, hidden states: float16): blosc's byte shuffle then lz4. On the demo
#   model's attention blocks about a fifth of the time of zstd level -1 for files about a seventh
#   smaller (the shuffle puts the float16 exponents together); hidden states, which zstd did not
#   compress at all, shrink by about 15% for the same time.
# - "zstd" (the image): zstd's fast mode (level -1).
# - "raw" (the token table: a few hundred bytes): no compression, nothing to gain.
ZSTD_LEVEL = -1
_ZSTD = {"name": "zstd", "configuration": {"level": ZSTD_LEVEL, "checksum": False}}
BLOSC = {"cname": "lz4", "clevel": 5, "shuffle": "shuffle", "blocksize": 0}
COMPRESSORS = ("shuffle", "zstd", "raw")
_INDEX_CODECS = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]


def _compressor_docs(codec: str, itemsize: int) -> list[dict]:
    """The compressor entries zarr writes in an array's codec list after its bytes / vlen-utf8 codec."""
    if codec == "shuffle":
        return [{"name": "blosc", "configuration": {"typesize": itemsize, **BLOSC}}]
    return [_ZSTD] if codec == "zstd" else []


def zarr_compressors(codec: str, itemsize: int):
    """The zarr codec objects for ``codec`` (what the metadata template and zarr's own writer use)."""
    from zarr.codecs import BloscCodec, ZstdCodec

    if codec == "shuffle":
        return (BloscCodec(typesize=itemsize, **BLOSC),)
    return (ZstdCodec(level=ZSTD_LEVEL),) if codec == "zstd" else None


def _little_endian_then(codecs, compressors: list[dict]) -> bool:
    """Whether a codec list is bytes (little-endian; no endianness for one-byte types) then ``compressors``."""
    codecs = [dict(c) for c in codecs or ()]
    return (len(codecs) == 1 + len(compressors) and codecs[0].get("name") == "bytes"
            and codecs[0].get("configuration", {}).get("endian", "little") == "little" and codecs[1:] == compressors)


_EMPTY = 2**64 - 1  # a shard index entry for a chunk that is not stored


STRING = "string"  # the dtype key of a text array (tokens, modality): zarr's variable-length UTF-8 strings
_VLEN_UTF8 = {"name": "vlen-utf8", "configuration": {}}


def dtype_key(data: np.ndarray) -> str:
    """The template key of an array's dtype: numpy's dtype string, or STRING for text."""
    return STRING if data.dtype.kind in "UOT" else data.dtype.str


@functools.lru_cache(maxsize=32)
def _metadata_template(dtype: str, ndim: int, sharded: bool, codec: str = "zstd") -> str | None:
    """zarr's own metadata document for a dtype, rank, layout and codec (JSON text), or None if the
    fast path can't match it.

    Made once per (dtype, rank, sharded, codec) by zarr itself, creating the array in memory; the
    fast path fills in shape, chunk shapes, dimension names and attributes, the only fields that
    differ between our arrays. ``dtype`` is a numpy dtype string or STRING.
    """
    from zarr.storage import MemoryStore

    mem = MemoryStore()
    ones = (1,) * ndim
    text = dtype == STRING
    itemsize = 1 if text else np.dtype(dtype).itemsize
    if codec not in COMPRESSORS or (text and codec == "shuffle"):
        return None
    zarr.create_array(store=mem, name="a", shape=ones, dtype=str if text else np.dtype(dtype),
                      chunks=ones, shards=ones if sharded else None, dimension_names=("d",) * ndim,
                      chunk_key_encoding=CHUNK_KEY_ENCODING, compressors=zarr_compressors(codec, itemsize))
    doc = json.loads(sync(mem.get("a/zarr.json", prototype=_prototype())).to_bytes())
    codecs = [dict(c) for c in doc["codecs"]]
    expected = _compressor_docs(codec, itemsize)
    if sharded:
        if text or len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
            return None
        conf = codecs[0]["configuration"]
        if (not _little_endian_then(conf.get("codecs"), expected) or conf.get("index_codecs") != _INDEX_CODECS
                or conf.get("index_location") != "end"):
            return None
    elif text:
        if codecs != [_VLEN_UTF8, *expected]:
            return None
    elif not _little_endian_then(codecs, expected):
        return None
    if doc.get("chunk_key_encoding") != CHUNK_KEY_ENCODING:
        return None
    return json.dumps(doc)


def _compress_function(codec: str, itemsize: int):
    """bytes -> the chunk file's bytes, as zarr's codecs for ``codec`` write them."""
    if codec == "shuffle":
        import numcodecs.blosc as blosc

        # Blosc's own threads (two here) fight torch and the other processes for the cores: on a
        # busy machine they made an example's encoding up to five times slower, for no gain on
        # chunks this small. Process-wide, as numcodecs offers it (zarr's blosc reads follow it).
        blosc.use_threads = False
        cname, level, blocksize = BLOSC["cname"].encode(), BLOSC["clevel"], BLOSC["blocksize"]
        # numcodecs' compress itself: what Blosc(...).encode calls, without its per-call checks
        return lambda block: blosc.compress(block, cname, level, blosc.SHUFFLE, blocksize, itemsize)
    if codec == "zstd":
        from numcodecs.zstd import compress as zstd_compress

        return lambda block: zstd_compress(block, ZSTD_LEVEL)
    return lambda block: np.ascontiguousarray(block).tobytes()


def _prototype():
    from zarr.core.buffer import default_buffer_prototype

    return default_buffer_prototype()


@functools.lru_cache(maxsize=64)
def _shard_order(counts: tuple[int, ...]) -> tuple[tuple[int, ...], ...]:
    """The order zarr lays chunks out in a shard (Morton order); any order reads the same, this
    one makes the file byte-for-byte what zarr writes."""
    try:
        from zarr.core.indexing import morton_order_iter

        return tuple(tuple(int(i) for i in c) for c in morton_order_iter(counts))
    except ImportError:  # moved in a later zarr: C order is just as valid
        return tuple(np.ndindex(*counts))


def _encode_shard(data: np.ndarray, inner: tuple[int, ...], compress) -> bytes | None:
    """One shard holding the whole array: the compressed inner chunks, then the index of their
    (offset, length) as little-endian uint64 and the index's CRC32C (zarr's sharding_indexed format,
    index at the end). None if the inner chunks do not tile the array."""
    import google_crc32c

    if any(s % c for s, c in zip(data.shape, inner)):
        return None
    counts = tuple(s // c for s, c in zip(data.shape, inner))
    # (count_0, inner_0, count_1, inner_1, ...) -> (count_0, count_1, ..., inner_0, inner_1, ...):
    # blocks[idx] is chunk idx, without slicing arithmetic per chunk.
    split = [n for pair in zip(counts, inner) for n in pair]
    ndim = data.ndim
    blocks = data.reshape(split).transpose([*range(0, 2 * ndim, 2), *range(1, 2 * ndim, 2)])
    order = _shard_order(counts)
    encoded = [compress(np.ascontiguousarray(blocks[idx])) for idx in order]
    lengths = np.fromiter((len(e) for e in encoded), dtype="<u8", count=len(encoded))
    index = np.full(counts + (2,), _EMPTY, dtype="<u8")
    where = tuple(np.array(order, dtype=np.intp).T)
    index[where + (0,)] = np.cumsum(lengths) - lengths
    index[where + (1,)] = lengths
    raw = index.tobytes()
    encoded.append(raw)
    encoded.append(np.array([google_crc32c.value(raw)], dtype="<u4").tobytes())
    return b"".join(encoded)


class Encoded(NamedTuple):
    """An example's files keyed relative to its group (array and subgroup metadata, chunks, shards)
    and the metadata document of every node below the group, by relative path (for consolidation)."""

    files: list[tuple[str, bytes]]
    metadata: dict[str, dict]


def encode_arrays(arrays: list[ArrayPlan]) -> Encoded | None:
    """Metadata documents and encoded chunk / shard files of an example's arrays.

    Zarr's own write path costs a few event-loop trips and thread hops per chunk, which for a
    small model took longer than the forward pass. Here each metadata document is zarr's own
    (``_metadata_template``) with the shape, chunks, names and attributes filled in, and each file
    is what zarr's codecs produce: little-endian C-order bytes (text: zarr's vlen-utf8 encoding)
    compressed as the plan's ``codec`` says, in one chunk or in one shard with zarr's index. Every subgroup's document
    carries the consolidated metadata of what is below it, as ``zarr.consolidate_metadata`` writes
    it. If zarr's defaults ever differ, returns None and the caller falls back to zarr's writer,
    so the format cannot drift (a test compares both paths).
    """
    sep = CHUNK_KEY_ENCODING["configuration"]["separator"]
    files: list[tuple[str, bytes]] = []
    metadata: dict[str, dict] = {}
    for plan in arrays:
        encoded = _encode_array(plan)
        if encoded is None:
            return None
        doc, payload = encoded
        metadata[plan.name] = doc
        files.append((f"{plan.name}/zarr.json", json.dumps(doc).encode()))  # no indent: C encoder
        files.append((f"{plan.name}/{sep.join(['c'] + ['0'] * len(doc['shape']))}", payload))
    for group in sorted({"/".join(p.split("/")[:k]) for p in metadata for k in range(1, p.count("/") + 1)}):
        metadata[group] = _NESTED_GROUP
    for group in sorted(g for g, d in metadata.items() if d is _NESTED_GROUP):
        doc = {"attributes": {}, "zarr_format": 3, "consolidated_metadata": consolidated(metadata, group),
               "node_type": "group"}
        files.append((f"{group}/zarr.json", json.dumps(doc).encode()))
    return Encoded(files=files, metadata=metadata)


def _encode_array(plan: ArrayPlan) -> tuple[dict, bytes] | None:
    """(metadata document, chunk or shard bytes) of one array, or None where the fast path steps aside."""
    data = np.ascontiguousarray(plan.data)
    sharded = plan.inner_chunks is not None
    key = dtype_key(data)
    template = _metadata_template(key, data.ndim, sharded, plan.codec)
    if template is None or data.ndim == 0 or min(data.shape) < 1:
        return None
    compress = _compress_function(plan.codec, 1 if key == STRING else data.dtype.itemsize)
    doc = json.loads(template)
    doc["shape"] = list(data.shape)
    doc["chunk_grid"]["configuration"]["chunk_shape"] = list(data.shape)  # one chunk / shard
    doc["dimension_names"] = list(plan.dims)
    doc["attributes"] = jsonable(plan.attrs or {})
    if key == STRING:
        from numcodecs.vlen import VLenUTF8

        return doc, compress(np.frombuffer(VLenUTF8().encode(data.astype(object)), np.uint8))
    little = data.astype(data.dtype.newbyteorder("<"), copy=False)
    if not sharded:
        return doc, compress(little)
    inner = tuple(int(c) for c in plan.inner_chunks)
    doc["codecs"][0]["configuration"]["chunk_shape"] = list(inner)
    payload = _encode_shard(little, inner, compress)
    return None if payload is None else (doc, payload)


# How a group below the consolidated one appears in consolidated metadata (zarr lists every node
# flat, by relative path, and shows a nested group's own consolidated metadata empty).
_NESTED_GROUP = {"attributes": {}, "zarr_format": 3,
                 "consolidated_metadata": {"kind": "inline", "must_understand": False, "metadata": {}},
                 "node_type": "group"}


def consolidated(metadata: dict[str, dict], group: str = "") -> dict:
    """The ``consolidated_metadata`` of ``group`` (relative path, "" the example): every node below it."""
    prefix = f"{group}/" if group else ""
    return {"kind": "inline", "must_understand": False,
            "metadata": {p.removeprefix(prefix): d for p, d in metadata.items() if p.startswith(prefix) and p != group}}


def _write_files(base: str, encoded: list[tuple[str, bytes]]) -> None:
    """Write every file of an example under the existing directory ``base``.

    Plain ``os`` calls on string paths: an example is a dozen small files, and pathlib objects and
    buffered file objects cost more than the writes themselves.
    """
    made = set()
    for key, data in encoded:
        parent = key.rpartition("/")[0]
        if parent and parent not in made:  # each directory once, parents first
            parts = parent.split("/")
            for k in range(1, len(parts) + 1):
                sub = "/".join(parts[:k])
                if sub not in made:
                    try:
                        os.mkdir(f"{base}/{sub}")
                    except FileExistsError:
                        pass
                    made.add(sub)
        _write_file(f"{base}/{key}", data)


_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0)


def _write_file(path: str, data: bytes) -> None:
    fd = os.open(path, _CREATE, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def group_doc(attrs: dict, consolidated_metadata: dict | None = None) -> bytes:
    """An example's group document with the commit marker: the last thing written for it. With the
    consolidated metadata of its arrays, so zarr and xarray open the whole example in one read."""
    doc = {"zarr_format": 3, "node_type": "group", "attributes": {**attrs, "committed": True}}
    if consolidated_metadata is not None:
        doc["consolidated_metadata"] = consolidated_metadata
    return json.dumps(doc).encode()


def is_committed_doc(raw: bytes) -> bool:
    """Whether an example's group document carries the commit marker (anything unreadable: no)."""
    return _committed_attributes(raw) is not None


def _committed_attributes(raw: bytes) -> dict | None:
    """The attributes of an example's group document if it carries the commit marker, else None."""
    try:
        doc = json.loads(raw)
    except ValueError:  # half-written
        return None
    attrs = doc.get("attributes") if isinstance(doc, dict) else None
    return attrs if isinstance(attrs, dict) and attrs.get("committed") is True else None


NOT_LOCAL = object()  # committed_attributes of a store that is not a local directory


def committed_attributes(store, path: str):
    """The attributes of the committed example at ``path`` of a local store (its group document read
    with one plain file read: zarr's open_group cost about 2 ms per example, most of a small model's
    index rewrite), None when it is not committed, or ``NOT_LOCAL`` for other stores (ask zarr)."""
    from zarr.storage import LocalStore

    if not isinstance(store, LocalStore):
        return NOT_LOCAL
    try:
        with open(f"{store.root / path}/zarr.json", "rb") as f:
            raw = f.read()
    except OSError:  # missing: not committed
        return None
    return _committed_attributes(raw)


def _write_example_local(root: Path, arrays: list, attrs: dict) -> bool | None:
    """The commit protocol on a local directory; None when zarr must encode (codecs differ)."""
    import shutil

    encoded = encode_arrays(arrays)
    if encoded is None:
        return None
    base = str(root)
    try:
        os.mkdir(base)  # the usual case: a new example (the run's examples/ directory exists)
    except FileNotFoundError:
        os.makedirs(base)
    except FileExistsError:
        try:
            with open(f"{base}/zarr.json", "rb") as f:
                if is_committed_doc(f.read()):
                    return False
        except OSError:  # no metadata: not committed
            pass
        shutil.rmtree(base)  # the leftover of a killed run
        os.mkdir(base)
    _write_files(base, encoded.files)
    # The group document, with the commit marker, goes last and appears atomically.
    tmp = f"{base}/.zarr.json.{os.getpid()}.partial"
    _write_file(tmp, group_doc(attrs, consolidated(encoded.metadata)))
    os.replace(tmp, f"{base}/zarr.json")
    return True


def write_example(store, path: str, arrays: list[ArrayPlan], attrs: dict) -> bool:
    """Write one example at ``path`` of a zarr store: its arrays, then its group document with the
    commit marker. False (nothing written) when it is already committed; a leftover of a killed
    run at ``path`` is replaced."""
    from zarr.storage import LocalStore

    if isinstance(store, LocalStore):
        # Local disk: write in this thread. Handing each example to zarr's event-loop thread and
        # its file-writing threads cost more than the writing itself on a busy machine.
        done = _write_example_local(store.root / path, arrays, attrs)
        if done is not None:
            return done
    return sync(_write_example_async(store, path, arrays, attrs))


async def _write_example_async(store, path: str, arrays: list[ArrayPlan], attrs: dict) -> bool:
    import asyncio

    proto = _prototype()
    raw = await store.get(f"{path}/zarr.json", prototype=proto)
    if raw is not None and is_committed_doc(raw.to_bytes()):
        return False
    # Anything at this path is the leftover of a killed run: remove it first.
    await store.delete_dir(path)
    encoded = await asyncio.to_thread(encode_arrays, arrays)
    if encoded is None:  # zarr's default codecs differ from the fast path's: let zarr encode
        metadata = await _write_arrays_with_zarr(store, path, arrays)
    else:
        await asyncio.gather(*(store.set(f"{path}/{key}", proto.buffer.from_bytes(data))
                               for key, data in encoded.files))
        metadata = consolidated(encoded.metadata)
    # The group document, with the commit marker, goes last: until it is there, readers
    # ignore this example (an example directory without it is a leftover).
    await store.set(f"{path}/zarr.json", proto.buffer.from_bytes(group_doc(attrs, metadata)))
    return True


async def _write_arrays_with_zarr(store, path: str, arrays: list[ArrayPlan]) -> dict:
    """Write the arrays with zarr itself and consolidate every subgroup (deepest first) with
    ``zarr.consolidate_metadata``; returns the example group's consolidated metadata."""
    import asyncio
    import warnings

    from zarr.api import asynchronous as azarr

    # zarr makes a group document for each missing parent; the fast path makes none (the store's
    # ``examples/`` is a plain directory): the ones it makes are removed below, so both write the same.
    parts = path.split("/")
    parents = [f"{'/'.join(parts[:k])}/zarr.json" for k in range(1, len(parts))] + ["zarr.json"]
    missing = [key for key in parents if not await store.exists(key)]
    grp = await azarr.open_group(store=store, path=path, mode="w")

    async def put(plan: ArrayPlan):
        data = np.ascontiguousarray(plan.data)
        text = dtype_key(data) == STRING
        arr = await grp.create_array(plan.name, shape=data.shape, dtype=str if text else data.dtype,
                                     chunks=plan.inner_chunks or data.shape,
                                     shards=data.shape if plan.inner_chunks else None,
                                     dimension_names=plan.dims, attributes=jsonable(plan.attrs or {}),
                                     chunk_key_encoding=CHUNK_KEY_ENCODING,
                                     compressors=zarr_compressors(plan.codec, 1 if text else data.dtype.itemsize))
        await arr.setitem(Ellipsis, data.astype(object) if text else data)

    await asyncio.gather(*(put(a) for a in arrays))
    groups = {"/".join(a.name.split("/")[:k]) for a in arrays for k in range(1, a.name.count("/") + 1)}
    with warnings.catch_warnings():  # "not part of the Zarr format 3 specification": zarr-python reads it
        warnings.simplefilter("ignore")
        for group in sorted(groups, key=lambda g: -g.count("/")):
            await azarr.consolidate_metadata(store, path=f"{path}/{group}")
        root = await azarr.consolidate_metadata(store, path=path)
    for key in missing:
        await store.delete(key)
    return root.metadata.consolidated_metadata.to_dict()
