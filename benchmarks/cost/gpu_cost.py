"""What BaRA costs next to LoRA and BLoB on a GPU: training step time and peak memory
on a randomly initialised Llama-7B-shaped stack (hidden 4096, intermediate 11008, 32 heads, 4 layers),
bf16 base weights with fp32 adapters (peft's default), batch 8 × length 512, r = 8 on q_proj and v_proj.

A training step is what the library's trainer does per batch (the method's ``compute_loss`` with its KL
term at full weight, ``backward``, the trainer's AdamW ``step``, ``zero_grad``), timed with a device
synchronisation at the end; the configurations take turns step by step (rotating order), and the ratio
is the median over rounds of ``t_method / t_LoRA``. Peak memory: ``torch.cuda.max_memory_allocated``
during 3 steps of one configuration, minus what was allocated before them (activations kept for
backward, gradients, optimizer state, transient buffers).

    python benchmarks/cost/gpu_cost.py                 # on a CUDA machine; writes benchmarks/cost/gpu.md
    python benchmarks/cost/gpu_cost.py --tiny --device cpu   # a small stack, to check the script itself

The same weights and batch serve every configuration. Reuses the step and timing helpers of cost.py.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # cost.py
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "_lib"))
from common import OUT, git_commit, script_command, write_md  # noqa: E402
from cost import MEMORY_TARGET, TIME_TARGET, Stepper, alternate, method_for, summarise_times  # noqa: E402

LLAMA_7B_SHAPE = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=4, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000)
TINY = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
            vocab_size=1000)
CONFIGS = ["lora", "bara", "blob"]


def build(config: str, shape: dict, r: int, device: torch.device, dtype: torch.dtype):
    """The Llama stack scored on two label tokens, wrapped by ``config``; adapters kept in fp32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from bara.harness.heads import LabelTokenClassifier

    torch.manual_seed(0)  # the same random weights for every configuration
    lm = LlamaForCausalLM(LlamaConfig(**shape)).to(dtype)
    method = method_for(config, r)
    model = method.wrap(LabelTokenClassifier(lm, [330, 350]), ["q_proj", "v_proj"], [])
    method.before_training(model)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return method, model.to(device)


def peak_memory(step: Stepper, steps: int = 3) -> float | None:
    """Bytes allocated at the peak of ``steps`` steps above what was allocated before them (CUDA only)."""
    if step.device.type != "cuda":
        return None
    torch.cuda.synchronize(step.device)
    torch.cuda.reset_peak_memory_stats(step.device)
    before = torch.cuda.memory_allocated(step.device)
    for _ in range(steps):
        step()
    return float(torch.cuda.max_memory_allocated(step.device) - before)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer 256-wide stack, batch 2 × 32 (checks the script)")
    parser.add_argument("--steps", type=int, default=20, help="timed rounds (default 20)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--r", type=int, default=8)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; run on a GPU machine, or use --device cpu --tiny to check the script")
    shape, batch, length = (TINY, 2, 32) if args.tiny else (LLAMA_7B_SHAPE, 8, 512)
    dtype = torch.bfloat16
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, shape["vocab_size"], (batch, length), generator=g)
    data = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "labels": torch.randint(0, 2, (batch,), generator=g).to(device)}
    start = time.perf_counter()
    steppers, memory = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for config in CONFIGS:
            method, model = build(config, shape, args.r, device, dtype)
            steppers[config] = Stepper(method, model, data, tmp, device=device)
            steppers[config]()  # allocate the optimizer state before measuring
            memory[config] = peak_memory(steppers[config])
            print(f"[gpu_cost] built {config}; peak step memory "
                  f"{'n/a' if memory[config] is None else f'{memory[config] / 2**30:.2f} GiB'}", flush=True)
        times = summarise_times(alternate(steppers, args.warmup, args.steps, label="gpu train", clock=time.perf_counter))
    del steppers
    gc.collect()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    size = "tiny 2-layer 256-wide stack, batch 2 × 32" if args.tiny else "Llama-7B-shaped stack (4 layers), batch 8 × 512"
    lines = ["## Cost on a GPU (`benchmarks/cost/gpu_cost.py`)", "",
             f"`{script_command(__file__, argv if argv is not None else sys.argv[1:])}` · commit "
             f"`{git_commit()}` · {name} · {size}, bf16 base weights, fp32 adapters, r = {args.r} · "
             f"wall {(time.perf_counter() - start) / 60:.1f} min.", "",
             "| method | median step | step / LoRA (median of rounds) | peak step memory | memory / LoRA |",
             "|---|---|---|---|---|"]
    for config in CONFIGS:
        t, m = times[config], memory[config]
        ratio = "1" if config == "lora" else f"{t['ratio']:.3f} (IQR {t['ratio_q1']:.3f}–{t['ratio_q3']:.3f})"
        mem = "n/a" if m is None else f"{m / 2**30:.2f} GiB"
        mem_ratio = "n/a" if m is None or not memory["lora"] else f"{m / memory['lora']:.3f}"
        lines.append(f"| {config} | {t['median_s'] * 1e3:.1f} ms | {ratio} | {mem} | {mem_ratio} |")
    bara_time = times["bara"]["ratio"]
    lines += ["", f"Targets: BaRA / LoRA step time ≤ {TIME_TARGET}: {bara_time:.3f} — "
                  f"{'PASS' if bara_time <= TIME_TARGET else 'MISS'}"]
    if memory["lora"]:
        mem_ratio = memory["bara"] / memory["lora"]
        lines[-1] += f"; memory ≤ {MEMORY_TARGET}: {mem_ratio:.3f} — {'PASS' if mem_ratio <= MEMORY_TARGET else 'MISS'}."
    here = Path(__file__).resolve().parent  # a --tiny check is not a result: it stays out of docs/RESULTS.md
    out = OUT / "gpu-tiny.md" if args.tiny else here / "gpu.md"
    write_md(out, lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
