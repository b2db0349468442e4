"""Where do the local gates' logits come from: the bias, W_g's shared part, or the input?

Every local gate's logit splits as ``ℓ(x_n) = b_g + W_g·ū + W_g·(u_n − ū)`` (`bara.gates.LocalGate.decompose`),
u_n the gate's input (``LN(x̄_n)``, minus the running mean with ``center_gate_input``) and ū its mean over the
evaluation set. ``W_g·ū`` is a second bias that W_g carries (the same for every input); only
``W_g·(u_n − ū)`` tells inputs apart. For every finished run given, one ``mean``-mode pass over the run's own
evaluation set records each layer's gate inputs; the table averages over layers and factors:

- ``b_g``: the trained bias (it starts at ``local_bias_init``: 3 by default);
- ``W_g·ū``: the shared part carried by W_g;
- ``σ(b_g + W_g·ū)``: the keep-probability of the average input;
- ``std W_g(u − ū)``: the spread of the input-dependent part across inputs (logit units).

This tests the reading in the README: the default's gates fall from σ(3) to ρ0 through W_g's shared part
(``W_g·ū`` near −3 while ``b_g`` stays near 3), which ``center_gate_input`` takes away.

    python benchmarks/gate_decomposition.py --runs "benchmarks/out/suite/sst2/runs/bara*/seed1"
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, Cache, git_commit, header, run_meta, table, write_md  # noqa: E402
from gates import find_runs, run_label  # noqa: E402

from bara.harness.pipeline import encode_split, load_trained  # noqa: E402


def decompose_run(run: Path) -> dict:
    """The logit decomposition of one run's local gates on its evaluation set, averaged over layers and factors."""
    built, model = load_trained(run)
    layers = list(model.bara_layers()) if hasattr(model, "bara_layers") else []
    if not layers:
        raise SystemExit(f"error: {run}: the adapter has no local gates (method {built.method.name!r}); give BaRA runs")
    inputs: dict[str, list[torch.Tensor]] = {name: [] for name, _ in layers}
    hooks = [layer.local_gate.register_forward_pre_hook(lambda _m, args, name=name: inputs[name].append(args[0].detach()))
             for name, layer in layers]
    try:
        built.method.predict(model, encode_split(built, "eval"), built.collator, samples=1, mode="mean", progress=False)
    finally:
        for hook in hooks:
            hook.remove()
    parts = [layer.local_gate.decompose(torch.cat(inputs[name])) for name, layer in layers]
    cat = lambda key: torch.cat([p[key].flatten() for p in parts])  # noqa: E731  (every layer's factors)
    average_logit = torch.cat([(p["bias"] + p["shared"]) for p in parts])
    return {"layers": len(layers), "bias": cat("bias").mean().item(), "shared": cat("shared").mean().item(),
            "keep_of_average_input": torch.sigmoid(average_logit).mean().item(),
            "context_std": torch.cat([p["context"].std(0) for p in parts]).mean().item(),
            "examples": sum(t.shape[0] for t in inputs[layers[0][0]])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, help="comma-separated run folders or glob patterns (…/runs/<label>/seed<k>)")
    parser.add_argument("--name", default="gate-decomposition", help="results file <results>/<name>.md")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the results page (default benchmarks/results)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    runs = find_runs([p.strip() for p in args.runs.split(",") if p.strip()])
    json_path, md_path = (args.results / f"{args.name}{ext}" for ext in (".json", ".md"))
    cache = Cache(json_path, {"kind": "local-gate logit decomposition, mean mode"})  # cells: run label
    rows, commits = [], set()
    for run in runs:
        label = run_label(run)
        if label not in cache:
            print(f"decomposing {label} …", flush=True)
            cache.put(label, decompose_run(run) | {"task": json.loads((run / "run.json").read_text())["task"],
                                                   "commit": git_commit()})
        cell = cache.get(label)
        commits.add(cell["commit"])
        rows.append([label, cell["task"], str(cell["examples"]), f"{cell['bias']:+.2f}", f"{cell['shared']:+.2f}",
                     f"{cell['keep_of_average_input']:.3f}", f"{cell['context_std']:.3f}"])
    wall = time.perf_counter() - start
    meta = run_meta(cache, wall, commits)
    cache.save()
    command = f"python benchmarks/gate_decomposition.py --runs {json.dumps(args.runs)}" + (
        f" --name {args.name}" if args.name != "gate-decomposition" else "")
    lines = header("Local-gate logits: bias, W_g's shared part, input-dependent part", meta, wall, command) + [
        "Averaged over every adapted layer and factor: ℓ(x) = b_g + W_g·ū + W_g·(u − ū), ū the mean gate input over "
        "the run's evaluation set. The runs trained on this 2-core x86_64 CPU (see each run's run.json).", "",
        *table(["run", "task", "examples", "b_g", "W_g·ū (shared)", "σ(b_g + W_g·ū)", "std W_g(u − ū)"], rows), ""]
    write_md(md_path, lines)
    print(f"wrote {md_path}")


if __name__ == "__main__":
    main()
