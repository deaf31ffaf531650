"""Fine-tuning: a 2-step run on every data set format lowers the loss; checkpoints load back."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sources import open_source
from training.finetune import FinetuneConfig, finetune, loss_on, targets_for, vqa_loss

# tiny_vilt's label set: circle, red, yes, no, blue, triangle
ROWS = [("r.png", (255, 0, 0), "what color is the shape?", "red"),
        ("b.png", (0, 0, 255), "what color is the shape?", "blue"),
        ("r.png", (255, 0, 0), "is there a red circle?", "yes"),
        ("b.png", (0, 0, 255), "is there a red circle?", "no")]


def _images(d):
    d.mkdir(parents=True, exist_ok=True)
    for name, color, _, _ in ROWS:
        Image.new("RGB", (32, 32), color).save(d / name)


def make_folder_csv(root):
    _images(root)
    (root / "q.csv").write_text("image,question,answer\n" + "".join(f"{n},{q},{a}\n" for n, _, q, a in ROWS))
    return f"folder:{root}"


def make_folder_jsonl(root):
    _images(root)
    (root / "q.jsonl").write_text("".join(json.dumps({"image": n, "question": q, "answers": [a, a, a, "circle"]}) + "\n"
                                          for n, _, q, a in ROWS))
    return f"folder:{root}"


def make_vqa(root):
    _images(root / "img")
    ids = {"r.png": 1, "b.png": 2}
    for n in ids:
        (root / "img" / n).rename(root / "img" / f"im{ids[n]}.png")
    qs = [{"image_id": ids[n], "question": q, "question_id": i} for i, (n, _, q, _) in enumerate(ROWS)]
    anns = [{"question_id": i, "multiple_choice_answer": a, "answers": [{"answer": a}] * 2 + [{"answer": "blue"}]}
            for i, (_, _, _, a) in enumerate(ROWS)]
    (root / "q.json").write_text(json.dumps({"questions": qs}))
    (root / "a.json").write_text(json.dumps({"annotations": anns}))
    return f"vqa:{root}/q.json,{root}/a.json,{root}/img?image_pattern=im{{image_id}}.png"


def make_hf(root):
    import datasets

    ds = datasets.Dataset.from_dict({"image": [Image.new("RGB", (32, 32), c) for _, c, _, _ in ROWS],
                                     "question": [q for _, _, q, _ in ROWS], "answer": [a for *_, a in ROWS]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "question": datasets.Value("string"),
                                                                "answer": datasets.Value("string")}))
    ds.save_to_disk(str(root / "hf"))
    return f"hf:{root / 'hf'}"


def make_mc(root):
    _images(root)
    items = [{"id": "i1", "image": "r.png", "question": "what color is the shape?", "choices": ["red", "blue"],
              "answer": 0},
             {"id": "i2", "image": "b.png", "question": "what color is the shape?", "choices": ["red", "blue"],
              "answer": "blue"}]
    (root / "mc.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    return f"mc:{root / 'mc.jsonl'}"


FORMATS = {"folder-csv": make_folder_csv, "folder-jsonl": make_folder_jsonl, "vqa": make_vqa, "hf": make_hf,
           "mc": make_mc}


def fresh(tiny_vilt_dir):
    from adapters.vilt import ViltAdapter

    return ViltAdapter.load(str(tiny_vilt_dir))


def quick(**kw):
    base = dict(epochs=2, batch_size=4, lr=0.05, seed=0, progress=False, schedule="constant", weight_decay=0.0)
    return FinetuneConfig(**{**base, **kw})


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_two_steps_lower_the_loss_on_every_format(fmt, tmp_path, tiny_vilt_dir):
    spec = FORMATS[fmt](tmp_path)
    examples = list(open_source(spec))
    assert len(examples) == 4 and all(ex.answers for ex in examples)
    adapter = fresh(tiny_vilt_dir)
    before = loss_on(adapter, examples)
    res = finetune(adapter, examples, config=quick(), eval_examples=examples)
    after = loss_on(adapter, examples)
    assert res.steps == 2 and res.answers_added == () and res.skipped_examples == 0
    assert after < before - 1e-3, (before, after)
    assert len(res.history) == 2 and res.history[-1]["examples"] == len([e for e in examples if e.label])


def test_loss_is_bce_on_soft_scores(tiny_vilt_dir, tmp_path):
    examples = list(open_source(make_folder_jsonl(tmp_path)))
    t = targets_for(examples, ["circle", "red", "yes", "no", "blue", "triangle"])
    # answers [a, a, a, circle] -> a: 1.0, circle: 1/3
    assert t[0].tolist() == pytest.approx([1 / 3, 1.0, 0, 0, 0, 0])
    logits = torch.zeros(4, 6)
    # BCE at logit 0 is log 2 for every answer whatever the target: 6 answers summed, batch averaged
    assert float(vqa_loss(logits, t)) == pytest.approx(6 * np.log(2), rel=1e-6)


def test_classifier_only_leaves_the_encoder_alone_and_is_seeded(tiny_vilt_dir, tmp_path):
    examples = list(open_source(make_folder_csv(tmp_path)))
    a, b = fresh(tiny_vilt_dir), fresh(tiny_vilt_dir)
    enc_before = a.model.vilt.encoder.layer[0].attention.attention.query.weight.clone()
    cls_before = a.model.classifier[-1].weight.clone()
    ra = finetune(a, examples, config=quick(batch_size=2))
    rb = finetune(b, examples, config=quick(batch_size=2))
    assert ra.losses == rb.losses and len(ra.losses) == 4  # same seed, same shuffles, same losses
    assert torch.equal(a.model.vilt.encoder.layer[0].attention.attention.query.weight, enc_before)
    assert not torch.equal(a.model.classifier[-1].weight, cls_before)
    assert ra.parameters_trained == sum(p.numel() for p in a.model.classifier.parameters())
    full = fresh(tiny_vilt_dir)
    finetune(full, examples, config=quick(full=True, lr=1e-3, epochs=1))
    assert not torch.equal(full.model.vilt.encoder.layer[0].attention.attention.query.weight, enc_before)


def test_frozen_prefixes_keep_those_weights_while_the_rest_trains(tiny_vilt_dir, tmp_path):
    """``frozen``: every parameter named under the prefix keeps its value, the others train, only the
    others count as trained; an unknown prefix is a clear error, not a silent full fine-tune."""
    examples = list(open_source(make_folder_csv(tmp_path)))
    a = fresh(tiny_vilt_dir)
    before = {k: v.detach().clone() for k, v in a.model.named_parameters()}
    res = finetune(a, examples, config=quick(full=True, lr=1e-3, epochs=1, frozen=("vilt.encoder.layer.0.",)))
    after = dict(a.model.named_parameters())
    held = {k for k in before if k.startswith("vilt.encoder.layer.0.")}
    assert held and all(torch.equal(before[k], after[k]) for k in held)
    assert not torch.equal(before["vilt.encoder.layer.1.attention.attention.query.weight"],
                           after["vilt.encoder.layer.1.attention.attention.query.weight"])
    assert res.parameters_trained == sum(v.numel() for k, v in before.items() if k not in held)
    assert all(p.requires_grad for p in a.model.parameters())  # restored afterwards
    with pytest.raises(ValueError, match="no parameter of the model is named under vision_tower."):
        finetune(fresh(tiny_vilt_dir), examples, config=quick(full=True, frozen=("vision_tower.",)))


def test_new_answers_extend_the_classifier_and_the_checkpoint_loads(tiny_vilt_dir, tmp_path):
    from adapters.vilt import ViltAdapter

    _images(tmp_path)
    (tmp_path / "q.csv").write_text("image,question,answer\nr.png,what color is the shape?,crimson\n"
                                    "b.png,what color is the shape?,blue\n")
    examples = list(open_source(f"folder:{tmp_path}"))
    adapter = fresh(tiny_vilt_dir)
    img = examples[0].image()
    old_logits = adapter.forward_logits(**adapter.encode_batch([img], ["what color is the shape?"]))
    adapter.add_answers(["crimson"])
    new_logits = adapter.forward_logits(**adapter.encode_batch([img], ["what color is the shape?"]))
    assert adapter.answers()[-1] == "crimson" and new_logits.shape[-1] == 7
    assert torch.allclose(new_logits[:, :6], old_logits)  # old rows untouched

    adapter = fresh(tiny_vilt_dir)
    out = tmp_path / "ckpt"
    res = finetune(adapter, examples, out=out, config=quick(epochs=1, batch_size=2))
    assert res.answers_added == ("crimson",)
    loaded = ViltAdapter.load(str(out))
    assert loaded.answers() == adapter.answers() == ["circle", "red", "yes", "no", "blue", "triangle", "crimson"]
    inputs = adapter.encode_batch([img], ["what color is the shape?"])
    assert torch.allclose(loaded.forward_logits(**inputs), adapter.forward_logits(**inputs), atol=1e-5)
    saved = json.loads((out / "finetune_result.json").read_text())
    assert saved["answers_added"] == ["crimson"] and saved["steps"] == 1

    ignore = finetune(fresh(tiny_vilt_dir), examples, config=quick(epochs=1, new_answers="ignore"))
    assert ignore.skipped_examples == 1 and ignore.train_examples == 1 and ignore.answers_added == ()


def test_unreadable_images_are_left_out_and_reported(tiny_vilt_dir, tmp_path):
    _images(tmp_path)
    (tmp_path / "q.csv").write_text("image,question,answer\nr.png,what color is the shape?,red\n"
                                    "gone.png,what color is the shape?,blue\n")
    res = finetune(fresh(tiny_vilt_dir), open_source(f"folder:{tmp_path}"), config=quick(epochs=1))
    assert res.steps == 1 and len(res.failed) == 1
    key, why = res.failed[0]
    assert "q.csv line 3" in why and "gone.png" in why


def test_cli_finetune_writes_a_loadable_checkpoint(tiny_vilt_dir, tmp_path, capsys):
    import cli
    from adapters.vilt import ViltAdapter

    spec = make_folder_csv(tmp_path / "data")
    out = tmp_path / "out"
    rc = cli.main(["finetune", "--model", f"vilt:{tiny_vilt_dir}", "--dataset", spec, "--out", str(out),
                   "--epochs", "2", "--batch-size", "4", "--lr", "0.05", "--schedule", "constant"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "2 steps on 4 examples" in text
    assert ViltAdapter.load(str(out)).answers()[:6] == ["circle", "red", "yes", "no", "blue", "triangle"]
    rc = cli.main(["finetune", "--model", f"vilt:{tiny_vilt_dir}", "--dataset", f"folder:{tmp_path / 'none'}",
                   "--out", str(out)])
    assert rc == 1 and "does not exist" in capsys.readouterr().err
    rc = cli.main(["finetune", "--model", f"vilt:{tiny_vilt_dir}", "--dataset", spec, "--out", str(out), "--full",
                   "--max-steps", "1", "--freeze", "vilt.", "--freeze", "classifier.0."])
    assert rc == 0
    saved = json.loads((out / "finetune_result.json").read_text())
    assert saved["config"]["frozen"] == ["vilt.", "classifier.0."]  # only the last classifier layer trained
    assert saved["parameters_trained"] == sum(p.numel() for p in ViltAdapter.load(str(out)).model.classifier[1:].parameters())
    rc = cli.main(["finetune", "--model", f"vilt:{tiny_vilt_dir}", "--dataset", spec, "--out", str(out), "--full",
                   "--freeze", "vision_tower."])
    assert rc == 1 and "no parameter of the model is named under vision_tower." in capsys.readouterr().err



def test_cli_init_offers_every_demo_init():
    from commands.finetune import INIT_NAMES
    from demo.inits import INITS

    assert sorted(INIT_NAMES) == sorted(INITS)

def test_demo_training_is_a_thin_call_to_finetune(tmp_path):
    """Smoke run of demo/train_vilt.py on 32 easy-VQA questions: same output files as before."""
    from adapters.vilt import ViltAdapter
    from demo.train_vilt import train

    out = tmp_path / "demo"
    res = train(out, epochs=1, batch_size=16, hidden=32, layers=1, heads=2, limit=32)
    assert res["test_questions"] == 32 and 0.0 <= res["test_accuracy"] <= 1.0
    for f in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json",
              "training_result.json"):
        assert (out / f).is_file(), f
    assert len(ViltAdapter.load(str(out)).answers()) == 13


def test_cycles_run_in_sequence_and_count_epochs_and_steps_across_them(tiny_vilt_dir, tmp_path):
    from training.finetune import finetune_cycles

    examples = list(open_source(make_folder_csv(tmp_path)))
    a, b = fresh(tiny_vilt_dir), fresh(tiny_vilt_dir)
    first, second = quick(batch_size=2, epochs=2), quick(batch_size=2, epochs=1, lr=1e-4)
    res, history, steps = finetune_cycles(a, examples, [first, second], eval_examples=examples)
    assert [(h["epoch"], h["cycle"]) for h in history] == [(1, 0), (2, 0), (3, 1)]
    assert steps == 6 and [h["step"] for h in history] == [2, 4, 6]
    assert res.config["lr"] == 1e-4  # the last cycle's result
    # the same as two finetune calls by hand: the second cycle starts from the first's weights
    finetune(b, examples, config=first)
    by_hand = finetune(b, examples, config=second, eval_examples=examples)
    assert res.losses == by_hand.losses


def test_accuracy_by_kind_groups_easyvqa_questions(tiny_vilt):
    from sources.easyvqa import EasyVQA, question_kind
    from training.finetune import accuracy_by_kind, evaluate

    exs = [ex for _, ex in zip(range(24), EasyVQA("test"))]
    kinds = {question_kind(ex) for ex in exs}
    assert kinds <= {"yes/no", "shape", "color"} and len(kinds) >= 2
    by_kind = accuracy_by_kind(tiny_vilt, exs, question_kind)
    assert set(by_kind) == kinds
    counts = {k: sum(question_kind(ex) == k for ex in exs) for k in kinds}
    overall = sum(by_kind[k] * counts[k] for k in kinds) / len(exs)
    assert overall == pytest.approx(evaluate(tiny_vilt, exs)["accuracy"], abs=1e-3)
