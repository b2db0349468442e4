"""Distributed data parallel on CPU: 2 processes (gloo) against 1 process with the same global batch.

`tests/ddp_worker.py` is launched with ``torchrun --standalone --nproc_per_node 2`` (what
``accelerate launch --multi_gpu --num_processes 2`` runs on GPUs; ``accelerate launch --cpu``
starts a single process unless MPI is configured). Each process trains a tiny BERT with
`bara.BaRATrainer` for 4 steps at a per-process batch of 4, then runs ``bara train`` unchanged.

Gate sampling is random and the draws differ between process layouts, so the equality with the
1-process run (batch 8) is checked in the deterministic gate mode ``mean`` (z = E_q[π] ⊙ σ(ℓ(x)))
during training. The KL terms are still active (β_g = 20, no warm-up), and two controls show the
comparison would catch a KL counted per rank: doubling β_g or β_l moves the weights by > 1e-3.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import ddp_worker  # noqa: E402

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> tuple[Path, dict[str, dict[str, torch.Tensor]]]:
    """Run the 2-process worker once (both parts) and, meanwhile, the single-process runs.

    Returns the worker's output folder and the single-process adapters: ``single`` (same global
    batch and seed) and the two controls."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from bara.harness.backbones import resolve_model_path

    root = tmp_path_factory.mktemp("ddp")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertForSequenceClassification(config).save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    rows = [{"text": f"a {['dull', 'great'][i % 2]} film number {i}", "label": i % 2} for i in range(32)]
    (root / "data").mkdir()
    (root / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:24]))
    (root / "data" / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[24:]))

    out = root / "out"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1",
                        "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "ddp_worker.py"), str(out), str(root / "model"), str(root / "data")]
    log = root / "torchrun.log"
    with open(log, "wb") as sink:
        proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        single = {"single": ddp_worker.run(root / "single", world_size=1),
                  # controls: a global KL counted once per rank (= 2 β_g) or a local KL summed over ranks (= 2 β_l)
                  "2 beta_global": ddp_worker.run(root / "c1", beta_global=2 * ddp_worker.BARA_OPTIONS["beta_global"]),
                  "2 beta_local": ddp_worker.run(root / "c2", beta_local=2 * ddp_worker.BARA_OPTIONS["beta_local"])}
        proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log.read_text()[-6000:]
    return out, single


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert sorted(a) == sorted(b)
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_ddp_ranks_agree_and_match_a_single_process_run(launched):
    out, single = launched
    rank0, rank1 = _load(out / "rank0.safetensors"), _load(out / "rank1.safetensors")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "the ranks' adapters diverged"
    diff = _max_diff(rank0, single["single"])
    print(f"max |DDP(2) - single process| over the adapter = {diff:.3g}")
    assert diff < TOLERANCE
    for control in ("2 beta_global", "2 beta_local"):
        moved = _max_diff(rank0, single[control])
        print(f"max |DDP(2) - single process with {control}| = {moved:.3g}")
        assert moved > 100 * TOLERANCE, control


def test_bara_train_runs_unchanged_under_torchrun(launched):
    launched, _ = launched
    run = launched / "cli-run"
    assert sorted(p.name for p in (run / "adapter").iterdir()) == ["adapter_model.safetensors", "bara_config.json"]
    log = json.loads((run / "train_log.json").read_text())
    assert log["steps"] == 3
    assert json.loads((run / "run.json").read_text())["method"] == "bara"
    checkpoints = os.listdir(run / "checkpoints")
    assert checkpoints == ["checkpoint-3"], checkpoints  # complete (rng_state of both ranks), no staging folder left
    assert {"rng_state_0.pth", "rng_state_1.pth", "trainer_state.json"} <= set(os.listdir(run / "checkpoints" / "checkpoint-3"))
    assert json.loads((launched / "writes-rank0.json").read_text()), "the main process wrote the run files"


def test_only_the_main_process_writes_the_run_files(launched):
    launched, _ = launched
    assert json.loads((launched / "writes-rank1.json").read_text()) == []


def test_kl_is_added_once_per_optimizer_step_with_gradient_accumulation(tmp_path):
    """When Trainer does not divide the loss by the accumulation steps, BaRATrainer divides the KL."""
    from transformers import TrainingArguments

    import bara

    ds, collator = ddp_worker.dataset()
    model = bara.get_bara_model(ddp_worker.tiny_bert_head(), bara.BaRAConfig(**ddp_worker.BARA_OPTIONS))
    model.set_gate_mode("mean")
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], remove_unused_columns=False,
                             per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=1)
    trainer = bara.BaRATrainer(model=model, args=args, train_dataset=ds, data_collator=collator)
    trainer.state.max_steps = 1
    batch = collator([ds[i] for i in range(4)])
    model.train()
    totals = {}
    for scaled in (False, True):
        trainer.loss_is_scaled_for_ga = scaled
        trainer.current_gradient_accumulation_steps = 2
        loss = trainer.compute_loss(model, dict(batch))
        totals[scaled] = float(loss.detach()) - trainer._bara_logs["nll"][-1]
    assert totals[False] > 1.0
    assert totals[True] == pytest.approx(totals[False] / 2, rel=1e-5)


def test_fsdp1_is_refused_with_a_clear_error_for_bara_models(tmp_path, monkeypatch):
    """FSDP cannot run through accelerate on CPU (it enables FSDP only on accelerators), so simulate the flag."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from transformers import Trainer, TrainingArguments

    import bara

    real = Trainer.create_accelerator_and_postprocess

    def as_if_fsdp(self):
        real(self)
        self.is_fsdp_enabled = True
        monkeypatch.setattr(self.accelerator.state, "fsdp_plugin", FullyShardedDataParallelPlugin(fsdp_version=1),
                            raising=False)

    monkeypatch.setattr(Trainer, "create_accelerator_and_postprocess", as_if_fsdp)
    ds, collator = ddp_worker.dataset()
    model = bara.get_bara_model(ddp_worker.tiny_bert_head(), bara.BaRAConfig(**ddp_worker.BARA_OPTIONS))
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], remove_unused_columns=False)
    with pytest.raises(ValueError, match=r"BaRA supports FSDP2 only \(fsdp_version: 2\), got fsdp_version 1"):
        bara.BaRATrainer(model=model, args=args, train_dataset=ds, data_collator=collator)


@pytest.mark.parametrize("wrap", ["bert_layer", "bara"])
def test_fsdp2_trains_saves_and_reloads_like_a_single_process(tmp_path, wrap):
    """torch's fully_shard (FSDP2) on 2 gloo processes, wrapped per BertLayer (accelerate's
    transformer-based policy) or per BaRA layer, then the root: the loss stays a plain tensor, and
    the adapter saved through BaRATrainer's gathering path equals a 1-process run (no FSDP) of
    the same global batches; loading it back into the shards and saving again changes nothing."""
    from safetensors.torch import load_file

    import fsdp_worker

    env = os.environ | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1",
                        "WRAP": "bara" if wrap == "bara" else "bert"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(HERE / "fsdp_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    assert proc.returncode == 0, proc.stdout.decode(errors="replace")[-6000:]
    report = json.loads((tmp_path / "report-rank0.json").read_text())
    assert report["loss_types"] == ["Tensor"] * ddp_worker.STEPS  # not a DTensor
    single = fsdp_worker.run_single()
    saved = load_file(tmp_path / "fsdp-adapter" / "adapter_model.safetensors")
    diff = _max_diff(saved, single)
    print(f"max |FSDP2(2, {wrap}) - single process| over the adapter = {diff:.3g}")
    assert diff < TOLERANCE
    assert 0 < float(saved[next(k for k in saved if k.endswith("lora_B.weight"))].abs().max())  # it trained
    reloaded = load_file(tmp_path / "fsdp-reloaded" / "adapter_model.safetensors")
    assert all(torch.equal(saved[k], reloaded[k]) for k in saved)


def test_an_fsdp_launch_on_cpu_says_it_is_plain_ddp(monkeypatch):
    from bara.harness.pipeline import warn_if_fsdp_on_cpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert warn_if_fsdp_on_cpu() is False
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` sets for an FSDP config
    with pytest.warns(UserWarning, match="on CPU this launch trains with plain DDP"):
        assert warn_if_fsdp_on_cpu() is True
