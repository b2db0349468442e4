"""Check C7 with the backbone's dropout on: do BaRA's learned gates add anything on top of MC-dropout?

Every method here trains with the backbone's dropout on, but BaRA evaluates with it off while the
MC-dropout baseline keeps it on. This script re-evaluates the calibration suite's finished BaRA
adapters (`benchmarks/suite.py`, weights under ``benchmarks/out/suite``) with the backbone's dropout on
(BaRA's ``eval_dropout`` option), once with the learned gates and once with constant gates (the C7
control: input-independent factor dropout at the data-average keep-probability), and compares them per
example with the suite's MC-dropout run on the same task and seed (paired bootstrap, 95%).

The new predictions are archived next to the suite's (``benchmarks/results/runs/suite``), so the page
can be rebuilt without the weights (``--report-only``).

    python benchmarks/c7_dropout.py --tasks obqa,boolq,arc_easy --seeds 1
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from bara.compare import run_dir
from bara.metrics import classification_report, error_detection_auroc, paired_bootstrap

ROOT = Path(__file__).resolve().parent
OUT = ROOT / "out" / "suite"
ARCHIVE = ROOT / "results" / "runs" / "suite"
EVALS = {  # row label -> (evaluation folder of the BaRA run, mode, backbone dropout on)
    "bara": ("eval", None, False),
    "bara [constant gates]": ("eval-constant", "constant", False),
    "bara + dropout": ("eval-dropout", None, True),
    "bara [constant gates] + dropout": ("eval-constant-dropout", "constant", True),
}


def evaluate_missing(task: str, seed: int) -> None:
    """Evaluate the dropout-on rows of one BaRA run that neither the run folder nor the archive holds."""
    from bara.pipeline import evaluate

    run, kept = run_dir(OUT / task, "bara", seed), run_dir(ARCHIVE / task, "bara", seed)
    for sub, mode, dropout in EVALS.values():
        if not dropout or (kept / sub / "predictions.safetensors").exists():
            continue
        if not (run / "adapter").exists():
            raise SystemExit(f"error: {run}/adapter is missing: train it with `python benchmarks/suite.py --tasks {task} "
                             f"--seeds {seed} --methods bara` (the archive keeps predictions, not weights)")
        print(f"{task} seed {seed}: evaluating {sub} ...", flush=True)
        evaluate(run, out=run / sub, mode=mode, plots=False, progress=False, method_options={"eval_dropout": True})
        (kept / sub).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run / sub / "predictions.safetensors", kept / sub / "predictions.safetensors")


def task_section(task: str, seed: int) -> list[str]:
    """The metrics of the four BaRA evaluations and MC-dropout, then the paired differences that decide C7."""
    from c7 import _predictions, interval_text  # the sibling script's reader of saved predictions and interval format

    kept = run_dir(ARCHIVE / task, "bara", seed)
    preds = {label: _predictions(kept / sub) for label, (sub, _, _) in EVALS.items() if (kept / sub / "predictions.safetensors").exists()}
    mc_folder = run_dir(ARCHIVE / task, "mcdropout", seed) / "eval"
    if (mc_folder / "predictions.safetensors").exists():
        preds["mcdropout"] = _predictions(mc_folder)
    if len(preds) < len(EVALS) + 1:
        return [f"### {task}, seed {seed}", "", f"Incomplete: have {sorted(preds)}; run this script without `--report-only`.", ""]
    labels = preds["bara"][1]
    for label, (_, y) in preds.items():
        if not torch.equal(y, labels):
            raise SystemExit(f"error: {task} seed {seed}: {label} was evaluated on other examples than bara")
    lines = [f"### {task}, seed {seed} ({len(labels)} evaluation examples)", "",
             "| predictor | ACC ×100 | ECE ×100 | NLL | Brier | AUROC (confidence → right) |", "|---|---|---|---|---|---|"]
    for label, (probs, y) in preds.items():
        m = classification_report(probs, y)
        lines.append(f"| {label} | {100 * m['accuracy']:.1f} | {100 * m['ece']:.1f} | {m['nll']:.3f} | {m['brier']:.3f} | "
                     f"{float(error_detection_auroc(probs, y)):.3f} |")
    gd, cd, mc, plain = (preds[k][0] for k in ("bara + dropout", "bara [constant gates] + dropout", "mcdropout", "bara"))
    lines += ["", "| paired difference (95% bootstrap) | ΔNLL | ΔECE ×100 | ΔAUROC |", "|---|---|---|---|"]
    nll_diffs = []  # learned vs constant gates, vs MC-dropout: the two halves of C7
    for name, other in (("gates + dropout − constant gates + dropout (C7, first half)", cd),
                        ("gates + dropout − MC-dropout (C7, second half)", mc),
                        ("gates + dropout − gates (what the dropout adds)", plain)):
        nll, ece, auroc = (paired_bootstrap(metric, gd, other, labels, n_boot=1000) for metric in ("nll", "ece", "auroc"))
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
    parser.add_argument("--report-only", action="store_true", help="only summarise the archived predictions")
    parser.add_argument("--name", default="c7-dropout", help="results file benchmarks/results/<name>.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tasks, seeds = args.tasks.split(","), [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()
    if not args.report_only:
        for task in tasks:
            for seed in seeds:
                evaluate_missing(task, seed)
    from common import git_commit

    lines = ["## Check C7 with the backbone's dropout on (`benchmarks/c7_dropout.py`)", "",
             f"`python benchmarks/c7_dropout.py {' '.join(sys.argv[1:])}` · commit `{git_commit()}` · "
             + ("report of the archived evaluations (without `--report-only` the script evaluates what is missing)"
                if args.report_only else f"wall {(time.perf_counter() - start) / 60:.1f} min (archived evaluations are reused)")
             + f" · {platform.machine()} CPU, one torch thread. "
             "The suite's BaRA adapters (MiniLM-L6, r = 8, the suite's settings for each task), evaluated with S = 10 "
             "samples four ways: as trained (backbone dropout off), with constant gates, and each of those with the "
             "backbone's dropout on (`bara evaluate --option eval_dropout=true`), next to the suite's MC-dropout LoRA "
             "(its own adapter, dropout on, S = 10). AUROC: how well the confidence separates right from wrong answers. "
             "Negative ΔNLL / ΔECE and positive ΔAUROC favour the learned gates with dropout.", ""]
    for task in tasks:
        for seed in seeds:
            lines += task_section(task, seed)
    path = ROOT / "results" / f"{args.name}.md"
    path.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
