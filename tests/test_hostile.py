"""Hostile input: every user error is one ``error:`` line naming the problem, exit code 2, no
traceback, and no partially written output (no ``adapter/``, ``run.json`` or half-written files).

Cases (numbered as in the robustness issue): 1 malformed JSON line · 2 missing field · 3 label not
among the classes / answer index out of range · 4 empty split, ``--train-size`` too large · 5
unknown task · 6 target module matching nothing · 7 target that is not ``nn.Linear`` · 8 invalid
r, α0, ρ0, τ · 9 adapter on a different base model · 10 truncated / corrupted safetensors · 11
pickle files (never unpickled) · 12 NaN loss · 13 disk full / read-only output · 14 tokenizer
without a pad token · 15 inputs longer than ``max_length``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bara.harness.cli import app

runner = CliRunner()

# tests of behaviour that needs a patch outside this suite's files (see the report); they pass once applied


# -- fixtures ------------------------------------------------------------------------------
def _save_tiny_bert(folder: Path, hidden: int) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from bara.harness.backbones import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=128)
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny random BERT (hidden 32) with the real MiniLM tokenizer, all offline."""
    return _save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), 32)


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory) -> Path:
    """The same architecture with hidden size 48: adapters of `model_dir` do not fit it."""
    return _save_tiny_bert(tmp_path_factory.mktemp("tiny-bert-48"), 48)


ROWS = [{"text": f"a {['dull', 'great'][i % 2]} film number {i}", "label": i % 2} for i in range(32)]


def _jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    _jsonl(folder / "train.jsonl", ROWS[:24])
    _jsonl(folder / "dev.jsonl", ROWS[24:])
    return folder


@pytest.fixture(scope="module")
def trained_run(model_dir, data_dir, tmp_path_factory) -> Path:
    """A finished 2-step BaRA run (adapter/, run.json, train_log.json)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    result = runner.invoke(app, ["train", "--model", str(model_dir), "--task", "classification", "--data", str(data_dir),
                                 "--steps", "2", "--batch-size", "8", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def run_copy(trained_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    return copy


# -- helpers -------------------------------------------------------------------------------
def _invoke(*args) -> object:
    return runner.invoke(app, [str(a) for a in args])


def _train(model_dir, out, *args) -> object:
    return _invoke("train", "--model", model_dir, "--out", out, "--steps", "2", "--batch-size", "8", *args)


def assert_user_error(result, *fragments: str) -> str:
    """Exit code 2, exactly one ``error:`` line holding every fragment, no traceback; returns the line."""
    output = result.output
    assert result.exit_code == 2, f"exit {result.exit_code}: {output}\n{result.exception!r}"
    assert "Traceback" not in output, output
    # (a progress bar may precede the error on the same terminal line: split at carriage returns too)
    lines = ["error:" + part.split("error:", 1)[1] for part in re.split(r"[\r\n]", output) if "error:" in part]
    assert len(lines) == 1, output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def assert_no_output(out: Path, allowed: tuple[str, ...] = ()) -> None:
    """No adapter, run.json, train_log.json or stray temporary files in ``out``."""
    left = [f for f in files_under(out) if not any(f == a or f.startswith(a + os.sep) for a in allowed)]
    assert left == [], left


# -- 1, 2: malformed lines -------------------------------------------------------------------
def test_1_malformed_json_line_names_file_and_line(model_dir, tmp_path):
    bad = _jsonl(tmp_path / "bad.jsonl", [ROWS[0], '{"text": "broken", ', ROWS[1]])
    result = _train(model_dir, tmp_path / "out", "--task", "classification", "--data", bad)
    assert_user_error(result, "bad.jsonl:2:", "invalid JSON")
    assert_no_output(tmp_path / "out")


def test_2_missing_field_names_line_and_field(model_dir, tmp_path):
    bad = _jsonl(tmp_path / "bad.jsonl", [ROWS[0], {"txt": "no text key", "label": 1}])
    result = _train(model_dir, tmp_path / "out", "--task", "classification", "--data", bad)
    assert_user_error(result, "bad.jsonl:2:", "missing field 'text'", "txt, label")
    assert_no_output(tmp_path / "out")


# -- 3: labels / answers outside the allowed values ----------------------------------------------
def test_3_label_not_among_classes_of_a_builtin_task(model_dir, tmp_path, monkeypatch):
    sst2 = tmp_path / "data" / "sst2"
    sst2.mkdir(parents=True)
    (sst2 / "train.tsv").write_text("sentence\tlabel\ngood film\t1\nbad film\t0\nodd film\t2\n")
    (sst2 / "dev.tsv").write_text("sentence\tlabel\nfine\t1\n")
    monkeypatch.setenv("BARA_DATA_DIR", str(tmp_path / "data"))
    result = _train(model_dir, tmp_path / "out", "--task", "sst2")
    assert_user_error(result, "train.tsv:4:", "'label'", "'2'", "allowed: 0, 1")
    assert_no_output(tmp_path / "out")


def test_3_answer_index_out_of_range(model_dir, tmp_path):
    data = _jsonl(tmp_path / "mc.jsonl", [{"question": "q?", "choices": ["a", "b"], "answer": 1},
                                          {"question": "q?", "choices": ["a", "b"], "answer": 3}])
    result = _train(model_dir, tmp_path / "out", "--task", "multiple_choice", "--data", data)
    assert_user_error(result, "mc.jsonl:2:", "answer 3 out of range", "allowed: 0..1")
    assert_no_output(tmp_path / "out")


def test_3_more_classes_than_a_saved_classifier_head_has(model_dir, tmp_path):
    """Classes are the union of the labels in the files; a local model whose saved classifier has
    another number of classes gets a fresh head (reported), not a traceback."""
    folder = tmp_path / "data"
    _jsonl(folder / "train.jsonl", [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"},
                                    {"text": "so-so", "label": "meh"}])
    _jsonl(folder / "dev.jsonl", [{"text": "fine", "label": "pos"}])
    result = _train(model_dir, tmp_path / "out", "--task", "classification", "--data", folder)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out" / "train_log.json").read_text())["num_labels"] == 3


# -- 4: empty split, train size larger than the data ----------------------------------------------
def test_4_empty_split(model_dir, tmp_path):
    folder = tmp_path / "data"
    (folder).mkdir()
    (folder / "train.jsonl").write_text("\n\n")
    _jsonl(folder / "dev.jsonl", ROWS[:2])
    result = _train(model_dir, tmp_path / "out", "--task", "classification", "--data", folder)
    assert_user_error(result, "train file has no examples")
    assert_no_output(tmp_path / "out")


def test_4_train_size_larger_than_the_data(model_dir, data_dir, tmp_path):
    result = _train(model_dir, tmp_path / "out", "--task", "classification", "--data", data_dir, "--train-size", "1000")
    assert_user_error(result, "train_size=1000", "larger than the train split (24 examples)")
    assert_no_output(tmp_path / "out")


# -- 5: unknown task ---------------------------------------------------------------------------
def test_5_unknown_task_lists_the_known_ones(model_dir, tmp_path):
    result = _train(model_dir, tmp_path / "out", "--task", "sst3")
    assert_user_error(result, "unknown task 'sst3'", "known tasks:", "sst2", "classification", "multiple_choice")
    assert_no_output(tmp_path / "out")


# -- 6, 7, 8: bad adapter settings through --config ------------------------------------------------
def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_6_target_module_matching_nothing_lists_the_linear_layers(model_dir, data_dir, tmp_path):
    config = _config(tmp_path, "target_modules: [nope]\n")
    result = _train(model_dir, tmp_path / "out", "--task", "classification", "--data", data_dir, "--config", config)
    assert_user_error(result, "['nope'] matches no module", "Linear layers", "'query'", "'value'", "'dense'")
    assert_no_output(tmp_path / "out")


def test_7_target_that_is_not_a_linear_layer(model_dir, data_dir, tmp_path):
    config = _config(tmp_path, "target_modules: [attention]\n")
    result = _train(model_dir, tmp_path / "out", "--task", "classification", "--data", data_dir, "--config", config)
    assert_user_error(result, "attention", "BertAttention", "nn.Linear")
    assert_no_output(tmp_path / "out")


@pytest.mark.parametrize("setting,message", [
    ("r: 0", "BaRAConfig.r=0 is invalid: must be a positive integer"),
    ("r: -2", "BaRAConfig.r=-2 is invalid"),
    ("alpha0: 0", "BaRAConfig.alpha0=0 is invalid: must be a finite number > 0"),
    ("alpha0: -1.5", "BaRAConfig.alpha0=-1.5 is invalid"),
    ("rho0: 0", "BaRAConfig.rho0=0 is invalid: must lie strictly between 0 and 1"),
    ("rho0: 1.0", "BaRAConfig.rho0=1.0 is invalid: must lie strictly between 0 and 1"),
    ("temperature: 0", "BaRAConfig.temperature=0 is invalid: must be a finite number > 0"),
    ("temperature: -1", "BaRAConfig.temperature=-1 is invalid"),
])
def test_8_invalid_bara_hyperparameters(model_dir, data_dir, tmp_path, setting, message):
    config = _config(tmp_path, f"method_options: {{config: {{{setting}}}}}\n")
    result = _train(model_dir, tmp_path / "out", "--task", "classification", "--data", data_dir, "--config", config)
    assert_user_error(result, message)
    assert_no_output(tmp_path / "out")


# -- 9, 10, 11: adapters that must not load ---------------------------------------------------------
def test_9_adapter_on_a_different_base_model_names_each_layer(run_copy, other_model_dir, tmp_path):
    spec = json.loads((run_copy / "run.json").read_text())
    spec["model"] = str(other_model_dir)
    (run_copy / "run.json").write_text(json.dumps(spec))
    result = _invoke("evaluate", "--adapter", run_copy, "--out", tmp_path / "eval")
    line = assert_user_error(result, "different base model", "shape mismatch in")
    assert "query.lora_A.weight: saved (8, 32) vs model (8, 48)" in line
    assert "value.lora_A.weight" in line
    assert not (tmp_path / "eval").exists()


def test_9_api_load_onto_a_different_base_model(trained_run):
    import torch

    import bara
    from bara.harness.heads import SequenceClassifier
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    other = SequenceClassifier(BertForSequenceClassification(BertConfig(
        vocab_size=64, hidden_size=48, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96,
        max_position_embeddings=64, num_labels=2)))
    with pytest.raises(ValueError, match=r"different base model; shape mismatch in .*lora_A\.weight: saved \(8, 32\) vs model \(8, 48\)"):
        bara.BaRAModel.from_pretrained(other, str(trained_run / "adapter"))


@pytest.mark.parametrize("damage", ["truncated", "corrupted_header", "empty"])
def test_10_truncated_or_corrupted_safetensors(run_copy, tmp_path, damage):
    weights = run_copy / "adapter" / "adapter_model.safetensors"
    data = weights.read_bytes()
    if damage == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "corrupted_header":
        weights.write_bytes(b"\xff" * 8 + data[8:])
    else:
        weights.write_bytes(b"")
    result = _invoke("evaluate", "--adapter", run_copy, "--out", tmp_path / "eval")
    assert_user_error(result, "adapter_model.safetensors", "corrupted or truncated safetensors file")
    assert not (tmp_path / "eval").exists()


class _Payload:
    """Unpickling this object calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _evil_pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps(_Payload(marker)))
    return path


@pytest.fixture
def no_unpickling(monkeypatch):
    """Fail loudly if anything tries to unpickle."""
    import torch

    def forbidden(*args, **kwargs):
        raise AssertionError("something tried to unpickle a file")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)


def test_11_the_payload_really_creates_its_marker(tmp_path):
    """Control: unpickling the payload does create the marker, so its absence below means "never unpickled"."""
    marker = tmp_path / "marker"
    pickle.loads(_evil_pickle(tmp_path / "x.pkl", marker).read_bytes()).close()
    assert marker.exists()


def test_11_pickle_inside_the_adapter_folder_is_refused(run_copy, tmp_path, no_unpickling):
    marker = tmp_path / "UNPICKLED"
    (run_copy / "adapter" / "adapter_model.safetensors").unlink()
    _evil_pickle(run_copy / "adapter" / "adapter_model.bin", marker)
    result = _invoke("evaluate", "--adapter", run_copy, "--out", tmp_path / "eval")
    assert_user_error(result, "no adapter_model.safetensors", "adapter_model.bin", "pickle", "never unpickled")
    assert not marker.exists()
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pkl"])
def test_11_pickle_file_given_to_the_api_is_refused(trained_run, tmp_path, suffix, no_unpickling):
    import bara
    from bara.io import read_adapter

    marker = tmp_path / "UNPICKLED"
    evil = _evil_pickle(tmp_path / f"adapter{suffix}", marker)
    with pytest.raises(ValueError, match="pickle"):
        read_adapter(evil)
    with pytest.raises(ValueError, match="pickle"):
        bara.BaRAModel.from_pretrained(None, str(evil))  # refused before the base model is even looked at
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".pkl"])
def test_11_pickle_file_given_to_the_cli_is_refused(tmp_path, suffix, no_unpickling):
    marker = tmp_path / "UNPICKLED"
    evil = _evil_pickle(tmp_path / f"adapter{suffix}", marker)
    result = _invoke("evaluate", "--adapter", evil, "--out", tmp_path / "eval")
    assert_user_error(result, f"adapter{suffix}")
    assert not marker.exists()
    assert not (tmp_path / "eval").exists()


@pytest.mark.parametrize("suffix", [".pt"])
def test_11_pickle_file_given_to_the_cli_is_named_as_a_pickle(tmp_path, suffix, no_unpickling):
    evil = _evil_pickle(tmp_path / f"adapter{suffix}", tmp_path / "UNPICKLED")
    assert_user_error(_invoke("evaluate", "--adapter", evil), "refusing to load a pickle file")


# -- 12: NaN / inf loss ------------------------------------------------------------------------
def test_12_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(model_dir, data_dir, tmp_path):
    """A learning rate of 1e30 blows the weights up after step 1; step 2's loss is NaN."""
    out = tmp_path / "out"
    config = _config(tmp_path, "save_steps: 1\nlearning_rate: 1.0e+30\n")
    result = _invoke("train", "--model", model_dir, "--task", "classification", "--data", data_dir, "--config", config,
                     "--steps", "6", "--batch-size", "8", "--out", out)
    line = assert_user_error(result, "training diverged", "loss is nan", "at step 2 of 6", "checkpoint-1",
                             "lower learning rate")
    assert "checkpoint-2" not in line
    assert sorted(os.listdir(out / "checkpoints")) == ["checkpoint-1"]  # the earlier checkpoint survives
    ckpt = out / "checkpoints" / "checkpoint-1"
    assert {"adapter_model.safetensors", "bara_config.json", "trainer_state.json", "optimizer.pt"} <= set(os.listdir(ckpt))
    from safetensors.torch import load_file

    assert all(bool(t.isfinite().all()) for t in load_file(ckpt / "adapter_model.safetensors").values())
    assert_no_output(out, allowed=("checkpoints",))


def test_12_trainer_raises_a_value_error_naming_the_step(tmp_path):
    """The library-level contract: `NonFiniteLossError` (a ValueError) before the step's backward."""
    import torch
    from transformers import TrainingArguments

    import bara
    from bara.harness.data import Collator, EncodedDataset, EncodedExample
    from bara.harness.heads import SequenceClassifier
    from bara.trainer import NonFiniteLossError
    from conftest import tiny_bert

    items = [EncodedExample([1, 2 + i % 5, 3], i % 2, 2, None) for i in range(8)]
    model = bara.get_bara_model(SequenceClassifier(tiny_bert(num_labels=2)),
                                bara.BaRAConfig(r=2, target_modules=["query"], modules_to_save=["classifier"]))

    class PoisonedAtStep3(bara.BaRATrainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.state.global_step == 2:  # the third step
                with torch.no_grad():
                    for name, param in self._bara_model().named_parameters():
                        if name.endswith("classifier.weight"):
                            param.fill_(float("inf"))
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    args = TrainingArguments(output_dir=str(tmp_path / "ckpt"), use_cpu=True, report_to=[], remove_unused_columns=False,
                             disable_tqdm=True, max_steps=5, save_steps=1, save_total_limit=1, per_device_train_batch_size=4,
                             seed=1)
    trainer = PoisonedAtStep3(model=model, args=args, train_dataset=EncodedDataset(items, "sequence_classification", 2),
                              data_collator=Collator(0, "sequence_classification", 2))
    with pytest.raises(NonFiniteLossError, match=r"at step 3 of 5.*the last checkpoint is .*checkpoint-2"):
        trainer.train()
    assert isinstance(NonFiniteLossError("x"), ValueError)
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["checkpoint-2"]


def test_12_non_finite_parameters_are_never_checkpointed(tmp_path):
    """A finite loss but NaN weights after the update (e.g. an overflowing backward): no checkpoint."""
    import torch
    from transformers import TrainerCallback, TrainingArguments

    import bara
    from bara.harness.data import Collator, EncodedDataset, EncodedExample
    from bara.harness.heads import SequenceClassifier
    from bara.trainer import NonFiniteLossError
    from conftest import tiny_bert

    class NaNAfterStep2(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 2:
                with torch.no_grad():
                    next(p for n, p in model.named_parameters() if n.endswith("lora_B.weight")).fill_(float("nan"))

    items = [EncodedExample([1, 2 + i % 5, 3], i % 2, 2, None) for i in range(8)]
    model = bara.get_bara_model(SequenceClassifier(tiny_bert(num_labels=2)),
                                bara.BaRAConfig(r=2, target_modules=["query"], modules_to_save=["classifier"]))
    args = TrainingArguments(output_dir=str(tmp_path / "ckpt"), use_cpu=True, report_to=[], remove_unused_columns=False,
                             disable_tqdm=True, max_steps=4, save_steps=1, save_total_limit=1,
                             per_device_train_batch_size=4, seed=1)
    trainer = bara.BaRATrainer(model=model, args=args, train_dataset=EncodedDataset(items, "sequence_classification", 2),
                               data_collator=Collator(0, "sequence_classification", 2), callbacks=[NaNAfterStep2()])
    with pytest.raises(NonFiniteLossError, match=r"lora_B\.weight.*not finite after step 2; checkpoint-2 was not written"):
        trainer.train()
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["checkpoint-1"]


# -- 13: disk full / read-only output ------------------------------------------------------------
def _fail_after(monkeypatch, calls_that_succeed: int, *, only_if=lambda path: True):
    """Make bara's safetensors writer raise ENOSPC after ``calls_that_succeed`` writes."""
    import bara.io

    real = bara.io.save_file
    count = {"n": 0}

    def save_file(tensors, path, *args, **kwargs):
        if only_if(str(path)):
            count["n"] += 1
            if count["n"] > calls_that_succeed:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(bara.io, "save_file", save_file)


def test_13_disk_full_while_checkpointing_keeps_the_previous_checkpoint(model_dir, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    config = _config(tmp_path, "save_steps: 2\n")
    args = ["train", "--model", model_dir, "--task", "classification", "--data", data_dir, "--config", config,
            "--steps", "6", "--batch-size", "8", "--out", out]
    with monkeypatch.context() as patch:
        _fail_after(patch, 1)  # checkpoint-2 is written, checkpoint-4 hits a full disk
        result = _invoke(*args)
    assert_user_error(result, "could not write checkpoint", "checkpoint-4", "No space left on device",
                      "checkpoint-2 is intact")
    assert os.listdir(out / "checkpoints") == ["checkpoint-2"]  # no partial checkpoint-4, no staging folder
    assert "trainer_state.json" in os.listdir(out / "checkpoints" / "checkpoint-2")
    assert_no_output(out, allowed=("checkpoints",))
    # space freed: --resume continues from the surviving checkpoint
    result = _invoke(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "train_log.json").read_text())["resumed_from"].endswith("checkpoint-2")


def test_13_disk_full_while_writing_the_final_adapter(model_dir, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        _fail_after(patch, 0, only_if=lambda path: "checkpoints" not in path)
        result = _invoke("train", "--model", model_dir, "--task", "classification", "--data", data_dir,
                         "--steps", "2", "--batch-size", "8", "--out", out)
    assert_user_error(result, "could not write the trained adapter", "No space left on device", "checkpoint-2")
    assert_no_output(out, allowed=("checkpoints",))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores directory permissions")
def test_13_read_only_output_folder(model_dir, data_dir, tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        result = _train(model_dir, parent / "out", "--task", "classification", "--data", data_dir)
        assert_user_error(result, "Permission denied")
        assert not (parent / "out").exists()
    finally:
        parent.chmod(0o700)


# -- 14, 15: recoverable input problems: fixed, and said so -----------------------------------------------
@pytest.fixture(scope="module")
def llama_without_pad_dir(tmp_path_factory) -> Path:
    """A tiny Llama whose tokenizer has an eos token but no pad token."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from bara.harness.backbones import resolve_model_path

    folder = tmp_path_factory.mktemp("tiny-llama-nopad")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    tokenizer.eos_token = "[SEP]"
    tokenizer.pad_token = None
    assert tokenizer.pad_token is None
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_14_tokenizer_without_pad_token_gets_one_and_says_so(llama_without_pad_dir, data_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        result = _train(llama_without_pad_dir, tmp_path / "out", "--task", "classification", "--data", data_dir)
    assert result.exit_code == 0, result.output
    said = caplog.text + result.output
    assert "has no pad token" in said and "using eos token '[SEP]' for padding" in said
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").exists()


def test_15_inputs_longer_than_max_length_are_truncated_with_a_count(model_dir, data_dir, tmp_path):
    with pytest.warns(UserWarning, match=r"24 of 24 inputs of task 'classification' exceed max_length=6 tokens "
                                         r"and were truncated"):
        result = _train(model_dir, tmp_path / "out", "--task", "classification", "--data", data_dir, "--max-length", "6")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").exists()
