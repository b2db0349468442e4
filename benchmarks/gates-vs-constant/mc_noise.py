"""Is a learned-vs-constant-gates difference larger than the Monte-Carlo noise of the evaluation?

`real_tasks.py` compares a BaRA adapter's learned gates with its constant gates on one draw of S sampled
gate sets per example, so its bootstrap interval covers the choice of examples but not the choice
of samples. This script re-evaluates the same adapters in both modes under several sampling seeds
and reports how much ΔNLL = NLL(learned) − NLL(constant) moves from one draw to the next. A
verdict stands only if ΔNLL keeps its sign across draws.

    python benchmarks/gates-vs-constant/mc_noise.py benchmarks/out/c7/<task>/runs/bara/seed1 --mc-seeds 101,102,103
    python benchmarks/gates-vs-constant/mc_noise.py RUN [RUN ...] --samples 10 --name multitask-mc-noise
    python benchmarks/gates-vs-constant/mc_noise.py --name multitask-mc-noise --report-only   # the page from its cache

Results: ``benchmarks/gates-vs-constant/<name>.{json,md}``; finished (run, mode, seed) cells are cached in the
JSON and skipped on a restart, and the page tables every run and draw in the cache.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "_lib"))
from common import Cache, fmt, git_commit, header, report_meta, run_meta, script_command, table, write_md  # noqa: E402

from bara.harness.pipeline import encode_split, load_trained  # noqa: E402

MODES = ("default", "constant")  # learned gates (S sampled gate sets) and the constant-gate control
RESULTS = Path(__file__).resolve().parent  # the pages


def cell_key(run: Path | str, mode: str, mc_seed: int | str) -> str:
    return f"{run}|{mode}|{mc_seed}"


def example_nll(run: Path, mode: str, mc_seed: int, samples: int) -> list[float]:
    """Per-example NLL of the S-sample predictive of ``run`` in ``mode``, gates drawn under ``mc_seed``."""
    built, model = load_trained(run)  # fresh per cell: the constant mode fixes the gates inside the model
    eval_set = encode_split(built, "eval")
    with torch.random.fork_rng():
        torch.manual_seed(mc_seed)
        preds = built.method.predict(model, eval_set, built.collator, samples=samples,
                                     mode=None if mode == "default" else mode, progress=False)
    picked = preds.probs.gather(1, preds.labels[:, None]).squeeze(1)
    return (-picked.clamp_min(1e-12).log()).tolist()


def summary_rows(cache: Cache) -> tuple[list[list], list[list]]:
    """Every (run, draw) in the cache with both modes, so the page grows as later invocations add runs or draws."""
    draws: dict[str, list[int]] = {}
    for key in cache.data["cells"]:
        run, mode, seed = key.rsplit("|", 2)
        if mode == MODES[0] and cell_key(run, MODES[1], seed) in cache:
            draws.setdefault(run, []).append(int(seed))
    per_draw, per_run = [], []
    for run, seeds in draws.items():
        deltas = []
        for seed in sorted(seeds):
            learned, constant = (cache.get(cell_key(run, m, seed)) for m in MODES)
            nll_l, nll_c = statistics.fmean(learned), statistics.fmean(constant)
            deltas.append(nll_l - nll_c)
            per_draw.append([str(run), str(seed), nll_l, nll_c, f"{nll_l - nll_c:+.4f}"])
        spread = statistics.stdev(deltas) if len(deltas) > 1 else float("nan")
        signs = sum(d < 0 for d in deltas)
        per_run.append([str(run), f"{statistics.fmean(deltas):+.4f}", fmt(spread, 4), f"{min(deltas):+.4f}",
                        f"{max(deltas):+.4f}", f"{signs} of {len(deltas)}"])
    return per_draw, per_run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path, help="BaRA run folders written by `bara train` / `bara compare`")
    parser.add_argument("--mc-seeds", default="101,102,103", help="sampling seeds (each one full draw of S samples)")
    parser.add_argument("--samples", type=int, default=10, help="Monte-Carlo samples S per draw (real_tasks.py uses 10)")
    parser.add_argument("--name", default="mc-noise", help="page <name>.{json,md} next to this script")
    parser.add_argument("--report-only", action="store_true", help="write the page from the cached draws, evaluate nothing")
    parser.add_argument("--results", type=Path, default=RESULTS, help=argparse.SUPPRESS)  # tests write elsewhere
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if not args.runs and not args.report_only:
        parser.error("give at least one run folder (or --report-only)")
    if args.report_only and not (args.results / f"{args.name}.json").exists():
        parser.error(f"--report-only: no cache {args.results / f'{args.name}.json'}")
    for run in [] if args.report_only else args.runs:
        if not (run / "run.json").exists():
            parser.error(f"{run}: not a run folder (no run.json)")
    seeds = [int(s) for s in args.mc_seeds.split(",")]
    cache = Cache(args.results / f"{args.name}.json", {"samples": args.samples})
    start = time.perf_counter()
    for run in [] if args.report_only else args.runs:
        for seed in seeds:
            for mode in MODES:
                key = cell_key(run, mode, seed)
                if key not in cache:
                    began = time.perf_counter()
                    nll = example_nll(run, mode, seed, args.samples)
                    print(f"{key}: NLL {statistics.fmean(nll):.4f} ({time.perf_counter() - began:.0f} s)", flush=True)
                    cache.put(key, nll)
    wall = time.perf_counter() - start
    per_draw, per_run = summary_rows(cache)
    if args.report_only:
        meta = report_meta(cache)
    else:
        meta = run_meta(cache, wall, {git_commit()})
        cache.data["meta"] = meta  # what a --report-only rebuild states about the runs
        cache.save()
    command = script_command(__file__, sys.argv[1:] if argv is None else argv)
    lines = header("Learned vs constant gates against Monte-Carlo noise: fresh gate draws", meta, wall, command)
    lines += [f"Each draw evaluates the adapter twice with S = {args.samples} sampled gate sets per example, seeded by "
              "the draw's seed: once with its learned gates, once with constant gates at the data-average "
              "keep-probabilities (the constant-gate control). ΔNLL < 0 favours the learned gates; the spread across draws "
              "is the Monte-Carlo noise that `real_tasks.py`'s bootstrap interval leaves out. The tables hold every run and draw "
              "in the cache, including those added by earlier invocations with other arguments.", "",
              *table(["run", "mean ΔNLL", "std across draws", "min", "max", "draws with ΔNLL < 0"], per_run), "",
              *table(["run", "draw seed", "NLL learned", "NLL constant", "ΔNLL"], per_draw), ""]
    write_md(args.results / f"{args.name}.md", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
