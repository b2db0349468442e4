"""What training shows: one progress bar per run (`bara.harness.progress`) and the demo's board of
one line per process (`bara.harness.demo`), instead of transformers' raw log dictionaries."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest
from rich.console import Console

from bara.harness.progress import StatusReporter, TrainingProgress, describe, format_logs, quiet_trainer


def _state(step: int, total: int = 10, main: bool = True):
    return SimpleNamespace(global_step=step, max_steps=total, is_world_process_zero=main)


def _console() -> Console:
    return Console(file=io.StringIO(), width=120, force_terminal=False)


BARA_LOG = {"loss": 0.7, "grad_norm": 0.3, "nll": 0.69, "kl_global": 0.4, "kl_local": 0.05,
            "joint_effective_rank": 3.25, "r_glob": 6.0, "epoch": 0.5}


def test_status_names_loss_rank_and_kl_and_leaves_out_what_a_method_does_not_log():
    assert describe(BARA_LOG, 8) == "loss 0.700 · s̄ 3.25/8 · KL 0.45"
    assert describe({"loss": 0.5, "kl_global": 0.2}) == "loss 0.500 · KL 0.2"  # only the terms logged
    assert describe({"loss": 0.5, "grad_norm": 1.0, "epoch": 1.0}) == "loss 0.500"  # LoRA
    assert describe({"train_runtime": 3.0, "train_loss": 0.4}) == ""  # the end-of-training summary changes nothing


def test_bar_follows_steps_and_logs_and_verbose_prints_each_log_above_it():
    console = _console()
    bar = TrainingProgress("bara", verbose=True, console=console)
    args, control = SimpleNamespace(), SimpleNamespace()
    model = SimpleNamespace(bara_config=SimpleNamespace(r=8))
    bar.on_train_begin(args, _state(0), control, model=model)
    for step in range(1, 11):
        bar.on_step_end(args, _state(step), control)
        if step % 5 == 0:
            bar.on_log(args, _state(step), control, logs=dict(BARA_LOG))
    bar.on_train_end(args, _state(10), control)
    text = console.file.getvalue()
    printed = [line for line in text.splitlines() if line.startswith("{")]
    assert printed == [format_logs(BARA_LOG, 5), format_logs(BARA_LOG, 10)]
    assert printed[0].startswith("{'loss': 0.7, 'grad_norm': 0.3,") and printed[0].endswith("'step': 5}")
    (line,) = [line for line in text.splitlines() if line.startswith("bara ")]  # drawn once: not a terminal
    assert "10/10" in line and "took 0:00:00" in line and line.endswith("loss 0.700 · s̄ 3.25/8 · KL 0.45")
    bar.close()  # a second close (the pipeline's, after a failure) is harmless


def test_a_resumed_run_starts_its_bar_at_the_checkpoint():
    console = _console()
    bar = TrainingProgress("lora", console=console)
    bar.on_train_begin(SimpleNamespace(), _state(6, total=8), SimpleNamespace(), model=None)
    assert bar._progress.tasks[0].completed == 6 and bar._progress.tasks[0].total == 8
    bar.close()
    assert "6/8" in console.file.getvalue()


def test_other_processes_of_a_distributed_run_show_nothing():
    console = _console()
    bar = TrainingProgress("bara", verbose=True, console=console)
    args, control = SimpleNamespace(), SimpleNamespace()
    bar.on_train_begin(args, _state(0, main=False), control)
    bar.on_step_end(args, _state(1, main=False), control)
    bar.on_log(args, _state(1, main=False), control, logs=dict(BARA_LOG))
    bar.on_train_end(args, _state(1, main=False), control)
    assert bar._progress is None and console.file.getvalue() == ""


def test_status_reporter_sends_a_few_updates_not_one_per_step():
    sent = []
    reporter = StatusReporter(sent.append, "bara", interval=3600)
    args, control = SimpleNamespace(), SimpleNamespace()
    reporter.on_train_begin(args, _state(0, total=100), control, model=SimpleNamespace(bara_config=SimpleNamespace(r=4)))
    for step in range(1, 101):
        reporter.on_step_end(args, _state(step, total=100), control)
        if step % 50 == 0:
            reporter.on_log(args, _state(step, total=100), control, logs=dict(BARA_LOG))
    reporter.on_train_end(args, _state(100, total=100), control)
    assert [(m["step"], m["total"]) for m in sent] == [(0, 100), (50, 100), (100, 100), (100, 100)]
    assert {m["key"] for m in sent} == {"bara"} and sent[-1]["status"] == "loss 0.700 · s̄ 3.25/4 · KL 0.45"
    reporter.note("bara: no checkpoint")
    assert sent[-1] == {"key": "bara", "note": "bara: no checkpoint"}


def test_quiet_trainer_removes_the_tqdm_bar_and_the_log_printer(tmp_path):
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from conftest import tiny_bert

    for disable_tqdm in (True, False):  # the printer comes with disable_tqdm=True, the bar without it
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], disable_tqdm=disable_tqdm)
        trainer = Trainer(model=tiny_bert(), args=args)
        kinds = lambda: {type(c) for c in trainer.callback_handler.callbacks}  # noqa: E731
        assert kinds() & {PrinterCallback, ProgressCallback}
        quiet_trainer(trainer)
        assert not kinds() & {PrinterCallback, ProgressCallback}


# ----------------------------------------------------------------------------- the demo's board

def test_demo_shows_one_line_per_process_and_forwards_each_warning_once(tmp_path):
    from bara.harness.demo import _run_processes
    from demo_jobs import fake_job

    console = _console()
    results = _run_processes({}, tmp_path, console, job=fake_job)
    assert results == {"lora": {"method": "lora", "out": str(tmp_path)}, "bara": {"method": "bara", "out": str(tmp_path)}}
    lines = console.file.getvalue().splitlines()
    assert [line for line in lines if "truncated" in line] == ["warning: 3 of 32 inputs were truncated"]
    assert sorted(line for line in lines if "logged warning" in line) == ["warning: a logged warning from bara",
                                                                          "warning: a logged warning from lora"]
    rows = [line for line in lines if line.startswith(("LoRA", "BaRA"))]
    assert len(rows) == 2 and len(lines) == 5  # one line per process, the three warnings above them
    assert "4/4" in rows[0] and rows[0].endswith("done · loss 0.250") and rows[1].endswith("done · loss 0.500")


def test_demo_raises_the_error_of_a_failed_process_and_stops_the_other(tmp_path):
    from bara.harness.demo import ChildError, _run_processes
    from demo_jobs import fake_job

    with pytest.raises(ValueError, match="bara: broken data on purpose") as info:
        _run_processes({"fail": "bara"}, tmp_path, None, job=fake_job)
    assert isinstance(info.value.__cause__, ChildError) and "fake_job" in str(info.value.__cause__)
