"""Hugging Face data sets through the ``datasets`` library, offline from a local copy.

    hf:/data/my_vqa                       a directory written by Dataset(Dict).save_to_disk
    hf:/data/my_vqa:validation            one split of a saved DatasetDict
    hf:/data/parquet_dir:train            a local directory ``datasets.load_dataset`` reads (parquet, imagefolder, ...)
    hf:HuggingFaceM4/VQAv2:validation     a hub name, from the local cache (HF_DATASETS_OFFLINE=1 works)
    hf:/data/my_vqa?image=img&question=q&answer=label

Columns (defaults in brackets): ``image`` [image] holds an ``Image`` feature, encoded bytes, or a
file path (relative to the data set's directory); ``question`` [question]; ``answer`` [answer] one
answer; ``answers`` [answers] one answer per annotator (a list of strings or of {"answer": ...},
as in VQAv2) -> VQA soft scores, or an object answer -> score; ``id`` [question_id] the key of a row.
Split: ``NAME:SPLIT`` in the spec, else ``--split``; a saved single Dataset has no splits.

Rows are read lazily: the text columns stream in batches and an image is fetched (undecoded)
only when its example's image is asked for.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from sources.base import DataSource, Example, answers_from_value, best_answer, parse_options, resolve_path
from core.errors import SourceError

OPTIONS = ("image", "question", "answer", "answers", "id", "split")
BATCH = 256


def _parse_name(rest: str) -> tuple[str, str | None]:
    """'NAME[:SPLIT]': the split is the part after the last ':' when it has no '/'."""
    name, sep, split = rest.rpartition(":")
    if sep and split and "/" not in split and "\\" not in split and name:
        return name, split
    return rest, None


def _load(name: str, split: str | None, spec: str):
    """(Dataset, base directory for relative image paths or None, split used)."""
    try:
        import datasets
    except ImportError:  # pragma: no cover - requirements install it
        raise SourceError("hf: data sets need the 'datasets' package: pip install datasets") from None
    path = resolve_path(name)
    if path.exists():
        if not path.is_dir():
            raise SourceError(f"{spec}: {path} is not a directory")
        saved = (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()
        try:
            ds = datasets.load_from_disk(str(path)) if saved else None
        except Exception as e:  # noqa: BLE001 - the library raises many kinds
            raise SourceError(f"{spec}: cannot load the saved data set in {path} ({e})") from None
        if ds is None:
            try:
                ds = datasets.load_dataset(str(path), split=split) if split else datasets.load_dataset(str(path))
            except Exception as e:  # noqa: BLE001
                raise SourceError(f"{spec}: cannot load {path} with datasets.load_dataset "
                                  f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        base = path
    else:
        if name.startswith((".", "/", "~")):
            raise SourceError(f"{spec}: directory {path} does not exist")
        try:
            ds = datasets.load_dataset(name, split=split) if split else datasets.load_dataset(name)
        except Exception as e:  # noqa: BLE001
            offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
            hint = (" The hub is offline here: download it on a connected machine (save_to_disk) and pass "
                    "the directory.") if offline else ""
            raise SourceError(f"{spec}: cannot load data set {name!r} "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__}).{hint}") from None
        base = None
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        if split is None:
            if len(splits) == 1:
                split = splits[0]
            else:
                raise SourceError(f"{spec}: the data set has splits {', '.join(splits)}; pick one (hf:NAME:SPLIT or "
                                  f"--split)")
        if split not in ds:
            raise SourceError(f"{spec}: no split {split!r}; splits: {', '.join(splits)}")
        ds = ds[split]
    if isinstance(ds, (datasets.IterableDataset, datasets.IterableDatasetDict)):
        raise SourceError(f"{spec}: streaming data sets are not supported; save a local copy with save_to_disk")
    return ds, base, split


class HFSource(DataSource):
    name = "hf"

    def __init__(self, name: str, *, split: str | None = None, image: str = "image", question: str = "question",
                 answer: str = "answer", answers: str = "answers", id: str = "question_id",
                 spec: str | None = None, strict_split: bool = False):
        self.spec = spec or f"hf:{name}"
        self.dataset_name = name
        try:
            ds, base, used = _load(name, split, self.spec)
        except SourceError:
            if strict_split or split is None:
                raise
            # --split came from the command line default (e.g. 'test'): fall back to the data set's own
            ds, base, used = _load(name, None, self.spec)
        self.split = used
        self.base = base
        cols = list(ds.column_names)
        for what, col in (("image", image), ("question", question)):
            if col not in cols:
                raise SourceError(f"{self.spec}: no {what} column {col!r} (columns: {', '.join(cols)}); "
                                  f"name it with ?{what}=COLUMN")
        self.image_column, self.question_column = image, question
        self.answer_column = answer if answer in cols else None
        self.answers_column = answers if answers in cols else None
        self.id_column = id if id in cols else None
        self.ds = ds
        text_cols = [c for c in (question, self.answer_column, self.answers_column, self.id_column) if c]
        self._text = ds.select_columns(list(dict.fromkeys(text_cols)))
        self._images = ds.select_columns([image])
        feat = self._images.features[image]
        try:
            import datasets

            if isinstance(feat, datasets.Image) and feat.decode:
                self._images = self._images.cast_column(image, datasets.Image(decode=False))
        except ImportError:  # pragma: no cover
            pass

    @classmethod
    def from_spec(cls, spec: str, rest: str, query: str, split: str | None = None, **options) -> "HFSource":
        opts = {**parse_options(query, OPTIONS, spec), **{k: v for k, v in options.items() if k in OPTIONS}}
        if not rest:
            raise SourceError(f"{spec!r}: expected hf:NAME_OR_DIR[:SPLIT]")
        name, spec_split = _parse_name(rest)
        chosen = spec_split or opts.pop("split", None)
        kwargs = {k: opts[k] for k in ("image", "question", "answer", "answers", "id") if k in opts}
        return cls(name, split=chosen or split, spec=spec, strict_split=chosen is not None, **kwargs)

    # ---- rows ------------------------------------------------------------------------------------
    def _where(self, i: int) -> str:
        return f"{self.spec.split('?')[0]} row {i}"

    def _image_bytes(self, i: int) -> bytes:
        where = self._where(i)
        value = self._images[i][self.image_column]
        if value is None:
            raise SourceError(f"{where}: the image ({self.image_column!r}) is empty")
        if isinstance(value, dict):
            if value.get("bytes"):
                return bytes(value["bytes"])
            value = value.get("path")
            if not value:
                raise SourceError(f"{where}: the image has neither bytes nor a path")
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if isinstance(value, str):
            import sources.base as base

            p = Path(value)
            if not p.is_absolute() and self.base is not None:
                p = self.base / p
            return base.read_image_file(p, where)
        if hasattr(value, "save"):  # a decoded PIL image (a column the library decodes itself)
            import io

            buf = io.BytesIO()
            value.save(buf, format="PNG")
            return buf.getvalue()
        raise SourceError(f"{where}: cannot read an image from a {type(value).__name__}")

    def _example(self, i: int, row: dict) -> Example:
        where = self._where(i)
        q = row.get(self.question_column)
        if q is None or not str(q).strip():
            raise SourceError(f"{where}: the question ({self.question_column!r}) is missing or empty")
        answers = {}
        if self.answers_column and row.get(self.answers_column) not in (None, "", []):
            answers = answers_from_value(row[self.answers_column], where)
        one = row.get(self.answer_column) if self.answer_column else None
        if not answers and one not in (None, ""):
            answers = answers_from_value(one, where)
        label = best_answer(answers, prefer=one.strip() if isinstance(one, str) else None)
        rid = row.get(self.id_column) if self.id_column else None
        key = f"hf/{Path(self.dataset_name).name}/{self.split or 'data'}/{rid if rid is not None else i}"
        return Example(source_key=key, question=str(q), load_image_bytes=lambda i=i: self._image_bytes(i),
                       label=label, answers=answers, meta={"where": where, "row": i})

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> Example:
        return self._example(i, self._text[i])

    def __iter__(self) -> Iterator[Example]:
        i = 0
        for batch in self._text.iter(batch_size=BATCH):
            cols = list(batch)
            n = len(batch[cols[0]]) if cols else 0
            for j in range(n):
                yield self._example(i, {c: batch[c][j] for c in cols})
                i += 1

    def answers(self) -> list[str]:
        from collections import Counter

        c = Counter(ex.label for ex in self if ex.label)
        return [a for a, _ in c.most_common()]
