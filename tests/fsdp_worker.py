"""One process of the FSDP2 test (`tests/test_distributed.py`); not collected by pytest.

Launched as ``torchrun --standalone --nproc_per_node 2 tests/fsdp_worker.py OUT`` (gloo, CPU).
accelerate enables FSDP only on accelerators (on CPU it silently falls back to DDP), so the
sharding is applied here as accelerate's FSDP2 transformer-based wrap policy does: `fully_shard`
on every ``BertLayer`` (or every BaRA layer with ``WRAP=bara``), then on the root. The training
loop is the `BaRATrainer` objective (``NLL + kl_divergence``, logging `rank_summary`) on the
`ddp_worker` model and data with deterministic ``mean`` gates, so the result can be compared with
the same loop on one process without FSDP (`run_single`). Then the adapter is saved through `bara.trainer`'s FSDP path
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


def batches(world_size: int, rank: int) -> list[dict[str, torch.Tensor]]:
    """STEPS global batches of GLOBAL_BATCH examples in a fixed order; this rank's share of each."""
    ds, collator = ddp_worker.dataset()
    per = ddp_worker.GLOBAL_BATCH // world_size
    out = []
    for step in range(ddp_worker.STEPS):
        start = (step * ddp_worker.GLOBAL_BATCH) % ddp_worker.NUM_EXAMPLES
        batch = collator([ds[i] for i in range(start, start + ddp_worker.GLOBAL_BATCH)])
        out.append({k: v[rank * per:(rank + 1) * per] for k, v in batch.items()})
    return out


def build():
    import bara

    head = ddp_worker.tiny_bert_head()
    torch.manual_seed(5)
    model = bara.get_bara_model(head, bara.BaRAConfig(**ddp_worker.BARA_OPTIONS))
    model.set_gate_mode("mean")  # deterministic: comparable across process layouts
    return model


def train(model, data) -> list[str]:
    """BaRATrainer's objective (β_t = 1: no warm-up) with AdamW; returns the loss types."""
    from bara.objective import kl_divergence, rank_summary

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2, weight_decay=0.0)
    types = []
    model.train()
    for batch in data:
        loss = model(**batch).loss + kl_divergence(model, ddp_worker.NUM_EXAMPLES)
        types.append(type(loss).__name__)
        rank_summary(model)  # what BaRATrainer logs
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return types


def run_single() -> dict[str, torch.Tensor]:
    """The same loop on one process without FSDP, on the whole global batches."""
    from bara.io import _adapter_state

    model = build()
    train(model, batches(1, 0))
    return {k: v.detach().clone() for k, v in _adapter_state(model).items()}


def main() -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor
    from transformers.models.bert.modeling_bert import BertLayer

    from bara.io import _adapter_state, copy_adapter_state, read_adapter, save_adapter
    from bara.layer import BaRALinear
    from bara.trainer import _shard_like, full_adapter_parameters

    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    data = batches(world, rank)
    model = build()
    mesh = init_device_mesh("cpu", (world,))
    unit = BaRALinear if os.environ.get("WRAP") == "bara" else BertLayer
    for module in list(model.modules()):
        if isinstance(module, unit):
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)
    assert any(isinstance(p, DTensor) for p in model.parameters()), "nothing was sharded"
    loss_types = train(model, data)

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
    (out / f"report-rank{rank}.json").write_text(json.dumps({"loss_types": loss_types}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Leave without interpreter finalisation: about 1 run in 8, a gloo worker thread that FSDP2's
    # collectives started was still joinable when C++ static destructors ran, and the rank died
    # with "terminate called without an active exception" after all its work was written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
