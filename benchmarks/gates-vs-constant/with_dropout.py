"""Check C7 with the backbone's dropout on: do BaRA's learned gates add anything on top of MC-dropout?

Every method here trains with the backbone's dropout on, but BaRA evaluates with it off while the
MC-dropout baseline keeps it on. This script re-evaluates the calibration suite's finished BaRA
adapters (`benchmarks/suite.py`, weights under ``benchmarks/out/suite``) with the backbone's dropout on
(BaRA's ``eval_dropout`` option), once with the learned gates and once with constant gates (the C7
control: input-independent factor dropout at the data-average keep-probability), and compares them per
example with the suite's MC-dropout run on the same task and seed (paired bootstrap, 95%). The MC-dropout
adapter is also evaluated in one pass with its dropout off, which tells whether its edge over BaRA comes
from the evaluation-time noise or from the adapter it trained.

``--variant`` picks another BaRA run of the suite, e.g. ``bara[lora_dropout=0.1]``: BaRA trained with the
same dropout on its factors' input as MC-dropout's LoRA (the ``+ dropout`` rows switch that on too).

The new predictions are archived next to the suite's (``benchmarks/results/runs/suite``), so the page
can be rebuilt without the weights (``--report-only``).

    python benchmarks/c7_dropout.py --tasks obqa,boolq,arc_easy --seeds 1
    python benchmarks/c7_dropout.py --tasks arc_easy --variant 'bara[lora_dropout=0.1]' --name c7-adapter-dropout
"""

from __future__ import annotations

import argparse
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch

from bara.harness.compare import run_dir
from bara.harness.metrics import classification_report, error_detection_auroc, paired_bootstrap

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "out" / "suite"
ARCHIVE = ROOT / "results" / "runs" / "suite"
EVALS = {  # row label after the variant's name -> (evaluation folder of the BaRA run, mode, dropout on)
    "": ("eval", None, False),
    " [constant gates]": ("eval-constant", "constant", False),
    " + dropout": ("eval-dropout", None, True),
    " [constant gates] + dropout": ("eval-constant-dropout", "constant", True),
}
MC_MEAN = ("mcdropout [mean mode]", "eval-mean")  # the MC-dropout adapter alone: one pass, dropout off


def _evaluate_and_archive(run: Path, kept: Path, sub: str, **options) -> None:
    from bara.harness.pipeline import evaluate

    print(f"{run}: evaluating {sub} ...", flush=True)
    evaluate(run, out=run / sub, plots=False, progress=False, **options)
    (kept / sub).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / sub / "predictions.safetensors", kept / sub / "predictions.safetensors")


def evaluate_missing(task: str, seed: int, variant: str = "bara") -> None:
    """Evaluate the dropout-on rows of one BaRA run, and the MC-dropout adapter in mean mode, where neither
    the run folder nor the archive holds them (the mean-mode row is skipped when its weights are gone)."""
    run, kept = run_dir(OUT / task, variant, seed), run_dir(ARCHIVE / task, variant, seed)
    for sub, mode, dropout in EVALS.values():
        if not dropout or (kept / sub / "predictions.safetensors").exists():
            continue
        if not (run / "adapter").exists():
            raise SystemExit(f"error: {run}/adapter is missing: train it with `python benchmarks/suite.py --tasks {task} "
                             f"--seeds {seed} --methods '{variant}'` (the archive keeps predictions, not weights)")
        _evaluate_and_archive(run, kept, sub, mode=mode, method_options={"eval_dropout": True})
    mc_run, mc_kept = run_dir(OUT / task, "mcdropout", seed), run_dir(ARCHIVE / task, "mcdropout", seed)
    if (mc_kept / MC_MEAN[1] / "predictions.safetensors").exists():
        return
    if (mc_run / "adapter").exists():
        _evaluate_and_archive(mc_run, mc_kept, MC_MEAN[1], mode="mean")
    else:
        print(f"{task} seed {seed}: no MC-dropout weights under {mc_run}; its mean-mode row is left out", flush=True)


def task_section(task: str, seed: int, variant: str = "bara") -> list[str]:
    """The metrics of the four BaRA evaluations and MC-dropout, then the paired differences that decide C7."""
    from c7 import _predictions, interval_text  # the sibling script's reader of saved predictions and interval format

    kept = run_dir(ARCHIVE / task, variant, seed)
    preds = {variant + suffix: _predictions(kept / sub) for suffix, (sub, _, _) in EVALS.items()
             if (kept / sub / "predictions.safetensors").exists()}
    mc_kept = run_dir(ARCHIVE / task, "mcdropout", seed)
    for label, sub in (("mcdropout", "eval"), MC_MEAN):
        if (mc_kept / sub / "predictions.safetensors").exists():
            preds[label] = _predictions(mc_kept / sub)
    if len(preds) < len(EVALS) + 1 or "mcdropout" not in preds:
        return [f"### {task}, seed {seed}", "", f"Incomplete: have {sorted(preds)}; run this script without `--report-only`.", ""]
    labels = preds[variant][1]
    for label, (_, y) in preds.items():
        if not torch.equal(y, labels):
            raise SystemExit(f"error: {task} seed {seed}: {label} was evaluated on other examples than {variant}")
    lines = [f"### {task}, seed {seed} ({len(labels)} evaluation examples)", "",
             "| predictor | ACC ×100 | ECE ×100 | NLL | Brier | AUROC (confidence → right) |", "|---|---|---|---|---|---|"]
    for label, (probs, y) in preds.items():
        m = classification_report(probs, y)
        lines.append(f"| {label} | {100 * m['accuracy']:.1f} | {100 * m['ece']:.1f} | {m['nll']:.3f} | {m['brier']:.3f} | "
                     f"{float(error_detection_auroc(probs, y)):.3f} |")
    gd, cd, plain = (preds[variant + k][0] for k in (" + dropout", " [constant gates] + dropout", ""))
    mc = preds["mcdropout"][0]
    lines += ["", "| paired difference (95% bootstrap) | ΔNLL | ΔECE ×100 | ΔAUROC |", "|---|---|---|---|"]
    pairs = [("gates + dropout − constant gates + dropout (C7, first half)", gd, cd),
             ("gates + dropout − MC-dropout (C7, second half)", gd, mc),
             ("gates + dropout − gates (what the dropout adds)", gd, plain),
             ("gates − constant gates, dropout off (C7 as the suite evaluates it)", plain, preds[variant + " [constant gates]"][0]),
             ("gates − MC-dropout, BaRA's dropout off", plain, mc)]
    if MC_MEAN[0] in preds:  # whether MC-dropout's edge comes from its evaluation-time noise or from its adapter
        pairs.append(("MC-dropout − its adapter in one pass (what MC-dropout's dropout adds)", mc, preds[MC_MEAN[0]][0]))
    nll_diffs = []  # learned vs constant gates, vs MC-dropout: the two halves of C7
    for name, first_probs, other in pairs:
        nll, ece, auroc = (paired_bootstrap(metric, first_probs, other, labels, n_boot=1000) for metric in ("nll", "ece", "auroc"))
        nll_diffs.append(nll)
        lines.append(f"| {name} | {interval_text(nll)} | {interval_text(ece, 100, 1)} | {interval_text(auroc)} |")
    first, second = nll_diffs[:2]
    lines += ["", f"C7 with dropout on, {task}: learned gates beat constant gates (ΔNLL interval below 0): "
                  f"{'PASS' if first['high'] < 0 else 'MISS'}; NLL at most MC-dropout's: {'PASS' if second['diff'] <= 0 else 'MISS'}.", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="obqa,boolq,arc_easy", help="suite tasks whose BaRA and MC-dropout runs are finished")
    parser.add_argument("--seeds", default="1")
    parser.add_argument("--variant", default="bara",
                        help="the suite's BaRA run to re-evaluate, e.g. 'bara[lora_dropout=0.1]' (trained with adapter dropout, "
                             "as MC-dropout's LoRA; its '+ dropout' rows switch that dropout on too)")
    parser.add_argument("--report-only", action="store_true", help="only summarise the archived predictions")
    parser.add_argument("--name", default="c7-dropout", help="results file benchmarks/results/<name>.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tasks, seeds = args.tasks.split(","), [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()
    if not args.report_only:
        for task in tasks:
            for seed in seeds:
                evaluate_missing(task, seed, args.variant)
    from common import git_commit

    subject = "" if args.variant == "bara" else f": `{args.variant}`"
    lines = [f"## Check C7 with the backbone's dropout on{subject} (`benchmarks/c7_dropout.py`)", "",
             f"`python benchmarks/c7_dropout.py {shlex.join(sys.argv[1:])}` · commit `{git_commit()}` · "
             + ("report of the archived evaluations (without `--report-only` the script evaluates what is missing)"
                if args.report_only else f"wall {(time.perf_counter() - start) / 60:.1f} min (archived evaluations are reused)")
             + f" · {platform.machine()} CPU, one torch thread. "
             f"The suite's `{args.variant}` adapters (MiniLM-L6, r = 8, the suite's settings for each task), evaluated with S = 10 "
             "samples four ways: as trained (backbone dropout off), with constant gates, and each of those with the "
             "backbone's dropout on (`bara evaluate --option eval_dropout=true`), next to the suite's MC-dropout LoRA "
             "(its own adapter, dropout on, S = 10) and that adapter alone in one pass with the dropout off "
             "(`mcdropout [mean mode]`, where its weights were at hand). AUROC: how well the confidence separates right from wrong answers. "
             "Negative ΔNLL / ΔECE and positive ΔAUROC favour the learned gates with dropout.", ""]
    for task in tasks:
        for seed in seeds:
            lines += task_section(task, seed, args.variant)
    path = ROOT / "results" / f"{args.name}.md"
    path.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
