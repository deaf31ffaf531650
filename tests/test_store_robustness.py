"""The store under bad conditions: corrupt, foreign, newer, read-only, concurrent, killed and resumed.

Plus property-based tests (hypothesis) of Record validation: every invalid record fails with a
RecordError naming its field; every valid one constructs and survives a store round trip.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from store.schema import SCHEMA_VERSION, AttentionBlock, HiddenBlock, Prediction, Record
from core.errors import RecordError
from core.errors import StoreError
from store.zarr_store import VLStore
from tests.store_helpers import PROVENANCE, same_record, synthetic_record

ROOT = Path(__file__).resolve().parent.parent


def make_store(path: Path, n: int = 3, run: str = "syn") -> Path:
    w = VLStore(path, mode="a").writer(run, PROVENANCE)
    for i in range(n):
        w.write(synthetic_record(i))
    w.consolidate()
    return path


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ---- corrupt, foreign, newer ------------------------------------------------------------------------
@pytest.mark.parametrize("garbage", [b"{not json", b"\x00\xff\xfe\x01", b"[1, 2]", b'{"zarr_format": 3}', b""])
@pytest.mark.parametrize("mode", ["r", "a"])
def test_corrupt_root_metadata(tmp_path, garbage, mode):
    path = make_store(tmp_path / "s.zarr", n=1)
    (path / "zarr.json").write_bytes(garbage)
    with pytest.raises(StoreError, match="corrupt|not a Zarr store|not a VL-Lens store") as e:
        VLStore(path, mode=mode)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_corrupt_example_is_skipped_and_others_still_read(tmp_path):
    path = make_store(tmp_path / "s.zarr", n=3)
    shutil.rmtree(path / "runs/syn/index")  # force a scan of the examples
    (path / "runs/syn/examples/ex0001/zarr.json").write_text("{garbage")
    reader = VLStore(path).run("syn")
    assert reader.example_ids() == ["ex0000", "ex0002"]
    assert same_record(reader.record("ex0002"), synthetic_record(2))
    with pytest.raises(StoreError, match="no committed example"):
        reader.record("ex0001")


@pytest.mark.parametrize("field_name,damage,message", [
    ("token_boxes", lambda a: a.update(token_boxes=a["token_boxes"][:-1]), r"token_boxes must have shape"),
    ("token_grid", lambda a: a.update(token_grid="garbage"), r"token_grid is not a numeric array"),
    ("head_stats", lambda a: a["head_stats"]["self"].update(values=[[1.0]]), r"head_stats\['self'\] must be"),
    ("head_stats", lambda a: a["head_stats"]["self"].update(values=[["x"]]), r"head_stats\['self'\] is not"),
    ("head_stats", lambda a: a["head_stats"]["self"].pop("names"), r"head_stats\['self'\] has no list"),
    ("head_stats", lambda a: a.update(head_stats=[1, 2]), r"head_stats\['\?'\] has no list"),
])
def test_malformed_arrays_in_the_example_document_are_a_clear_error(tmp_path, field_name, damage, message):
    """Version 2 keeps token coordinates and head statistics as JSON in the example's document: a
    damaged one gives one StoreError naming the example and the field, not a numpy traceback."""
    from analysis.head_stats import compute_head_stats

    rec = synthetic_record(0)
    VLStore(tmp_path / "s.zarr", mode="a").writer("syn", PROVENANCE).write(rec, compute_head_stats(rec))
    doc_path = tmp_path / "s.zarr" / "runs" / "syn" / "examples" / rec.example_id / "zarr.json"
    doc = json.loads(doc_path.read_text())
    damage(doc["attributes"])
    doc_path.write_text(json.dumps(doc))
    reader = VLStore(tmp_path / "s.zarr").run("syn")
    read = reader.head_stats if field_name == "head_stats" else reader.tokens
    with pytest.raises(StoreError, match=message) as e:
        read(rec.example_id)
    assert f"example {rec.example_id!r}" in str(e.value) and "corrupt" in str(e.value)
    assert "\n" not in str(e.value)
    if field_name != "head_stats":
        with pytest.raises(StoreError, match="corrupt"):
            reader.record(rec.example_id)


def test_corrupt_run_group(tmp_path):
    path = make_store(tmp_path / "s.zarr", n=1)
    (path / "runs/syn/zarr.json").write_text("[]")
    with pytest.raises(StoreError, match="run 'syn'.*cannot be read"):
        VLStore(path).run("syn")


def test_zarr_stores_from_other_tools_are_refused_and_left_untouched(tmp_path):
    v3 = tmp_path / "v3.zarr"
    g = zarr.open_group(str(v3), mode="w")
    g.attrs["made_by"] = "another tool"
    g.create_array("weights", shape=(4,), dtype="f4")[:] = np.arange(4)
    v2 = tmp_path / "v2.zarr"
    zarr.open_group(str(v2), mode="w", zarr_format=2).create_array("x", shape=(3,), dtype="i4")[:] = 7
    arr = tmp_path / "array.zarr"
    zarr.open_array(str(arr), mode="w", shape=(2, 2), dtype="f8")[:] = 1.0
    for path in (v3, v2, arr):
        before = tree(path)
        with pytest.raises(StoreError, match="another tool"):
            VLStore(path)
        with pytest.raises(StoreError, match="another tool"):
            VLStore(path, mode="a")
        assert tree(path) == before  # nothing written into someone else's store


def test_newer_schema_version_is_refused_with_upgrade_advice(tmp_path):
    path = make_store(tmp_path / "s.zarr", n=1)
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["vl_lens"]["schema_version"] = SCHEMA_VERSION + 1
    (path / "zarr.json").write_text(json.dumps(meta))
    before = tree(path)
    for mode in ("r", "a"):
        with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}.*Upgrade VL-Lens"):
            VLStore(path, mode=mode)
    assert tree(path) == before
    meta["attributes"]["vl_lens"]["schema_version"] = "1"  # a string: corrupt, not "newer"
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match="unreadable store schema version"):
        VLStore(path)


def test_app_shows_a_corrupt_store_as_one_error(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    path = make_store(tmp_path / "s.zarr", n=1)
    (path / "zarr.json").write_text("{garbage")
    monkeypatch.setenv("VL_LENS_STORE", str(path))
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60)
    at.run()
    assert not at.exception
    assert any("corrupt" in e.value for e in at.error)


# ---- read-only -------------------------------------------------------------------------------------
def test_store_opened_read_only_reads_and_refuses_to_write(tmp_path):
    path = make_store(tmp_path / "s.zarr", n=2)
    before = tree(path)
    store = VLStore(path, mode="r")
    assert store.run("syn").example_ids() == ["ex0000", "ex0001"]
    with pytest.raises(StoreError, match="read-only"):
        store.writer("syn", PROVENANCE)
    assert tree(path) == before


RO_SCRIPT = textwrap.dedent("""
    import sys, json
    sys.path.insert(0, {root!r})
    from store.zarr_store import VLStore, StoreError
    from tests.store_helpers import PROVENANCE, synthetic_record
    out = {{"ids": VLStore({path!r}).run("syn").example_ids()}}
    try:
        VLStore({path!r}, mode="a").writer("syn", PROVENANCE).write(synthetic_record(9))
        out["write"] = "wrote"
    except StoreError as e:
        out["write"] = "StoreError: " + str(e)
    except Exception as e:
        out["write"] = type(e).__name__ + ": " + str(e)
    print(json.dumps(out))
""")


def _run_ro_script(cmd_prefix: list[str], path: Path, env=None) -> dict:
    script = RO_SCRIPT.format(root=str(ROOT), path=str(path))
    out = subprocess.run(cmd_prefix + [sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root for a mount namespace")
def test_store_on_a_read_only_file_system(tmp_path):
    """A read-only bind mount (what a Space or a shared data volume gives): reads work, writes say why."""
    path = make_store(tmp_path / "s.zarr", n=2)
    before = tree(path)
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("mount namespaces are not available here")
    mount = ["unshare", "-m", "sh", "-c", f'mount --bind "{path}" "{path}" && mount -o remount,bind,ro "{path}" '
             f'&& exec "$@"', "sh"]
    res = _run_ro_script(mount, path)
    assert res["ids"] == ["ex0000", "ex0001"]
    assert res["write"].startswith("StoreError: ") and "read-only" in res["write"], res
    assert tree(path) == before


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to switch to nobody")
def test_store_without_write_permission_for_a_non_root_user():
    """chmod a-w only stops non-root users, so the check runs as nobody (uid 65534)."""
    base = Path(tempfile.mkdtemp(prefix="vl-lens-ro-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        path = make_store(base / "s.zarr", n=2)
        for p in [path, *path.rglob("*")]:
            os.chmod(p, 0o555 if p.is_dir() else 0o444)
        before = tree(path)
        env = {**os.environ, "HOME": str(base)}
        res = _run_ro_script(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"], path, env=env)
        assert res["ids"] == ["ex0000", "ex0001"]
        assert res["write"].startswith("StoreError: ") and "permission denied" in res["write"], res
        assert tree(path) == before
    finally:
        for p in [base, *base.rglob("*")]:
            os.chmod(p, 0o755)
        shutil.rmtree(base, ignore_errors=True)


# ---- readers while a writer writes ------------------------------------------------------------------
WRITER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from store.zarr_store import VLStore
    from tests.store_helpers import PROVENANCE, synthetic_record
    from pathlib import Path
    deadline = time.time() + 120  # start once both readers are polling (else a fast write is over before them)
    while not all(Path({ready!r} + str(k)).exists() for k in range(2)) and time.time() < deadline:
        time.sleep(0.02)
    w = VLStore({path!r}, mode="a").writer("syn", PROVENANCE)
    for i in range({n}):
        w.write(synthetic_record(i))
        if i % 5 == 4:
            w.consolidate()  # the index is rewritten while readers use it
        time.sleep(0.1)  # a writer paced like a model run, so the readers see the run grow
    w.consolidate()
""")

READER = textwrap.dedent("""
    import sys, json, time
    sys.path.insert(0, {root!r})
    from store.zarr_store import VLStore
    from tests.store_helpers import same_record, synthetic_record
    from pathlib import Path
    done = Path({done!r})
    seen, checked, problems = [], 0, []
    deadline = time.time() + 120
    Path({ready!r} + sys.argv[1]).touch()
    while time.time() < deadline:
        finished = done.exists()
        try:
            store = VLStore({path!r})
            reader = store.run("syn") if "syn" in store.runs() else None
        except Exception as e:
            problems.append("open: " + repr(e)); reader = None
        if reader is not None:
            ids = reader.example_ids()
            seen.append(len(ids))
            if len(set(ids)) != len(ids):
                problems.append("duplicate ids")
            for eid in ids[-3:]:  # the newest ones are the ones being written around
                try:
                    if not same_record(reader.record(eid), synthetic_record(int(eid[2:]))):
                        problems.append("different " + eid)
                    checked += 1
                except Exception as e:
                    problems.append(eid + ": " + repr(e))
        if finished:
            break
    print(json.dumps({{"seen": seen, "checked": checked, "problems": problems[:5]}}))
""")


@pytest.mark.slow
def test_two_readers_never_see_a_half_written_example(tmp_path):
    path = tmp_path / "s.zarr"
    VLStore(path, mode="a")
    done = tmp_path / "writer-done"
    n = 20
    fmt = dict(root=str(ROOT), path=str(path), n=n, done=str(done), ready=str(tmp_path / "reader-ready-"))
    readers = [subprocess.Popen([sys.executable, "-c", READER.format(**fmt), str(k)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for k in range(2)]
    try:
        writer = subprocess.run([sys.executable, "-c", WRITER.format(**fmt)], capture_output=True, text=True,
                                timeout=300)
        assert writer.returncode == 0, writer.stderr
        done.touch()
        results = []
        for r in readers:
            out, err = r.communicate(timeout=180)
            assert r.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for r in readers:
            if r.poll() is None:
                r.kill()
                r.wait()
    for res in results:
        assert not res["problems"], res["problems"]
        assert res["checked"] > 0
        assert res["seen"][-1] == n
        assert res["seen"] == sorted(res["seen"])  # committed examples never disappear
    # the readers overlapped the writer: at least one saw a partly written run
    assert any(0 < s < n for res in results for s in res["seen"]), [r["seen"] for r in results]


def test_uncommitted_leftover_is_invisible_and_rewritten_on_resume(tmp_path):
    """What a crash mid-example leaves (arrays, no commit marker) is ignored, then replaced."""
    path = make_store(tmp_path / "s.zarr", n=2)
    shutil.rmtree(path / "runs/syn/index")
    leftover = path / "runs/syn/examples/ex0001"
    meta = json.loads((leftover / "zarr.json").read_text())
    del meta["attributes"]["committed"]
    (leftover / "zarr.json").write_text(json.dumps(meta))
    shutil.rmtree(leftover / "hidden")  # killed before its hidden states were written
    reader = VLStore(path).run("syn")
    assert reader.example_ids() == ["ex0000"]
    w = VLStore(path, mode="a").writer("syn", PROVENANCE)
    assert w.committed_ids() == {"ex0000"}
    assert w.write(synthetic_record(1)) is True
    assert w.write(synthetic_record(1)) is False  # committed now: never written twice
    assert same_record(VLStore(path).run("syn").record("ex0001"), synthetic_record(1))


@pytest.mark.slow
def test_record_run_killed_mid_run_then_resumed(tmp_path, tiny_vilt_dir, tiny_vilt):
    """`cli.py record` killed with SIGKILL after a few examples, then rerun: nothing lost, nothing twice."""
    from sources.easyvqa import EasyVQA

    out = tmp_path / "store.zarr"
    limit = 60  # enough that the run cannot finish between two polls, however fast recording gets
    cmd = [sys.executable, str(ROOT / "cli.py"), "record", "--model", f"vilt:{tiny_vilt_dir}",
           "--dataset", "easyvqa", "--split", "test", "--limit", str(limit), "--out", str(out), "--run", "tiny"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}

    def committed() -> list[str]:
        try:
            store = VLStore(out)
            return store.run("tiny").example_ids() if "tiny" in store.runs() else []
        except StoreError:
            return []

    proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 240
        while len(committed()) < 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    before = committed()
    assert 2 <= len(before) < limit
    assert not (out / "runs/tiny/index").exists()  # killed before consolidation

    # every example committed before the kill is intact: equal to a fresh run of the same input
    src = EasyVQA("test")
    by_id = {}
    for i in range(limit):
        ex = src[i]
        by_id.setdefault(tiny_vilt.run(ex.image(), ex.question).example_id, ex)
    reader = VLStore(out).run("tiny")
    for eid in before:
        ex = by_id[eid]
        fresh = tiny_vilt.run(ex.image(), ex.question, label=ex.label, source_key=ex.source_key)
        assert same_record(reader.record(eid), fresh)

    rerun = subprocess.run(cmd, cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{len(by_id) - len(before)} written, {limit - (len(by_id) - len(before))} already there" in rerun.stdout
    after = VLStore(out).run("tiny")
    ids = after.example_ids()
    assert len(ids) == len(set(ids)) == len(by_id)  # no duplicates, count right
    assert set(ids) == set(by_id)
    assert set(before) <= set(ids)
    names = sorted(p.name for p in (out / "runs/tiny/examples").iterdir() if p.is_dir())
    assert names == sorted(ids)  # no uncommitted leftover remains
    for eid in before:
        ex = by_id[eid]
        assert same_record(after.record(eid), tiny_vilt.run(ex.image(), ex.question, label=ex.label,
                                                           source_key=ex.source_key))


# ---- property-based: Record validation --------------------------------------------------------------
@st.composite
def record_kwargs(draw):
    n_text = draw(st.integers(0, 5))
    grid = draw(st.integers(0, 3))
    layers = draw(st.integers(1, 3))
    heads = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.RandomState(seed)
    words = [f"w{k}" for k in range(n_text)]
    question = " ".join(words)
    tokens = ["[CLS]"] + words + [f"patch {k}" for k in range(grid * grid)]
    modality = ["special"] + ["text"] * n_text + ["image"] * grid * grid
    n = len(tokens)
    boxes = np.full((n, 4), np.nan, np.float32)
    for k in range(grid * grid):
        r, c = divmod(k, grid)
        boxes[1 + n_text + k] = (c / grid, r / grid, (c + 1) / grid, (r + 1) / grid)
    spans = np.full((n, 2), -1, np.int32)
    pos = 0
    for k, w in enumerate(words):
        spans[1 + k] = (pos, pos + len(w))
        pos += len(w) + 1
    logits = rng.randn(layers, heads, n, n) * draw(st.floats(0.1, 5.0))
    attn = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    idx = np.arange(n)
    k = draw(st.integers(1, 4))
    probs = sorted(rng.rand(k).tolist(), reverse=True)
    return dict(
        example_id=draw(st.text("abcdef0123456789", min_size=1, max_size=24)), question=question,
        tokens=tuple(tokens), modality=tuple(modality), token_boxes=boxes,
        token_grid=np.full((n, 2), -1, np.int32), token_spans=spans,
        image=rng.randint(0, 256, (draw(st.integers(1, 9)), draw(st.integers(1, 9)), 3)).astype(np.uint8),
        attention={"self": AttentionBlock(values=attn.astype(np.float32), query_index=idx, key_index=idx)},
        hidden={"joint": HiddenBlock(values=rng.randn(layers + 1, n, 4).astype(np.float32), token_index=idx)},
        prediction=Prediction(answers=tuple(f"a{j}" for j in range(k)), probabilities=tuple(probs)),
        label=draw(st.one_of(st.none(), st.sampled_from(["a0", "a1", "zz"]))),
    )


def _bad_rows(kw):
    attn = kw["attention"]["self"]
    v = attn.values.astype(np.float32).copy()
    v[..., 0] += 0.5
    return {"self": AttentionBlock(values=v, query_index=attn.query_index, key_index=attn.key_index)}


def _past_tokens(kw):
    attn = kw["attention"]["self"]
    n = len(kw["tokens"])
    return {"self": AttentionBlock(values=attn.values, query_index=np.arange(n) + 1, key_index=attn.key_index)}


# (field named in the error, how to break the record)
MUTATIONS = [
    ("example_id", lambda kw: {"example_id": ""}),
    ("example_id", lambda kw: {"example_id": "a/b"}),
    ("question", lambda kw: {"question": None}),
    ("tokens", lambda kw: {"tokens": ()}),
    ("tokens", lambda kw: {"tokens": (1,) * len(kw["tokens"])}),
    ("modality", lambda kw: {"modality": kw["modality"][:-1]}),
    ("modality", lambda kw: {"modality": ("audio",) * len(kw["tokens"])}),
    ("token_boxes", lambda kw: {"token_boxes": kw["token_boxes"][:, :3]}),
    ("token_boxes", lambda kw: {"modality": ("image",) * len(kw["tokens"])}),  # text tokens have NaN boxes
    ("token_boxes", lambda kw: {"token_boxes": np.full((len(kw["tokens"]), 4), 1.5, np.float32),
                                "modality": ("image",) * len(kw["tokens"])}),  # outside the image
    ("token_grid", lambda kw: {"token_grid": np.zeros((len(kw["tokens"]) + 1, 2), np.int32)}),
    ("token_spans", lambda kw: {"token_spans": np.zeros((len(kw["tokens"]), 3), np.int32)}),
    ("token_spans", lambda kw: {"token_spans": np.full((len(kw["tokens"]), 2), len(kw["question"]) + 1)}),
    ("image", lambda kw: {"image": kw["image"].astype(np.float32)}),
    ("image", lambda kw: {"image": kw["image"][..., 0]}),
    ("image", lambda kw: {"image": kw["image"][:0]}),
    ("attention", lambda kw: {"attention": {}}),
    ("attention", lambda kw: {"attention": {"a/b": kw["attention"]["self"]}}),
    ("attention['self']", lambda kw: {"attention": _bad_rows(kw)}),
    ("attention['self'].query_index", lambda kw: {"attention": _past_tokens(kw)}),
    ("attention['self']", lambda kw: {"attention": {"self": kw["hidden"]["joint"]}}),
    ("hidden['joint'].token_index", lambda kw: {"hidden": {"joint": HiddenBlock(
        values=kw["hidden"]["joint"].values, token_index=np.arange(len(kw["tokens"])) + 1)}}),
    ("prediction", lambda kw: {"prediction": ("a0", 0.5)}),
    ("label", lambda kw: {"label": 3}),
    ("meta", lambda kw: {"meta": [1, 2]}),
]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kw=record_kwargs(), which=st.integers(0, len(MUTATIONS) - 1))
def test_invalid_records_raise_record_error_naming_the_field(kw, which):
    field_name, mutate = MUTATIONS[which]
    broken = {**kw, **mutate(kw)}
    with pytest.raises(RecordError) as e:
        Record(**broken)
    assert str(e.value).startswith(field_name), (field_name, str(e.value))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kw=record_kwargs())
def test_valid_records_construct_and_are_read_only(kw):
    rec = Record(**kw)
    assert rec.n_tokens == len(kw["tokens"])
    assert rec.attention["self"].values.dtype == np.float16
    assert rec.correct == (None if kw["label"] is None else kw["label"] == "a0")
    with pytest.raises(ValueError):
        rec.token_boxes[0, 0] = 0.5  # arrays are frozen
    with pytest.raises(Exception):
        rec.example_id = "x"  # type: ignore[misc]


@pytest.mark.parametrize("field_name,kwargs", [
    ("attention.values", dict(values=np.zeros((2, 2, 2)), query_index=[0, 1], key_index=[0, 1])),
    ("attention.values", dict(values=np.zeros((1, 1, 2, 2), np.int32), query_index=[0, 1], key_index=[0, 1])),
    ("attention.query_index", dict(values=np.full((1, 1, 2, 2), 0.5), query_index=[0], key_index=[0, 1])),
    ("attention.key_index", dict(values=np.full((1, 1, 2, 2), 0.5), query_index=[0, 1], key_index=[0, 0])),
    ("attention.query_index", dict(values=np.full((1, 1, 2, 2), 0.5), query_index=[0.0, 1.0], key_index=[0, 1])),
])
def test_attention_block_validation_names_the_field(field_name, kwargs):
    with pytest.raises(RecordError) as e:
        AttentionBlock(**kwargs)
    assert str(e.value).startswith(field_name), str(e.value)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                HealthCheck.function_scoped_fixture])
@given(kw=record_kwargs())
def test_valid_records_survive_a_store_round_trip(tmp_path, kw):
    rec = Record(**kw)
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "s.zarr"
    VLStore(path, mode="a").writer("r", PROVENANCE).write(rec)
    assert same_record(VLStore(path).run("r").record(rec.example_id), rec)


def test_app_shows_a_damaged_example_as_one_error(tmp_path, monkeypatch):
    """A view whose read of one example fails with a StoreError (a damaged example document, say)
    shows that one line; the router catches it, so no page needs its own handler."""
    from streamlit.testing.v1 import AppTest

    import store.zarr_store as zs

    path = make_store(tmp_path / "s.zarr", n=1)
    reader = VLStore(path).run("syn")
    damaged = zs.StoreError("example 'ex0000' of run 'syn' is corrupt: token_boxes is not a numeric array")
    doc_path = path / "runs" / "syn" / "examples" / "ex0000" / "zarr.json"
    doc = json.loads(doc_path.read_text())
    doc_path.write_text(json.dumps({**doc, "attributes": {**doc["attributes"], "token_boxes": "x"}}))
    with pytest.raises(StoreError):  # the kind of error a damaged document gives (tested above)
        reader.tokens("ex0000")

    def fail(self, eid):
        raise damaged

    # The default page (the example browser) reads each example's image: make that read fail.
    monkeypatch.setattr(zs.RunReader, "image", fail)
    monkeypatch.setenv("VL_LENS_STORE", str(path))
    at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    assert [e.value for e in at.error] == [str(damaged)]
