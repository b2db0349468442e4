"""One process of the FSDP2 test (`tests/test_distributed.py`); not collected by pytest.

Launched as ``torchrun --standalone --nproc_per_node 2 tests/fsdp_worker.py OUT`` (gloo, CPU).
accelerate enables FSDP only on accelerators (on CPU it silently falls back to DDP), so the
sharding is applied here as accelerate's FSDP2 transformer-based wrap policy does: `fully_shard`
on every ``BertLayer`` (or every BaRA layer with ``WRAP=bara``), then on the root. The training
loop is the `BaRATrainer` objective (``NLL + kl_divergence``) with the `ddp_worker` model, data,
optimizer settings and deterministic ``mean`` gates, so the result can be compared with
`ddp_worker.run` on one process. Then the adapter is saved through `bara.trainer`'s FSDP path
(`full_adapter_parameters` + `save_adapter`), zeroed, loaded back into the shards
(`BaRATrainer._load_from_checkpoint`'s `_shard_like`), and saved again.

Writes ``OUT/fsdp-adapter`` (the first save), ``OUT/fsdp-reloaded`` (after the reload), and
``OUT/report-rank{R}.json`` (the loss type of every step).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ddp_worker  # noqa: E402


def batches(world_size: int, rank: int):
    """The global batches of `ddp_worker.run` (STEPS steps, GLOBAL_BATCH examples), this rank's share."""
    from transformers import TrainingArguments, Trainer

    ds, collator = ddp_worker.dataset()
    # the same sampler as the single-process Trainer run: same seed, same order of examples
    args = TrainingArguments(output_dir=os.devnull, use_cpu=True, report_to=[], remove_unused_columns=False,
                             per_device_train_batch_size=ddp_worker.GLOBAL_BATCH, seed=11, data_seed=13,
                             dataloader_num_workers=0)
    loader = Trainer(model=torch.nn.Linear(1, 1), args=args, train_dataset=ds, data_collator=collator).get_train_dataloader()
    per = ddp_worker.GLOBAL_BATCH // world_size
    out = []
    while len(out) < ddp_worker.STEPS:
        for batch in loader:
            out.append({k: v[rank * per:(rank + 1) * per] for k, v in batch.items()})
            if len(out) == ddp_worker.STEPS:
                break
    return out


def main() -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    from transformers.models.bert.modeling_bert import BertLayer

    import bara
    from bara.io import _adapter_state, copy_adapter_state, read_adapter, save_adapter
    from bara.layer import BaRALinear
    from bara.objective import kl_divergence, rank_summary
    from bara.trainer import _shard_like, full_adapter_parameters

    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    data = batches(world, rank)

    head = ddp_worker.tiny_bert_head()
    torch.manual_seed(5)
    model = bara.get_bara_model(head, bara.BaRAConfig(**ddp_worker.BARA_OPTIONS))
    model.set_gate_mode("mean")
    mesh = init_device_mesh("cpu", (world,))
    unit = BaRALinear if os.environ.get("WRAP") == "bara" else BertLayer
    for module in list(model.modules()):
        if isinstance(module, unit):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    assert any(isinstance(p, DTensor) for p in model.parameters()), "nothing was sharded"

    # the optimizer of BaRATrainer's default path (Trainer: AdamW, constant lr, weight decay 0)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=5e-2, weight_decay=0.0)
    loss_types, summaries = [], []
    model.train()
    for batch in data:
        output = model(**batch)
        loss = output.loss + kl_divergence(model, ddp_worker.NUM_EXAMPLES)  # β_t = 1 (kl_warmup = 0)
        loss_types.append(type(loss).__name__)
        summaries.append(rank_summary(model)["r_glob"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    with full_adapter_parameters(model):
        if rank == 0:
            save_adapter(model, out / "fsdp-adapter", prune=False)
    assert all(isinstance(v, DTensor) for v in _adapter_state(model).values() if v.requires_grad), "shards not restored"
    dist.barrier()
    _, tensors = read_adapter(out / "fsdp-adapter")
    own = _adapter_state(model)
    with torch.no_grad():
        for value in own.values():
            value.zero_()
    copy_adapter_state(own, _shard_like(own, tensors), out / "fsdp-adapter")
    with full_adapter_parameters(model):
        if rank == 0:
            save_adapter(model, out / "fsdp-reloaded", prune=False)
    (out / f"report-rank{rank}.json").write_text(json.dumps({"loss_types": loss_types, "r_glob": summaries}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
