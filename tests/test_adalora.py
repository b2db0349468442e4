"""AdaLoRA (`bara.harness.methods.adalora`): the budget schedule really prunes during training, the
orthogonal regulariser reaches the loss, checkpoints resume exactly, the safetensors save / load round
trip, the rank plot, and a short run through the pipeline (train → evaluate → resume of a finished run)."""

from __future__ import annotations

import copy
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from transformers import TrainingArguments

from bara.harness import plots
from bara.harness.heads import SequenceClassifier
from bara.harness.methods import METHODS, get_method
from bara.harness.methods.adalora import (AdaLoRA, AdaLoRATrainer, adalora_model, final_ranks, orthogonal_regularizer,
                                          schedule_steps)
from conftest import tiny_bert, token_dataset

torch.set_num_threads(1)

TARGETS = ["query", "value"]  # 2 layers × 2 targets = 4 AdaLoRA layers in tiny_bert
OPTIONS = {"init_r": 4, "target_r": 2, "deltaT": 1, "tinit": 0.1, "tfinal": 0.3}  # 10 steps: warm-up 0-1, prune 2-6, final 7
STEPS = 10


def wrapped(method: AdaLoRA):
    return method.wrap(SequenceClassifier(tiny_bert(num_labels=2, seed=0)), TARGETS, ["classifier"])


def trainer_for(method: AdaLoRA, model, out: Path, data, collator, steps: int = STEPS) -> AdaLoRATrainer:
    args = TrainingArguments(str(out), max_steps=steps, per_device_train_batch_size=4, learning_rate=1e-2, report_to=[],
                             use_cpu=True, remove_unused_columns=False, logging_steps=2, save_steps=5, seed=0, data_seed=0,
                             disable_tqdm=True)
    return method.trainer_class()(model=model, args=args, train_dataset=data, data_collator=collator,
                                  **method.trainer_kwargs())


def e_values(model) -> dict[str, torch.Tensor]:
    """Singular values Λ of every layer, keyed like peft's rank pattern."""
    return {n.removeprefix("base_model.model."): p.detach().reshape(-1)
            for n, p in model.named_parameters() if ".lora_E." in n}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    method = get_method("adalora", OPTIONS)
    data, collator = token_dataset(32)
    model = wrapped(method)
    trainer = trainer_for(method, model, tmp_path_factory.mktemp("adalora") / "checkpoints", data, collator)
    trainer.train()
    return method, model, trainer, data, collator


# ----------------------------------------------------------------------------- options and schedule
def test_registered_with_documented_defaults_and_validated_options():
    assert METHODS["adalora"] is AdaLoRA
    default = get_method("adalora")
    assert (default.init_r, default.target_r, default.tinit, default.tfinal, default.orth_reg_weight) == (12, 8, 0.1, 0.4, 0.1)
    assert not default.stochastic and default.eval_samples == 1
    for bad in ({"target_r": 13}, {"init_r": 0}, {"tinit": 0.6, "tfinal": 0.4}, {"tfinal": 1.0}, {"deltaT": 0},
                {"orth_reg_weight": -1.0}, {"beta1": 1.0}, {"r": 8}):
        with pytest.raises(ValueError):
            get_method("adalora", bad)


def test_schedule_is_a_fraction_of_the_run_with_a_reachable_final_allocation():
    assert schedule_steps(1000, 0.1, 0.4) == (1000, 100, 400)
    assert schedule_steps(10, 0.1, 0.3) == (10, 1, 3)
    assert schedule_steps(4, 0.1, 0.1) == (4, 0, 1)  # tfinal ≥ 1: the allocation to exactly target_r happens at step 3
    assert schedule_steps(2, 0.4, 0.5) == (2, 1, 0)  # shrunk until a budgeting phase is left (peft: tinit < T − tfinal)
    assert schedule_steps(1, 0.1, 0.4) == (1, 0, 0)


# ----------------------------------------------------------------------------- training
def test_budget_schedule_masks_singular_values_down_to_the_target(trained):
    method, model, trainer, _, _ = trained
    config = adalora_model(model).peft_config["default"]
    assert (config.total_step, config.tinit, config.tfinal) == (STEPS, 1, 3)  # set from the run's max_steps
    assert trainer.allocations == STEPS  # update_and_allocate once per optimizer step
    pattern = config.rank_pattern
    assert pattern is not None, "update_and_allocate never allocated a budget"
    values = e_values(model)
    assert set(pattern) == set(values) and len(values) == 4
    kept = {name: torch.tensor(mask) for name, mask in pattern.items()}
    # exactly the pruned triplets have Λ = 0, and the budget is the target: 4 layers × target_r
    assert sum(int(m.sum()) for m in kept.values()) == 4 * method.target_r
    for name, v in values.items():
        assert torch.equal(v == 0, ~kept[name]), name
        assert bool((v[kept[name]] != 0).all())  # Λ starts at 0: the kept ones trained, the zeros are the masking
    ranks = final_ranks(model)
    assert sum(ranks.values()) == 4 * method.target_r and set(ranks) == {n.removesuffix(".lora_E.default") for n in values}
    history = [h for h in trainer.state.log_history if "adalora_rank" in h]
    assert history[0]["adalora_rank"] == method.init_r and history[-1]["adalora_rank"] == method.target_r
    assert all(h["orth_reg"] > 0 and h["loss"] > h["nll"] for h in history)  # the regulariser is in the loss


def test_orthogonal_regulariser_is_added_to_the_loss_as_peft_adds_it(tmp_path):
    method = get_method("adalora", OPTIONS | {"orth_reg_weight": 0.7})
    model = wrapped(method)
    data, collator = token_dataset(8)
    batch = collator([data[i] for i in range(4)])
    with torch.no_grad():  # non-zero Λ, so that the adapter acts
        for n, p in model.named_parameters():
            if ".lora_E." in n:
                p.normal_()
    trainer = trainer_for(method, model, tmp_path, data, collator)
    model.train()
    with torch.no_grad():
        nll = model(**batch).loss  # PeftModel calls the head directly: no regulariser
        loss = trainer.compute_loss(model, batch)
        peft_loss = model.base_model(**batch).loss  # AdaLoraModel.forward adds its own
        reg = orthogonal_regularizer(model)
    assert float(reg) > 0
    assert float(loss) == pytest.approx(float(nll) + 0.7 * float(reg), rel=1e-6)
    assert float(loss) == pytest.approx(float(peft_loss), rel=1e-6)


def test_a_run_resumed_from_a_checkpoint_in_the_budgeting_phase_ends_bit_for_bit_the_same(trained, tmp_path):
    method, model, trainer, data, collator = trained
    checkpoint = Path(trainer.args.output_dir) / "checkpoint-5"  # step 5 of 10: pruning under way
    assert (checkpoint / "adalora_state.json").exists() and not list(checkpoint.glob("*.bin"))
    shutil.copytree(checkpoint, tmp_path / "checkpoint-5")
    resumed = wrapped(method)
    again = trainer_for(method, resumed, tmp_path, data, collator)
    again.train(resume_from_checkpoint=str(tmp_path / "checkpoint-5"))
    assert again.allocations == STEPS - 5
    full, part = dict(model.named_parameters()), dict(resumed.named_parameters())
    assert all(torch.equal(full[n], part[n]) for n in full if full[n].requires_grad)
    assert final_ranks(resumed) == final_ranks(model)


# ----------------------------------------------------------------------------- files and plot
def test_save_load_round_trip_gives_identical_predictions_and_final_ranks(trained, tmp_path):
    method, model, _, data, collator = trained
    method.save(model, tmp_path / "adapter")
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "adalora_ranks.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in files)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "ADALORA" and config["rank_pattern"]
    report = json.loads((tmp_path / "adapter" / "adalora_ranks.json").read_text())
    assert report["ranks"] == final_ranks(model) and report["mean_rank"] == method.target_r and report["allocated"]

    model.eval()
    before = method.predict(model, data, collator)
    loaded = method.load(SequenceClassifier(tiny_bert(num_labels=2, seed=0)), tmp_path / "adapter", TARGETS, ["classifier"])
    after = method.predict(loaded, data, collator)
    assert torch.equal(before.probs, after.probs)
    assert final_ranks(loaded) == final_ranks(model)
    # the loaded layers hold only the kept triplets
    assert {n: v.numel() for n, v in e_values(loaded).items()} == {f"{n}.lora_E.default": r for n, r in final_ranks(model).items()}

    png = plots.adalora_ranks(tmp_path / "adapter", tmp_path / "ranks.png")
    both = plots.layer_ranks({"adalora": report["ranks"], "bara r_glob": {n: 3.0 for n in report["ranks"]}},
                             tmp_path / "both.png", r_max=4)
    for path in (png, both):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError):
        plots.layer_ranks({}, tmp_path / "empty.png")


def test_a_layer_pruned_to_rank_zero_saves_without_warnings_and_loads_with_rank_zero(trained, tmp_path):
    method, model, _, data, collator = trained
    model = copy.deepcopy(model)
    pattern = adalora_model(model).peft_config["default"].rank_pattern
    key = sorted(pattern)[0]
    pattern[key] = [False] * len(pattern[key])  # the budget gave this layer nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        method.save(model, tmp_path / "adapter")
    layer = key.removesuffix(".default").removesuffix(".lora_E")
    loaded = method.load(SequenceClassifier(tiny_bert(num_labels=2, seed=0)), tmp_path / "adapter", TARGETS, ["classifier"])
    assert final_ranks(loaded)[layer] == 0 and final_ranks(loaded) == final_ranks(model)
    assert torch.isfinite(method.predict(loaded, data, collator).probs).all()


def test_load_refuses_a_folder_without_a_safetensors_adalora_adapter(tmp_path):
    (tmp_path / "adapter_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(ValueError, match="safetensors"):
        AdaLoRA().load(SequenceClassifier(tiny_bert(num_labels=2)), tmp_path, TARGETS, ["classifier"])


# ----------------------------------------------------------------------------- the pipeline
def test_compare_style_run_through_the_pipeline(tiny_model_dir, data_file, tmp_path):
    from safetensors.torch import load_file

    from bara.harness.compare import parse_method
    from bara.harness.pipeline import RunSpec, evaluate, train

    name, options = parse_method("adalora[init_r=4,target_r=2,deltaT=1]")  # as `bara compare --methods` reads it
    assert (name, options) == ("adalora", {"init_r": 4, "target_r": 2, "deltaT": 1})
    spec = RunSpec(model=str(tiny_model_dir), task="classification", data=str(data_file), method=name,
                   method_options=options, max_steps=6, batch_size=8, save_steps=3, logging_steps=2)
    out = tmp_path / "run"
    log = train(spec, out, resume=True, progress=False)  # compare's call
    assert log["steps"] == 6 and any("adalora_rank" in h for h in log["history"])
    report = json.loads((out / "adapter" / "adalora_ranks.json").read_text())
    assert report["allocated"] and report["total_rank"] == 2 * len(report["ranks"])
    assert report["schedule"] == {"total_step": 6, "tinit": 1, "tfinal": 2, "deltaT": 1}
    metrics = evaluate(out, out=out / "eval", progress=False)
    assert metrics["method"] == "adalora" and metrics["samples"] == 1 and 0.0 <= metrics["ece"] <= 1.0
    assert (out / "eval" / "predictions.safetensors").exists()

    # an interrupted compare resumes the finished run: no further step, the same adapter
    weights = load_file(out / "adapter" / "adapter_model.safetensors")
    train(spec, out, resume=True, progress=False)
    again = load_file(out / "adapter" / "adapter_model.safetensors")
    assert weights.keys() == again.keys() and all(torch.equal(weights[k], again[k]) for k in weights)
    assert json.loads((out / "adapter" / "adalora_ranks.json").read_text()) == report
    assert evaluate(out, progress=False, plots=False)["ece"] == metrics["ece"]
