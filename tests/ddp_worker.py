"""One process of the distributed test (`tests/test_distributed.py`); not collected by pytest.

Launched as ``accelerate launch --cpu --num_processes 2 tests/ddp_worker.py OUT [MODEL_DIR DATA_DIR]``
(gloo backend), or imported and called with ``run(out)`` for the single-process reference.

Part 1 (`run`): trains a tiny BERT with `bara.BaRATrainer` for ``STEPS`` steps and writes every
rank's adapter tensors to ``OUT/rank{R}.safetensors``. The gates are in the deterministic
``mean`` mode (``z = E_q[π] ⊙ σ(ℓ(x))``): sampled gates draw different noise under different
process layouts, so only a deterministic mode can be compared across layouts. The KL terms are
still computed from the same gates, with β_g large and no warm-up, so that counting the global KL
once per rank (instead of once) or summing the local KL over ranks would show in the weights.

Part 2 (`run_cli`, only when MODEL_DIR and DATA_DIR are given): runs the real ``bara train``
command (``bara.harness.cli.app``) unchanged in every process and records, per rank, which output files
that rank wrote (``OUT/writes-rank{R}.json``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

STEPS = 4
GLOBAL_BATCH = 8
NUM_EXAMPLES = 16
BARA_OPTIONS = dict(r=4, target_modules=["query", "value"], modules_to_save=["classifier"], kl_warmup=0.0,
                    beta_global=20.0, beta_local=1.0)


def dataset():
    """16 random sequences (lengths 4..11) labelled by the parity of their second token."""
    from bara.harness.data import Collator, EncodedDataset, EncodedExample

    g = torch.Generator().manual_seed(3)
    items = []
    for _ in range(NUM_EXAMPLES):
        n = int(torch.randint(4, 12, (1,), generator=g))
        ids = torch.randint(1, 64, (n,), generator=g).tolist()
        items.append(EncodedExample(ids, ids[1] % 2, 2, None))
    return EncodedDataset(items, "sequence_classification", 2), Collator(0, "sequence_classification", 2)


def tiny_bert_head():
    from transformers import BertConfig, BertForSequenceClassification

    from bara.harness.heads import SequenceClassifier

    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return SequenceClassifier(BertForSequenceClassification(config).eval())


def run(out: str | Path, *, world_size: int = 1, **bara_overrides) -> dict[str, torch.Tensor]:
    """Train for STEPS steps with a global batch of GLOBAL_BATCH split over ``world_size`` processes."""
    from transformers import TrainingArguments

    import bara
    from bara.io import _adapter_state

    out = Path(out)
    ds, collator = dataset()
    head = tiny_bert_head()
    torch.manual_seed(5)
    model = bara.get_bara_model(head, bara.BaRAConfig(**(BARA_OPTIONS | bara_overrides)))
    model.set_gate_mode("mean")  # deterministic: comparable across process layouts
    args = TrainingArguments(
        output_dir=str(out / "trainer"), use_cpu=True, report_to=[], remove_unused_columns=False, disable_tqdm=True,
        max_steps=STEPS, logging_steps=1, save_strategy="no", per_device_train_batch_size=GLOBAL_BATCH // world_size,
        learning_rate=5e-2, seed=11, data_seed=13, dataloader_num_workers=0, lr_scheduler_type="constant")
    trainer = bara.BaRATrainer(model=model, args=args, train_dataset=ds, data_collator=collator)
    assert trainer.args.world_size == world_size, (trainer.args.world_size, world_size)
    trainer.train()
    return {k: v.detach().clone() for k, v in _adapter_state(model).items()}


class _WriteLog:
    """Record the output files this process writes (adapter, run.json, train_log.json)."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def install(self) -> None:
        import bara.io
        import bara.harness.pipeline

        original_save, original_write = bara.io.save_adapter, Path.write_text
        log = self.paths

        def save_adapter(model, path, *args, **kwargs):
            log.append(str(Path(path).resolve()))
            return original_save(model, path, *args, **kwargs)

        def write_text(self, *args, **kwargs):
            log.append(str(self.resolve()))
            return original_write(self, *args, **kwargs)

        bara.io.save_adapter = save_adapter
        Path.write_text = write_text


def run_cli(out: Path, model_dir: str, data_dir: str, rank: int) -> int:
    """``bara train`` exactly as a user runs it under ``accelerate launch``; returns its exit code."""
    from typer.main import get_command

    from bara.harness.cli import app

    writes = _WriteLog()
    writes.install()
    args = ["train", "--model", model_dir, "--task", "classification", "--data", data_dir, "--method", "bara",
            "--steps", "3", "--batch-size", "4", "--out", str(out / "cli-run")]
    try:
        code = int(get_command(app).main(args, standalone_mode=False) or 0)  # typer.Exit(n) returns n here
    except SystemExit as exc:
        code = int(exc.code or 0)
    (out / f"writes-rank{rank}.json").write_bytes(json.dumps(writes.paths).encode())  # not via write_text
    return code


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    torch.set_num_threads(1)
    from safetensors.torch import save_file

    tensors = run(out, world_size=world_size)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"rank{rank}.safetensors"))
    if len(sys.argv) >= 4:
        code = run_cli(out, sys.argv[2], sys.argv[3], rank)
        if code:
            raise SystemExit(code)


if __name__ == "__main__":
    main()
