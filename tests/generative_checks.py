"""Checks every generative family's tests run on its tiny model: the recorded answer rows against
transformers' own incremental decoding, boxes covering an area, and the `cli.py record` round trip."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def covering_cells(record, image_size: tuple[int, int], area) -> set[tuple[int, int]]:
    """(row, col) of the record's image tokens whose box overlaps ``area`` (x0, y0, x1, y1 in source
    pixels of an image of ``image_size`` (width, height))."""
    w, h = image_size
    x0, y0, x1, y1 = area[0] / w, area[1] / h, area[2] / w, area[3] / h
    out = set()
    for i in record.indices("image"):
        b = record.token_boxes[i]
        if b[0] < x1 and b[2] > x0 and b[1] < y1 and b[3] > y0:
            out.add(tuple(int(v) for v in record.token_grid[i]))
    return out


def assert_answer_rows_match_generate(adapter, image: Image.Image, question: str):
    """generate(output_attentions=True) computes each step's row with the KV cache; the record's rows
    come from one causal forward afterwards: they must be the same rows, the answer tokens and their
    probabilities the ones generate chose. Returns (record, number of prompt tokens)."""
    rec = adapter.run(image, question)
    _, _, prompt = adapter._encode(image, question)
    with torch.no_grad():
        out = adapter.model.generate(**prompt.inputs, max_new_tokens=adapter.max_new_tokens, do_sample=False,
                                     output_attentions=True, output_logits=True, return_dict_in_generate=True,
                                     eos_token_id=list(adapter.eos_ids), pad_token_id=adapter.pad_id)
    n_prompt = prompt.inputs["input_ids"].shape[1]
    gen = out.sequences[0, n_prompt:].tolist()
    answer = rec.answer_indices()
    assert [rec.tokens[i] for i in answer] == adapter.tokenizer.convert_ids_to_tokens(gen)
    assert rec.prediction.top == adapter.tokenizer.decode(gen, skip_special_tokens=True).strip()
    probs = [float(torch.softmax(step[0], -1)[t]) for step, t in zip(out.logits, gen)]
    np.testing.assert_allclose(rec.prediction.token_probabilities, probs, rtol=1e-5)
    block = rec.attention["self"]
    row_of = {int(q): k for k, q in enumerate(block.query_index)}
    for step, layers in enumerate(out.attentions):
        position = n_prompt - 1 + step  # the query whose row produced generated token `step`
        for layer, att in enumerate(layers):
            expect = att[0, :, -1, :].float().numpy()  # (head, keys so far)
            got = block.values[layer, :, row_of[position], :expect.shape[-1]].astype(np.float32)
            np.testing.assert_allclose(got, expect, atol=2e-3)
            assert not block.values[layer, :, row_of[position], expect.shape[-1]:].any()  # later keys: 0
    return rec, n_prompt


def record_and_read_back(model: str, adapter_name: str, out, capsys, *, run: str = "gen"):
    """`cli.py record --model MODEL` of two examples into ``out``; checks what every generative store
    holds and returns (the run's reader, one record read back)."""
    import cli
    from store.zarr_store import VLStore

    assert cli.main(["record", "--model", model, "--limit", "2", "--out", str(out), "--run", run]) == 0
    assert "2 written" in capsys.readouterr().out
    reader = VLStore(out).run(run)
    assert reader.provenance["adapter"] == adapter_name and "eager" in reader.provenance["config"]["attention"]
    eid = reader.example_ids()[0]
    back = reader.record(eid)
    assert back.generative and back.role.count("answer") == len(back.prediction.token_probabilities) >= 1
    assert reader.tokens(eid)["role"] == list(back.role)
    names, values = reader.head_stats(eid)["self"]  # from the full maps: image rows included
    assert np.isfinite(values[list(names).index("image_to_image")]).all()
    summary = next(s for s in reader.summaries() if s.example_id == eid)
    assert summary.answer == back.prediction.top and summary.correct == back.correct
    return reader, back
