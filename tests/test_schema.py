"""Record validation: a bad field fails at construction, naming the field."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from store.schema import AttentionBlock, HiddenBlock, Prediction
from core.errors import RecordError
from tests.records import grid_record


def test_valid_record_is_frozen_and_read_only():
    rec = grid_record()
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.question = "x"
    with pytest.raises(ValueError):
        rec.attention["self"].values[0, 0, 0, 0] = 1
    assert rec.correct is True and rec.single_stream
    assert list(rec.indices("text")) == [1, 2]


@pytest.mark.parametrize("change, field", [
    (dict(modality=("text",) * 3), "modality"),
    (dict(example_id=""), "example_id"),
    (dict(token_boxes=np.zeros((2, 4))), "token_boxes"),
    (dict(token_grid=np.zeros((3, 3))), "token_grid"),
    (dict(image=np.zeros((4, 4), np.uint8)), "image"),
    (dict(attention={}), "attention"),
])
def test_invalid_fields_are_named(change, field):
    rec = grid_record()
    kwargs = {f.name: getattr(rec, f.name) for f in dataclasses.fields(rec)}
    kwargs.update(change)
    with pytest.raises(RecordError, match=f"^{field}"):
        type(rec)(**kwargs)


def test_unknown_modality_value_rejected():
    rec = grid_record()
    kwargs = {f.name: getattr(rec, f.name) for f in dataclasses.fields(rec)}
    kwargs["modality"] = ("speech",) + rec.modality[1:]
    with pytest.raises(RecordError, match="modality.*speech"):
        type(rec)(**kwargs)


def test_image_box_outside_image_rejected():
    rec = grid_record()
    kwargs = {f.name: getattr(rec, f.name) for f in dataclasses.fields(rec)}
    boxes = rec.token_boxes.copy()
    boxes[-1] = (0.5, 0.5, 1.5, 1.0)
    kwargs["token_boxes"] = boxes
    with pytest.raises(RecordError, match="token_boxes"):
        type(rec)(**kwargs)


def test_attention_rows_must_sum_to_one():
    rec = grid_record()
    bad = rec.attention["self"].values.astype(np.float32) * 1.5
    kwargs = {f.name: getattr(rec, f.name) for f in dataclasses.fields(rec)}
    idx = np.arange(rec.n_tokens)
    kwargs["attention"] = {"self": AttentionBlock(values=bad, query_index=idx, key_index=idx)}
    with pytest.raises(RecordError, match=r"attention\['self'\].*sum"):
        type(rec)(**kwargs)


def test_attention_block_dims_and_index_lengths():
    with pytest.raises(RecordError, match="attention.values"):
        AttentionBlock(values=np.ones((2, 2, 2)), query_index=[0, 1], key_index=[0, 1])
    with pytest.raises(RecordError, match="query_index"):
        AttentionBlock(values=np.full((1, 1, 2, 2), 0.5), query_index=[0], key_index=[0, 1])
    with pytest.raises(RecordError, match="hidden.token_index"):
        HiddenBlock(values=np.ones((1, 2, 3)), token_index=[0, 0])


def test_prediction_validation():
    with pytest.raises(RecordError, match="sorted"):
        Prediction(answers=("a", "b"), probabilities=(0.1, 0.9))
    with pytest.raises(RecordError, match=r"\[0, 1\]"):
        Prediction(answers=("a",), probabilities=(1.5,))
    with pytest.raises(RecordError, match="2 answers but 1"):
        Prediction(answers=("a", "b"), probabilities=(0.5,))


@pytest.mark.parametrize("torch_loaded", [True, False])
def test_float32_conversion_and_row_sums_match_numpy(torch_loaded, monkeypatch):
    """The float16 fast path (torch, when loaded) gives numpy's answers, whatever the array's layout."""
    import sys

    import torch  # noqa: F401 - loaded, as when recording

    from store.schema import as_float32, row_sums

    if not torch_loaded:
        monkeypatch.setitem(sys.modules, "torch", None)
    rng = np.random.RandomState(0)
    base = rng.rand(3, 2, 7, 9).astype(np.float16)
    read_only = base.copy()
    read_only.setflags(write=False)
    cases = {"contiguous": base, "read-only": read_only, "reversed": base[:, :, ::-1, ::-1],
             "transposed": base.transpose(1, 0, 3, 2), "big-endian": base.astype(">f2"),
             "float32": base.astype(np.float32)}
    for name, arr in cases.items():
        got = as_float32(arr)
        assert got.dtype == np.float32, name
        np.testing.assert_array_equal(got, np.asarray(arr).astype(np.float32), err_msg=name)
        np.testing.assert_allclose(row_sums(arr), np.asarray(arr).astype(np.float32).sum(-1), rtol=1e-6,
                                   err_msg=name)
    assert not np.shares_memory(as_float32(base), base)  # a new array: callers may write to it
