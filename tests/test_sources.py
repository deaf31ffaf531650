"""The data set layer: every format built small in tmp_path, checked example by example."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from core.errors import SourceError
from sources import open_source
from sources.base import mark_label_set, soft_scores
from sources.vqa import normalize_answer

COLORS = [(255, 0, 0), (0, 0, 255), (0, 160, 0), (250, 200, 0)]


def write_png(path, color, size=(32, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def pixel(ex):
    return tuple(np.asarray(ex.image())[0, 0])


# ---- VQA layout -----------------------------------------------------------------------------------------
def write_vqa(tmp_path, questions, annotations=None, subtype="val2014", images=None):
    qf = tmp_path / "questions.json"
    qf.write_text(json.dumps({"data_subtype": subtype, "questions": questions}))
    af = None
    if annotations is not None:
        af = tmp_path / "annotations.json"
        af.write_text(json.dumps({"annotations": annotations}))
    img_dir = tmp_path / "images"
    img_dir.mkdir(exist_ok=True)
    for name, color in (images or {}).items():
        write_png(img_dir / name, color)
    return qf, af, img_dir


def ann(qid, image_id, answers, mc=None):
    return {"question_id": qid, "image_id": image_id, "answer_type": "other",
            "multiple_choice_answer": mc or answers[0],
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": k + 1} for k, a in enumerate(answers)]}


@pytest.fixture
def vqa_spec(tmp_path):
    qs = [{"image_id": 1, "question": "What color is it?", "question_id": 10},
          {"image_id": 2, "question": "How many dogs?", "question_id": 20}]
    anns = [ann(10, 1, ["x"] * 1 + ["y"] * 2 + ["z"] * 3 + ["w"] * 4, mc="w"),
            ann(20, 2, ["Two", "two.", "2", "three"])]
    images = {"COCO_val2014_000000000001.jpg": COLORS[0], "COCO_val2014_000000000002.jpg": COLORS[1]}
    qf, af, img = write_vqa(tmp_path, qs, anns, images=images)
    return f"vqa:{qf},{af},{img}"


def test_vqa_soft_scores_label_and_images(vqa_spec):
    src = open_source(vqa_spec)
    assert len(src) == 2
    a, b = list(src)
    # counts 1, 2, 3, 4 -> 1/3, 2/3, 1, 1 (min(1, count / 3))
    assert a.answers == pytest.approx({"x": 1 / 3, "y": 2 / 3, "z": 1.0, "w": 1.0})
    assert a.label == "w"  # tie at 1.0 goes to the multiple_choice_answer
    assert a.question == "What color is it?" and a.source_key == "vqa/10"
    # answers are normalized as the VQA evaluation does: 'Two', 'two.' and '2' are one answer
    assert b.answers == pytest.approx({"2": 1.0, "3": 1 / 3})
    assert b.label == "2"
    assert pixel(a)[:3] == pytest.approx(COLORS[0], abs=3)  # JPEG
    assert pixel(b)[2] > 200 and pixel(b)[0] < 50


def test_soft_scores_closed_form():
    assert soft_scores(["x", "y", "y", "z", "z", "z", "w", "w", "w", "w"]) == pytest.approx(
        {"x": 1 / 3, "y": 2 / 3, "z": 1.0, "w": 1.0})
    assert normalize_answer("The Two dogs!") == "2 dogs"
    assert normalize_answer("3,000") == "3000"


def test_vqa_without_annotations_and_image_pattern(tmp_path):
    qs = [{"image_id": 7, "question": "Is it red?", "question_id": 1}]
    qf, _, img = write_vqa(tmp_path, qs, images={"pic_0007.png": COLORS[0]})
    src = open_source(f"vqa:{qf},{img}?image_pattern=pic_{{image_id:04d}}.png")
    (ex,) = list(src)
    assert ex.label is None and ex.answers == {}
    assert pixel(ex) == COLORS[0]
    with pytest.raises(SourceError, match=r"only \{image_id\}"):
        open_source(f"vqa:{qf},{img}?image_pattern={{image_id.__class__}}")


def test_vqa_streaming_reads_only_what_is_recorded(tmp_path, monkeypatch, tiny_vilt):
    """200,000 questions over 4 real image files: streaming 100 examples reads 100 images."""
    import sources.base as base
    from pipeline.record import limited, record_examples
    from store.zarr_store import VLStore

    n = 200_000
    qs = [{"image_id": i % 4, "question": f"what is shape {i}?", "question_id": i} for i in range(n)]
    anns = [{"question_id": i, "multiple_choice_answer": "red", "answers": [{"answer": "red"}] * 3}
            for i in range(n)]
    images = {f"COCO_train2014_{k:012d}.jpg": COLORS[k] for k in range(4)}
    qf, af, img = write_vqa(tmp_path, qs, anns, subtype="train2014", images=images)
    reads = []
    real = base.read_image_file
    monkeypatch.setattr(base, "read_image_file", lambda p, w: reads.append(p) or real(p, w))
    src = open_source(f"vqa:{qf},{af},{img}")
    assert len(src) == n
    assert reads == []  # opening and counting read no image
    images_seen = [ex.image().size for ex in limited(iter(src), 100)]
    assert len(images_seen) == 100 and len(reads) == 100
    # the record pipeline reads one image per recorded example (10 here: recording costs ~0.1 s each)
    reads.clear()
    store = VLStore(tmp_path / "s.zarr", mode="a")
    res = record_examples(tiny_vilt, limited(iter(src), 10), store, "r", total=10, progress=False)
    assert res.written + res.skipped == 10 and not res.failed
    assert len(reads) == 10


def test_vqa_missing_image_names_file_and_row(tmp_path):
    qs = [{"image_id": 1, "question": "q?", "question_id": 5}, {"image_id": 99, "question": "q2?", "question_id": 6}]
    qf, af, img = write_vqa(tmp_path, qs, [], images={"COCO_val2014_000000000001.jpg": COLORS[0]})
    src = open_source(f"vqa:{qf},{af},{img}")
    exs = list(src)
    exs[0].image()
    with pytest.raises(SourceError, match=r"questions.json question #1 \(question_id 6\).*COCO_val2014_000000000099"):
        exs[1].image()


def test_vqa_bad_files(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        open_source(f"vqa:{tmp_path}/nope.json,{tmp_path}/a.json,{tmp_path}")
    qf = tmp_path / "q.json"
    qf.write_text(json.dumps({"questions": [{"image_id": 1}]}))
    with pytest.raises(SourceError, match=r"q.json question #0: missing 'question'"):
        len(open_source(f"vqa:{qf},{tmp_path}"))


# ---- folder + CSV / JSONL ------------------------------------------------------------------------------
def test_folder_csv(tmp_path):
    write_png(tmp_path / "img" / "red.png", COLORS[0])
    write_png(tmp_path / "img" / "blue.png", COLORS[1])
    (tmp_path / "questions.csv").write_text(
        "image,question,answer\n"
        "img/red.png,What color is the square?,red\n"
        "img/blue.png,\"What color, exactly?\",blue\n"
        "img/blue.png,Is it big?,\n")
    src = open_source(f"folder:{tmp_path}")
    exs = list(src)
    assert len(src) == 3 and [e.question for e in exs] == ["What color is the square?", "What color, exactly?",
                                                           "Is it big?"]
    assert [e.label for e in exs] == ["red", "blue", None]
    assert exs[0].answers == {"red": 1.0} and exs[2].answers == {}
    assert pixel(exs[0]) == COLORS[0] and pixel(exs[1]) == COLORS[1]


def test_folder_jsonl_soft_answers_and_custom_columns(tmp_path):
    write_png(tmp_path / "a.png", COLORS[2])
    lines = [{"pic": "a.png", "prompt": "how many?", "answers": ["2", "2", "3"], "id": "x1"},
             {"pic": "a.png", "prompt": "color?", "gold": "green"}]
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    src = open_source(f"folder:{tmp_path}?image=pic&question=prompt&answer=gold")
    a, b = list(src)
    assert a.answers == pytest.approx({"2": 2 / 3, "3": 1 / 3}) and a.label == "2"
    assert a.source_key.endswith("/x1")
    assert b.label == "green" and pixel(b) == COLORS[2]


def test_folder_errors_name_file_and_row(tmp_path):
    write_png(tmp_path / "ok.png", COLORS[0])
    (tmp_path / "q.csv").write_text("image,prompt\nok.png,hi\n")
    with pytest.raises(SourceError, match=r"q.csv: no question column 'question' \(columns: image, prompt\)"):
        open_source(f"folder:{tmp_path}")
    (tmp_path / "q.csv").write_text("image,question\nok.png,fine?\nmissing.png,where?\nbad.png,broken?\n")
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    ok, missing, bad = list(open_source(f"folder:{tmp_path}"))
    ok.image()
    with pytest.raises(SourceError, match=r"q.csv line 3: image file .*missing.png does not exist"):
        missing.image()
    with pytest.raises(SourceError, match=r"q.csv line 4: .*not an image"):
        bad.image()
    (tmp_path / "other.jsonl").write_text("{}\n")
    with pytest.raises(SourceError, match="several tables"):
        open_source(f"folder:{tmp_path}")
    (tmp_path / "other.jsonl").write_text('{"image": "ok.png", "question": "a"}\n{"image": "ok.png"}\n')
    src = open_source(f"folder:{tmp_path}?file=other.jsonl")
    with pytest.raises(SourceError, match=r"other.jsonl line 2: the question"):
        list(src)


# ---- Hugging Face datasets ------------------------------------------------------------------------------
def test_hf_saved_dataset_lazy_images(tmp_path, monkeypatch):
    import datasets

    imgs = [Image.new("RGB", (24, 24), c) for c in COLORS[:3]]
    ds = datasets.Dataset.from_dict({
        "img": imgs, "q": ["red?", "blue?", "green?"],
        "answers": [[{"answer": "yes"}] * 2 + [{"answer": "no"}], [{"answer": "no"}] * 3, []],
        "label": ["yes", "no", "maybe"],
    }, features=datasets.Features({"img": datasets.Image(), "q": datasets.Value("string"),
                                   "answers": [{"answer": datasets.Value("string")}],
                                   "label": datasets.Value("string")}))
    datasets.DatasetDict({"train": ds, "validation": ds.select([0])}).save_to_disk(str(tmp_path / "saved"))
    src = open_source(f"hf:{tmp_path / 'saved'}:train?image=img&question=q&answer=label")
    assert len(src) == 3
    exs = list(src)
    assert [e.question for e in exs] == ["red?", "blue?", "green?"]
    assert exs[0].answers == pytest.approx({"yes": 2 / 3, "no": 1 / 3}) and exs[0].label == "yes"
    assert exs[1].label == "no" and exs[2].answers == {"maybe": 1.0}  # empty 'answers' falls back to 'answer'
    assert [pixel(e) for e in exs] == COLORS[:3]
    # the split can come from --split too; an unknown split lists the known ones
    assert len(open_source(f"hf:{tmp_path / 'saved'}?image=img&question=q", split="validation")) == 1
    with pytest.raises(SourceError, match="no split 'test'; splits: train, validation"):
        open_source(f"hf:{tmp_path / 'saved'}:test?image=img&question=q")
    with pytest.raises(SourceError, match=r"no question column 'question' \(columns: img, q, answers, label\)"):
        open_source(f"hf:{tmp_path / 'saved'}:train?image=img")


def test_hf_single_dataset_with_paths(tmp_path):
    import datasets

    write_png(tmp_path / "d" / "p.png", COLORS[3])
    datasets.Dataset.from_dict({"image": ["p.png", "gone.png"], "question": ["yellow?", "where?"]}).save_to_disk(
        str(tmp_path / "d"))
    ok, gone = list(open_source(f"hf:{tmp_path / 'd'}", split="test"))  # a single Dataset has no splits
    assert pixel(ok) == COLORS[3] and ok.label is None
    with pytest.raises(SourceError, match=r"row 1: image file .*gone.png does not exist"):
        gone.image()
    with pytest.raises(SourceError, match="does not exist"):
        open_source(f"hf:{tmp_path / 'nothing'}")


# ---- multiple choice ------------------------------------------------------------------------------------
def test_multiple_choice_items_expand_into_groups(tmp_path):
    write_png(tmp_path / "k.png", COLORS[0])
    items = [{"id": "item-1", "image": "k.png", "question": "What is it?", "choices": ["a cat", "a dog", "a car"],
              "answer": 1},
             {"annot_id": "vcr-7", "img_fn": "k.png", "objects": ["person", "dog"],
              "question": ["Why", "is", [0], "next", "to", [1], "?"],
              "answer_choices": [[[0], "likes", "it", "."], ["It", "is", "raining", "."]], "answer_label": 0}]
    (tmp_path / "mc.jsonl").write_text("\n".join(json.dumps(x) for x in items))
    src = open_source(f"mc:{tmp_path / 'mc.jsonl'}")
    exs = list(src)
    assert len(src) == 5
    assert [e.group for e in exs] == ["item-1"] * 3 + ["vcr-7"] * 2
    assert exs[0].question == "What is it? [SEP] a cat"
    assert [e.label for e in exs[:3]] == ["no", "yes", "no"]
    assert [e.meta["is_correct"] for e in exs[:3]] == [False, True, False]
    assert exs[3].question == "Why is person0 next to dog1? [SEP] person0 likes it."
    assert pixel(exs[4]) == COLORS[0]
    # the separator is a real separator token for a BERT tokenizer
    from demo.train_vilt import build_tokenizer

    tok = build_tokenizer(["what is it a cat"])
    assert tok.convert_ids_to_tokens(tok(exs[0].question)["input_ids"]).count("[SEP]") == 2


def test_multiple_choice_in_a_folder_csv_and_errors(tmp_path):
    write_png(tmp_path / "k.png", COLORS[1])
    (tmp_path / "q.csv").write_text("image,question,choices,answer\nk.png,Color?,red|blue,blue\n")
    exs = list(open_source(f"folder:{tmp_path}"))
    assert [e.question for e in exs] == ["Color? [SEP] red", "Color? [SEP] blue"]
    assert [e.label for e in exs] == ["no", "yes"] and exs[0].group == exs[1].group
    (tmp_path / "bad.jsonl").write_text(json.dumps({"image": "k.png", "question": "q", "choices": ["x", "y"],
                                                    "answer": 5}))
    with pytest.raises(SourceError, match=r"bad.jsonl line 1: answer index 5 is outside the 2 choices"):
        list(open_source(f"mc:{tmp_path / 'bad.jsonl'}"))


# ---- shared behaviour -----------------------------------------------------------------------------------
def test_answers_outside_the_label_set_are_kept_and_marked(vqa_spec):
    exs = list(mark_label_set(open_source(vqa_spec), ["w", "2", "yes"]))
    assert len(exs) == 2  # nothing dropped
    assert exs[0].meta["label_in_model"] is True and exs[0].meta["answers_not_in_model"] == ["x", "y", "z"]
    assert exs[1].meta["label_in_model"] is True and exs[1].meta["answers_not_in_model"] == ["3"]
    exs = list(mark_label_set(open_source(vqa_spec), ["yes"]))
    assert exs[0].meta["label_in_model"] is False and exs[0].label == "w"


def test_unknown_specs_and_options(tmp_path):
    with pytest.raises(SourceError, match="unknown data set spec"):
        open_source("gqa:somewhere")
    with pytest.raises(SourceError, match="unknown option 'colour'"):
        open_source(f"folder:{tmp_path}?colour=red")
