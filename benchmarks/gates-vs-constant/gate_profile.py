"""How trained BaRA adapters use their gates on a task mixture, domain by domain.

For every finished run given, one pass in ``mean`` mode over the run's own evaluation set records
the expected joint gates E_q[z(x)] of every layer (the same gates that the Monte-Carlo passes
sample), and `bara.harness.metrics.gate_profile` summarises them per domain: the rank s̄, the mean
keep-probability, the gate entropy (how much the Monte-Carlo passes vary which factors are on)
and the share of nearly deterministic gates. This is the diagnosis behind the learned-vs-constant-gates
comparison: a domain whose gates sit at 0 or 1 gets no averaging from them, one whose gates sit near ρ0 gets
dropout-like averaging. Writes ``<name>.md`` next to this script (+ ``.json`` cache, + a per-layer figure).
It reads the runs' adapters, which the run archive does not keep: give it run folders trained locally (under ``benchmarks/out/``).

    python benchmarks/gates-vs-constant/gate_profile.py --runs "benchmarks/out/c7/sst2+boolq/runs/bara*/seed1" --name mixture-gates
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "_lib"))
from common import Cache, git_commit, header, run_meta, script_command, table, write_md  # noqa: E402

from bara.harness.metrics import gate_profile  # noqa: E402
from bara.harness.pipeline import encode_split, load_trained  # noqa: E402
from bara.harness.plots import gate_profile_plot  # noqa: E402

RESULTS = Path(__file__).resolve().parent  # the pages


def run_label(run: Path) -> str:
    """``bara[local_kl=marginal,gate_lr_multiplier=10] seed 1`` from the run's ``run.json``."""
    spec = json.loads((run / "run.json").read_text())
    options = dict(spec.get("method_options") or {})
    options = {**options.pop("config", {}), **options}
    inner = ",".join(f"{k}={v}" for k, v in options.items())
    return f"{spec['method']}{f'[{inner}]' if inner else ''} seed {spec['seed']}"


def profile_run(run: Path, eval_size: int | None = None) -> dict:
    """Gate profile of one trained run on its own evaluation set (mean mode, one pass); ``eval_size``
    examples per domain instead of the run's own number, if given."""
    built, model = load_trained(run, eval_size=eval_size)
    preds = built.method.predict(model, encode_split(built, "eval"), built.collator, samples=1, mode="mean", progress=False)
    if not preds.gate_probs:
        raise SystemExit(f"error: {run}: the adapter has no gates (method {built.method.name!r}); give BaRA runs")
    domains = [d or built.task.name for d in preds.domains]
    return {"task": built.task.name, "layers": list(preds.gate_probs), "profile": gate_profile(preds.gate_probs, domains)}


def find_runs(patterns: list[str]) -> list[Path]:
    runs = sorted({Path(p).resolve() for pattern in patterns for p in glob.glob(pattern)})
    finished = [r for r in runs if (r / "adapter").is_dir() and (r / "run.json").exists()]
    if not finished:
        raise SystemExit(f"error: no trained run (a folder with run.json and adapter/) matches {patterns}")
    return finished


def report(cells: dict[str, dict], figure: Path) -> list[str]:
    rows = []
    for label, cell in cells.items():
        for domain, s in cell["profile"].items():
            rows.append([label, domain, str(s["n"]), f"{s['rank']:.2f}", f"{s['keep']:.3f}",
                         f"{s['entropy'] / math.log(2):.2f}", f"{100 * s['certain']:.0f}%"])
    return [
        "Per run and domain: the rank s̄ (factors kept per layer, averaged over layers), the mean keep-probability "
        "E_q[z], the gate entropy as a fraction of its maximum ln 2 (1: every factor is a fair coin on each "
        "Monte-Carlo pass; 0: the same factors every pass) and the share of gates within 0.05 of 0 or 1.", "",
        *table(["run", "domain", "n", "s̄", "keep E[z]", "entropy / ln 2", "near 0 or 1"], rows), "",
        f"![gate keep-probability and entropy by layer and domain]({figure.name})", "",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, help="comma-separated run folders or glob patterns (…/runs/<label>/seed<k>)")
    parser.add_argument("--name", default="gates", help="results file <results>/<name>.md")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the results page (default: next to this script)")
    parser.add_argument("--eval-size", type=int, default=None,
                        help="evaluation examples per domain (default: the run's own evaluation set)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    runs = find_runs([p.strip() for p in args.runs.split(",") if p.strip()])
    json_path, md_path, stem = (args.results / f"{args.name}{ext}" for ext in (".json", ".md", ""))
    cache = Cache(json_path, {"kind": "gate profile, mean mode", "eval_size": args.eval_size})  # cells: run label
    cells = {}
    for run in runs:
        label = run_label(run)
        if label not in cache:
            print(f"profiling {label} …", flush=True)
            cache.put(label, profile_run(run, args.eval_size) | {"commit": git_commit()})
        cells[label] = cache.get(label)
    layers = next(iter(cells.values()))["layers"]
    figure = gate_profile_plot({k: v["profile"] for k, v in cells.items()}, layers, stem.with_suffix(".png"))
    wall = time.perf_counter() - start
    meta = run_meta(cache, wall, {cell["commit"] for cell in cells.values()})
    cache.save()
    command = script_command(__file__, f"--runs {json.dumps(args.runs)} --name {args.name}" + (
        f" --eval-size {args.eval_size}" if args.eval_size else ""))
    write_md(md_path, header(f"Gate profile by domain ({args.name})", meta, wall, command) + report(cells, figure))
    print(f"wrote {md_path}")


if __name__ == "__main__":
    main()
