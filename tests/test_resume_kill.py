"""Crashes and resume: a run killed with SIGKILL resumes bit-exactly, and checkpoints are atomic.

transformers' ``get_last_checkpoint`` returns the highest ``checkpoint-N`` folder whether or not
it is complete, and Trainer writes that folder file by file (then rotates the older ones away),
so a kill during a save used to leave a half-written checkpoint that ``--resume`` would pick.
`BaRATrainer` writes ``.partial-checkpoint-N/`` and renames it when complete; these tests kill a
real ``bara train`` process, interrupt a save half-way, and compare with uninterrupted runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bara.harness.cli import app

runner = CliRunner()
STEPS = 40


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """A tiny random BERT with the real MiniLM tokenizer, 24 + 8 examples, and a run config."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from bara.harness.backbones import resolve_model_path

    root = tmp_path_factory.mktemp("kill")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)  # dropout on: the RNG state matters too
    BertForSequenceClassification(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    words = {0: ["dull", "bad", "awful", "boring"], 1: ["great", "lovely", "fun", "superb"]}
    rows = [{"text": f"a {words[i % 2][i % 4]} film number {i}", "label": i % 2} for i in range(32)]
    (root / "data").mkdir()
    (root / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:24]))
    (root / "data" / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[24:]))
    (root / "run.yaml").write_text(f"save_steps: 2\nlogging_steps: 2\nmax_steps: {STEPS}\nbatch_size: 8\nseed: 3\n")
    return {"root": root, "model": root / "model", "data": root / "data", "config": root / "run.yaml"}


def _train_args(setup, out: Path) -> list[str]:
    return ["train", "--model", str(setup["model"]), "--task", "classification", "--data", str(setup["data"]),
            "--method", "bara", "--config", str(setup["config"]), "--out", str(out)]


def _adapter(out: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors.torch import load_file

    return (load_file(out / "adapter" / "adapter_model.safetensors"),
            json.loads((out / "adapter" / "bara_config.json").read_text()))


def _checkpoint_steps(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(n.split("-")[1]) for n in os.listdir(folder) if n.startswith("checkpoint-"))


def _kill_when_checkpointed(proc: subprocess.Popen, checkpoints: Path, result: dict) -> None:
    """Watcher thread: SIGKILL ``proc`` as soon as checkpoint-6 (or later) exists."""
    deadline = time.monotonic() + 150
    while proc.poll() is None and time.monotonic() < deadline:
        if any(step >= 6 for step in _checkpoint_steps(checkpoints)):
            result["alive_at_kill"] = proc.poll() is None
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    else:
        if proc.poll() is None:  # deadline: do not leave it running
            os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def test_sigkill_then_resume_gives_the_same_adapter_bit_for_bit(setup, tmp_path):
    """`bara train` is SIGKILLed once a few checkpoints exist; `--resume` finishes it. BaRA's gates
    are sampled (and BERT's dropout is on), so this also checks that the RNG state is restored."""
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TQDM_DISABLE": "1"}
    stderr = tmp_path / "stderr.txt"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "bara.harness.cli", *_train_args(setup, killed)], env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    watch: dict = {}
    watcher = threading.Thread(target=_kill_when_checkpointed, args=(proc, killed / "checkpoints", watch), daemon=True)
    watcher.start()
    try:
        # meanwhile, the uninterrupted reference run (in this process)
        result = runner.invoke(app, _train_args(setup, reference), catch_exceptions=False)
        assert result.exit_code == 0, result.output
    finally:
        watcher.join(timeout=180)
    assert watch.get("alive_at_kill"), "the run ended before it could be killed: " + stderr.read_text()[-2000:]
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "adapter").exists() and not (killed / "run.json").exists()
    reached = _checkpoint_steps(killed / "checkpoints")[-1]
    assert 6 <= reached < STEPS

    clock = json.loads((killed / "checkpoints" / f"checkpoint-{reached}" / "training_clock.json").read_text())
    assert clock["step"] == reached and clock["seconds"] > 0  # written into the checkpoint before it was published
    result = runner.invoke(app, [*_train_args(setup, killed), "--resume"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    log = json.loads((killed / "train_log.json").read_text())
    resumed_from = log["resumed_from"]
    assert resumed_from is not None and int(resumed_from.rsplit("-", 1)[1]) >= reached - 2
    assert log["clocked"] and log["train_seconds"] > clock["seconds"]  # the killed session's time is counted too
    assert not [n for n in os.listdir(killed / "checkpoints") if n.startswith(".partial-")]

    (got, got_config), (want, want_config) = _adapter(killed), _adapter(reference)
    assert got_config == want_config
    assert sorted(got) == sorted(want)
    differing = [k for k in want if not torch.equal(got[k], want[k])]
    assert differing == [], f"resumed run differs from the uninterrupted one in {differing[:5]}"
    # the logged losses after the resume point match too
    ref_log = json.loads((reference / "train_log.json").read_text())
    step = int(resumed_from.rsplit("-", 1)[1])
    after = lambda history: [(h["step"], h["loss"]) for h in history if "loss" in h and h["step"] > step]  # noqa: E731
    assert after(log["history"]) and after(log["history"]) == after(ref_log["history"])


# -- interrupted saves, in process -----------------------------------------------------------------
def _trainer(out: Path, *, trainer_cls=None, max_steps: int = 6):
    from transformers import TrainingArguments

    import bara
    from bara.harness.data import Collator, EncodedDataset, EncodedExample
    from bara.harness.heads import SequenceClassifier
    from conftest import tiny_bert

    g = torch.Generator().manual_seed(0)
    items = []
    for _ in range(24):
        ids = torch.randint(1, 64, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
        items.append(EncodedExample(ids, ids[0] % 2, 2, None))
    torch.manual_seed(1)
    model = bara.get_bara_model(SequenceClassifier(tiny_bert(num_labels=2)),
                                bara.BaRAConfig(r=4, target_modules=["query", "value"], modules_to_save=["classifier"]))
    args = TrainingArguments(output_dir=str(out), use_cpu=True, report_to=[], remove_unused_columns=False,
                             disable_tqdm=True, max_steps=max_steps, save_steps=2, save_total_limit=1, logging_steps=2,
                             per_device_train_batch_size=4, learning_rate=1e-2, seed=7, data_seed=7)
    cls = trainer_cls or bara.BaRATrainer
    return cls(model=model, args=args, train_dataset=EncodedDataset(items, "sequence_classification", 2),
               data_collator=Collator(0, "sequence_classification", 2))


class _Killed(BaseException):
    """Stands for SIGKILL inside a save (not an Exception: nothing may catch and tidy up)."""


def _state(trainer) -> dict[str, torch.Tensor]:
    from bara.io import _adapter_state

    return {k: v.detach().clone() for k, v in _adapter_state(trainer._bara_model()).items()}


def test_a_save_interrupted_half_way_leaves_no_checkpoint_folder(tmp_path):
    import bara

    class DiesWhileSavingStep4(bara.BaRATrainer):
        def _save_rng_state(self, output_dir):  # adapter and optimizer are written by now
            if self.state.global_step == 4:
                assert {"adapter_model.safetensors", "optimizer.pt"} <= set(os.listdir(output_dir))
                raise _Killed()
            return super()._save_rng_state(output_dir)

    out = tmp_path / "ckpt"
    with pytest.raises(_Killed):
        _trainer(out, trainer_cls=DiesWhileSavingStep4).train()
    left = sorted(os.listdir(out))
    assert left == [".partial-checkpoint-4", "checkpoint-2"], left  # checkpoint-2 was not rotated away

    from transformers.trainer_utils import get_last_checkpoint

    from bara.trainer import last_checkpoint

    assert get_last_checkpoint(str(out)).endswith("checkpoint-2")
    assert last_checkpoint(out).endswith("checkpoint-2")

    # resuming from it reproduces an uninterrupted run exactly, and tidies the staging folder
    resumed = _trainer(out)
    resumed.train(resume_from_checkpoint=last_checkpoint(out))
    reference = _trainer(tmp_path / "reference")
    reference.train()
    got, want = _state(resumed), _state(reference)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert sorted(os.listdir(out)) == ["checkpoint-6"]


def test_last_checkpoint_skips_incomplete_folders_that_transformers_would_pick(tmp_path):
    """What a plain Trainer killed mid-save leaves: checkpoint-4 without its trainer state."""
    from transformers.trainer_utils import get_last_checkpoint

    from bara.trainer import is_complete_checkpoint, last_checkpoint

    trainer = _trainer(tmp_path / "ckpt", max_steps=2)
    trainer.train()
    good = tmp_path / "ckpt" / "checkpoint-2"
    assert is_complete_checkpoint(good)
    partial = tmp_path / "ckpt" / "checkpoint-4"
    partial.mkdir()
    (partial / "adapter_model.safetensors").write_bytes((good / "adapter_model.safetensors").read_bytes()[:100])
    (partial / "bara_config.json").write_text((good / "bara_config.json").read_text())
    assert get_last_checkpoint(str(tmp_path / "ckpt")) == str(partial)  # transformers would resume from this
    assert last_checkpoint(tmp_path / "ckpt") == str(good)
    (partial / "trainer_state.json").write_text("{ truncated")
    assert last_checkpoint(tmp_path / "ckpt") == str(good)
    assert last_checkpoint(tmp_path / "nowhere") is None


def test_checkpoints_hold_everything_needed_to_resume(tmp_path):
    trainer = _trainer(tmp_path / "ckpt", max_steps=2)
    trainer.train()
    files = set(os.listdir(tmp_path / "ckpt" / "checkpoint-2"))
    assert {"adapter_model.safetensors", "bara_config.json", "optimizer.pt", "scheduler.pt", "rng_state.pth",
            "trainer_state.json"} <= files
    state = json.loads((tmp_path / "ckpt" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2  # the data position: Trainer skips the batches already seen


def test_compare_reports_unknown_training_time_for_runs_resumed_before_the_clock(tmp_path):
    """Runs resumed from a checkpoint without a clock logged only their last session's seconds."""
    from bara.harness.compare import _train_time_unknown

    def unknown(log: dict) -> bool:
        path = tmp_path / "train_log.json"
        path.write_text(json.dumps(log))
        return _train_time_unknown(path)

    assert unknown({"train_seconds": 0.3, "resumed_from": "c/checkpoint-930"})
    assert not unknown({"train_seconds": 900.0, "resumed_from": "c/checkpoint-930", "clocked": True})
    assert not unknown({"train_seconds": 900.0, "resumed_from": None})
    assert unknown({"train_seconds": 5.0, "members": [{"resumed_from": None}, {"resumed_from": "m/checkpoint-8"}]})
    assert not _train_time_unknown(tmp_path / "missing.json")


def test_training_clock_continues_the_checkpoints_clock_or_admits_it_has_none(tmp_path):
    from bara.trainer import CLOCK_FILE, TrainingClock

    assert TrainingClock(tmp_path).seconds is None  # a checkpoint without a clock: earlier time unknown
    (tmp_path / CLOCK_FILE).write_text(json.dumps({"seconds": 120.0, "step": 40}))
    assert 120.0 <= TrainingClock(tmp_path).seconds < 130.0
    assert 0.0 <= TrainingClock(None).seconds < 10.0
