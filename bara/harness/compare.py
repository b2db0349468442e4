"""``bara compare``: every method on the same data, model, steps and seeds, with one report.

Each (method, seed) is a run folder ``OUT/runs/<method>/seed<k>`` holding the adapter and its
evaluations; a run whose ``done.json`` exists is skipped, so an interrupted comparison resumes
where it stopped. Runs go to a pool of worker processes (one torch thread each). For BaRA the
report also scores two re-evaluations of the same adapter: with constant gates (input-independent
factor dropout at the data-average keep-probabilities, the control that BaRA's input-dependent gates
should beat) and in the one-pass ``mean`` mode.

With ``CompareSpec.archive`` set, each finished run's small records (``ARCHIVED``: the result,
its settings, the training log and the in-domain predictions, no weights) are copied to
``ARCHIVE/runs/<method>/seed<k>``, a folder meant to be committed. A run folder that is missing
(a new machine, a deleted ``OUT``) is restored from there, so a report can be rebuilt and new
seeds or methods added without retraining what the archive holds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from bara.harness.pipeline import RunSpec

METRICS = ("accuracy", "ece", "nll", "brier")
LOWER_IS_BETTER = {"ece": True, "nll": True, "brier": True, "accuracy": False}
ECE_CURVE_SAMPLES = (1, 2, 4, 10)
# 2: the sampled ablation and control modes (global, local, constant) average S samples; version-1
# results scored them with a single sample, so their evaluations are redone (training is kept)
RESULT_VERSION = 2
# what the evaluations of a new result follow; 2: MC-dropout also drops attention probabilities (before,
# transformers' attention modules stayed in eval mode). Pages flag older MC-dropout results.
# 3: on multiple-choice tasks BaRA draws its global gate once per example, shared by the choices
# (`BaRAConfig.global_draw`); before, once per choice row. Pages flag older BaRA results of such tasks.
# 4: on multiple-choice tasks an example's choice rows draw BaRA's local gates from shared uniforms
# (`BaRAConfig.local_noise` default "example"; before, "row").
EVAL_PROTOCOL = 4
_RESCORED_METHODS = ("bara-global", "bara-local")


# BaRAConfig defaults that changed, keyed by the EVAL_PROTOCOL that changed them, with the value they had
# before (global_draw did not exist before protocol 3: every choice row drew its own, i.e. "row"). Both
# options are retired now (`bara.config.RETIRED_OPTIONS`): the archive's labels still name them.
CHANGED_DEFAULTS: dict[int, dict[str, Any]] = {3: {"global_draw": "row"}, 4: {"local_noise": "row"}}


def defaults_at(protocol: int) -> dict[str, Any]:
    """The `BaRAConfig` defaults (as a dict, retired options included) under ``EVAL_PROTOCOL`` ``protocol``.

    Example:
        >>> defaults_at(3)["local_noise"], defaults_at(4)["local_noise"]
        ('row', 'example')
    """
    from bara.config import RETIRED_OPTIONS, BaRAConfig

    fields = dataclasses.asdict(BaRAConfig()) | RETIRED_OPTIONS
    for changed_at in sorted(CHANGED_DEFAULTS, reverse=True):  # the oldest value of a field wins
        if protocol < changed_at:
            fields |= CHANGED_DEFAULTS[changed_at]
    return fields


def effective_config(method: str, options: dict[str, Any], protocol: int = EVAL_PROTOCOL) -> dict[str, Any]:
    """The `BaRAConfig` fields (as a dict) a run of ``method`` with ``options`` trains with under
    ``protocol``: the defaults of that protocol (`defaults_at`), then the run's own ``config``.
    Empty for methods without a `BaRAConfig`.

    Example:
        >>> effective_config("bara", {}, protocol=3)["local_noise"]
        'row'
        >>> effective_config("bara", {"config": {"local_noise": "row"}})["local_noise"]
        'row'
    """
    from bara.harness.methods import METHODS

    if "config" not in {f.name for f in dataclasses.fields(METHODS[method])}:
        return {}
    return defaults_at(protocol) | dict(options.get("config") or {})


def trained_config(folder: Path) -> dict[str, Any]:
    """The `BaRAConfig` fields (as a dict) the finished run in ``folder`` was trained with: its
    ``run.json`` options over the defaults of the protocol in its ``done.json``."""
    from bara.harness.pipeline import RUN_FILE

    run = json.loads((Path(folder) / RUN_FILE).read_text())
    return effective_config(run["method"], run.get("method_options") or {}, eval_protocol(folder))


def eval_protocol(folder: Path) -> int | None:
    """The `EVAL_PROTOCOL` a finished run was evaluated under (1 for results that predate the field),
    or None for a run without ``done.json``."""
    done = Path(folder) / "done.json"
    return json.loads(done.read_text()).get("eval_protocol", 1) if done.exists() else None


@dataclasses.dataclass
class CompareSpec:
    """What `compare` runs; ``base`` holds the settings shared by every run."""

    base: RunSpec
    methods: list[str]
    seeds: list[int]
    ood: list[str] = dataclasses.field(default_factory=list)
    ood_eval_size: int | None = None  # at most this many examples of each OOD set (None: the whole split)
    ece_curve: bool = True
    workers: int = 2
    report_only: bool = False  # summarise the finished runs, train nothing
    archive: str | None = None  # keep each finished run's records here, and restore missing runs from it


# what `archive_run` keeps of a finished run (glob patterns): enough to rebuild every report, no weights;
# the out-of-domain predictions (~16 KB each) too, so OOD differences can be bootstrapped later
ARCHIVED = ("done.json", "run.json", "train_log.json", "eval/predictions.safetensors",
            "eval-constant/predictions.safetensors", "ood-*/predictions.safetensors")


def archive_run(folder: Path, archived: Path) -> None:
    """Copy the `ARCHIVED` records of the finished run ``folder`` to ``archived`` (same layout)."""
    if not (folder / "done.json").exists():
        raise ValueError(f"{folder} is not a finished run (no done.json)")
    _copy_records(folder, archived)


def restore_run(archived: Path, folder: Path) -> bool:
    """Copy an archived run's records into ``folder`` unless it holds a finished run; True if restored.

    The restored run has results but no adapter: a report can use it, an evaluation cannot."""
    if (folder / "done.json").exists() or not (archived / "done.json").exists():
        return False
    _copy_records(archived, folder)
    return True


def _copy_records(source: Path, target: Path) -> None:
    """Copy whichever `ARCHIVED` files ``source`` holds to the same places under ``target``."""
    for pattern in ARCHIVED:
        for path in sorted(source.glob(pattern)):
            copy = target / path.relative_to(source)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy)


def split_methods(text: str) -> list[str]:
    """Split a comma-separated method list, keeping the commas inside ``[...]`` options.

    Example:
        >>> split_methods("lora, bara[rho0=0.2,local_kl=marginal],blob")
        ['lora', 'bara[rho0=0.2,local_kl=marginal]', 'blob']
    """
    items, depth, current = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += ch
    return [item.strip() for item in items + [current] if item.strip()]


def parse_method(text: str) -> tuple[str, dict[str, Any]]:
    """``"bara[rho0=0.2,gate_lr_multiplier=10]"`` → ``("bara", {"gate_lr_multiplier": 10, "config": {"rho0": 0.2}})``.

    Keys that are not options of the method go to its ``config`` mapping (BaRA's `BaRAConfig`).
    """
    import yaml

    from bara.harness.methods import METHODS

    name, _, rest = text.partition("[")
    name = name.strip()
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    if not rest:
        return name, {}
    if not rest.endswith("]"):
        raise ValueError(f"method {text!r}: expected name[key=value,...]")
    fields = {f.name for f in dataclasses.fields(METHODS[name])}
    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest[:-1].split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"method {text!r}: option {item!r} is not key=value")
        parsed = yaml.safe_load(value)
        if key in fields:
            options[key] = parsed
        elif "config" in fields:
            options.setdefault("config", {})[key] = parsed
        else:
            raise ValueError(f"method {name!r} has no option {key!r}; options: {sorted(fields)}")
    return name, options


def run_dir(out: Path, method: str, seed: int) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_.=" else "_" for c in method)
    return out / "runs" / safe / f"seed{seed}"


# the report row of BaRA's re-evaluation with constant gates: "<label> [constant gates (control)]"
CONSTANT_GATES_ROW = "[constant gates (control)]"
# names that older results (done.json) gave the same rows; read as today's names
RENAMED_ROWS = {"[constant gates, C7]": CONSTANT_GATES_ROW}


def current_row_name(name: str) -> str:
    """Today's name of a report row that an older result may name otherwise.

    Example:
        >>> current_row_name("bara [constant gates, C7]")
        'bara [constant gates (control)]'
    """
    for old, new in RENAMED_ROWS.items():
        if name.endswith(f" {old}"):
            return name[: -len(old)] + new
    return name


def _with_current_names(result: dict[str, Any]) -> dict[str, Any]:
    if "extra" in result:
        result["extra"] = {current_row_name(name): metrics for name, metrics in result["extra"].items()}
    return result


def _extra_modes(method: str) -> dict[str, dict[str, Any]]:
    """Extra evaluations of the same adapter (rows of the report; predictions kept in ``eval-<mode>/``)."""
    if method == "bara":
        return {CONSTANT_GATES_ROW: {"mode": "constant"}, "[mean mode]": {"mode": "mean"}}
    return {}


def _capped_eval_size(task: str, cap: int | None) -> int | None:
    """``cap`` examples of ``task``'s evaluation split, or all of them when it has fewer."""
    if cap is None:
        return None
    from bara.harness.tasks import load_task

    return min(cap, len(load_task(task).eval))


def run_one(job: dict[str, Any], out: str, ood: list[str], ece_curve: bool, ood_eval_size: int | None = None) -> dict[str, Any]:
    """Train, evaluate (in domain, extra modes, OOD, ECE-vs-S) one (method, seed); resumable."""
    import torch

    torch.set_num_threads(1)
    from bara.harness.pipeline import evaluate, train

    job = dict(job)
    label = job.pop("label")
    spec_obj = RunSpec(**job)
    folder = run_dir(Path(out), label, spec_obj.seed)  # `compare` has checked its settings match (_check_same_spec)
    done = folder / "done.json"
    if done.exists():
        result = json.loads(done.read_text())
        if result.get("version", 1) < RESULT_VERSION:
            result = _rescore(result, folder, label, spec_obj.method, ece_curve)
            done.write_text(json.dumps(result, indent=2) + "\n")
        result = _with_current_names(result)
    else:
        log = train(spec_obj, folder, resume=True, progress=False)
        result = {"method": label, "seed": spec_obj.seed, "train_seconds": log["train_seconds"],
                  "trainable_parameters": log["trainable_parameters"], "steps": log["steps"]}
        result["eval"] = evaluate(folder, out=folder / "eval", progress=False, sample_counts=ECE_CURVE_SAMPLES if ece_curve else ())
        result["extra"] = {f"{label} {name}": evaluate(folder, out=folder / f"eval-{kw['mode']}", progress=False, plots=False, **kw)
                           for name, kw in _extra_modes(spec_obj.method).items()}
        result["ood"] = {task: evaluate(folder, task=task, out=folder / f"ood-{task}", progress=False, plots=False,
                                        eval_size=_capped_eval_size(task, ood_eval_size)) for task in ood}
        if "by_samples" in result["eval"]:  # ECE of the first S samples of the same evaluation
            result["ece_curve"] = [(int(s), m["ece"]) for s, m in result["eval"]["by_samples"].items()]
        result["version"] = RESULT_VERSION
        result["eval_protocol"] = EVAL_PROTOCOL
        done.write_text(json.dumps(result, indent=2) + "\n")
    # read from the training log on every report, so runs finished before these fields existed get them too
    if _train_time_unknown(folder / "train_log.json"):
        result["train_seconds"] = None  # it counted only the last session
    result["train_nll"] = final_train_nll(folder / "train_log.json")
    return result


# settings that change neither the trained adapter nor its evaluation
_IRRELEVANT_FIELDS = {"save_steps", "logging_steps"}


def _check_same_spec(folder: Path, spec: RunSpec) -> None:
    """Refuse to reuse a finished run that was trained with other settings (a silent wrong result)."""
    from bara.harness.pipeline import RUN_FILE

    if not (folder / RUN_FILE).exists():
        return
    old, new = dataclasses.asdict(RunSpec.load(folder / RUN_FILE)), dataclasses.asdict(spec)
    changed = [f"{k}={old[k]!r} (asked {new[k]!r})" for k in new if k not in _IRRELEVANT_FIELDS and old.get(k) != new[k]]
    if changed:
        raise ValueError(f"{folder} was trained with {', '.join(changed)}; use another --out, or delete that folder to retrain it")


def _train_time_unknown(log_path: Path) -> bool:
    """Whether a finished run resumed from a checkpoint before training time was summed over
    sessions (`bara.trainer.TrainingClock`): its ``train_seconds`` then counts only the last one."""
    if not log_path.is_file():
        return False
    log = json.loads(log_path.read_text())
    logs = log.get("members", [log])  # an ensemble logs each member
    return any(member.get("resumed_from") and not member.get("clocked") for member in logs)


def train_nll_by_epoch(log_path: Path) -> list[float]:
    """Mean training NLL of each epoch's logged steps (epoch k covers steps logged in (k − 1, k]).

    An ensemble's members are averaged epoch by epoch; a missing log gives ``[]``. Methods whose
    loss carries a KL term log the data term as ``nll``; for the others the loss is the NLL.
    The curve says whether, and when, an adapter fitted its training set.
    """
    if not log_path.is_file():
        return []
    log = json.loads(log_path.read_text())
    curves = []
    for member in log.get("members", [log]):
        by_epoch: dict[int, list[float]] = {}
        for h in member.get("history", []):
            if "loss" in h and "epoch" in h:
                by_epoch.setdefault(max(math.ceil(h["epoch"]) - 1, 0), []).append(h.get("nll", h["loss"]))
        if by_epoch:
            curves.append([sum(v) / len(v) for _, v in sorted(by_epoch.items())])
    return mean_curve(curves)  # members of one ensemble train equally long


def mean_curve(curves: list[list[float]]) -> list[float]:
    """Epoch-by-epoch mean of several per-epoch curves, over the epochs they all reached ([] for none)."""
    epochs = min((len(c) for c in curves), default=0)
    return [sum(c[e] for c in curves) / len(curves) for e in range(epochs)]


def final_train_nll(log_path: Path) -> float | None:
    """Training NLL over the last epoch's logged steps (mean over an ensemble's members), or None.

    It tells the regime a comparison ran in: near 0 the adapter has fitted its training set, where
    overconfidence appears; well above 0 it is underfit.
    """
    curve = train_nll_by_epoch(log_path)
    return curve[-1] if curve else None


def _rescore(result: dict[str, Any], folder: Path, label: str, method: str, ece_curve: bool) -> dict[str, Any]:
    """Redo the evaluations an older result version got wrong, keeping the trained adapter."""
    from bara.harness.pipeline import evaluate

    if method in _RESCORED_METHODS:
        result["eval"] = evaluate(folder, out=folder / "eval", progress=False, sample_counts=ECE_CURVE_SAMPLES if ece_curve else ())
        if "by_samples" in result["eval"]:
            result["ece_curve"] = [(int(s), m["ece"]) for s, m in result["eval"]["by_samples"].items()]
    result["extra"] = {f"{label} {name}": evaluate(folder, out=folder / f"eval-{kw['mode']}", progress=False, plots=False, **kw)
                       for name, kw in _extra_modes(method).items()}
    result["version"] = RESULT_VERSION
    return result


def compare(spec: CompareSpec, out: str | Path, console=None) -> dict[str, Any]:
    """Run every (method, seed) of ``spec`` and write results.json, results.md and the plots."""
    from bara.harness.methods import get_method

    parsed = {label: parse_method(label) for label in spec.methods}  # unknown names fail before anything runs
    for name, options in parsed.values():
        get_method(name, options)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # seed-major: every method gets seed 1 before any gets seed 2, so a partial run is comparable
    jobs = [dict(dataclasses.asdict(dataclasses.replace(spec.base, method=parsed[m][0], method_options=parsed[m][1], seed=s)), label=m)
            for s in spec.seeds for m in spec.methods]
    for job in jobs:  # before anything trains: a folder of runs made with other settings is refused
        folder = run_dir(out, job["label"], job["seed"])
        if spec.archive and restore_run(run_dir(Path(spec.archive), job["label"], job["seed"]), folder) and console:
            console.print(f"restored from the archive: {job['label']} seed {job['seed']}", markup=False)
        _check_same_spec(folder, RunSpec(**{k: v for k, v in job.items() if k != "label"}))
    if spec.report_only:
        jobs = [job for job in jobs if (run_dir(out, job["label"], job["seed"]) / "done.json").exists()]
        if not jobs:
            raise ValueError(f"{out}: no finished runs to report")
    start = time.perf_counter()
    results: list[dict[str, Any]] = []
    def finished(job: dict[str, Any], result: dict[str, Any]) -> None:
        results.append(result)
        if spec.archive:
            archive_run(run_dir(out, job["label"], job["seed"]), run_dir(Path(spec.archive), job["label"], job["seed"]))
        if console:
            console.print(f"done: {job['label']} seed {job['seed']} ({len(results)}/{len(jobs)})", markup=False)

    if spec.workers <= 1:  # in this process: simplest to debug, and what tests use
        for job in jobs:
            finished(job, run_one(job, str(out), spec.ood, spec.ece_curve, spec.ood_eval_size))
    else:
        with ProcessPoolExecutor(max_workers=spec.workers, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(run_one, job, str(out), spec.ood, spec.ece_curve, spec.ood_eval_size): job for job in jobs}
            for future in as_completed(futures):
                finished(futures[future], future.result())
    wall = time.perf_counter() - start
    order = {m: i for i, m in enumerate(spec.methods)}  # rows in the order asked for, not the order finished
    results.sort(key=lambda r: (order.get(r["method"], len(order)), r["seed"]))
    table = summarise(results, spec)
    report = {"spec": {"base": dataclasses.asdict(spec.base), "methods": spec.methods, "seeds": spec.seeds, "ood": spec.ood,
                       "ood_eval_size": spec.ood_eval_size, "report_only": spec.report_only},
              "wall_seconds": wall, "summary": table, "runs": sorted(results, key=lambda r: (r["method"], r["seed"]))}
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "results.md").write_text(markdown(report))
    plot_comparison(results, spec, out)
    return report


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(results: list[dict[str, Any]], spec: CompareSpec) -> dict[str, dict[str, Any]]:
    """Per row (method or extra evaluation, and OOD task): mean and std of each metric over seeds."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for run in results:
        rows.setdefault(run["method"], []).append(run["eval"] | {"train_seconds": run["train_seconds"],
                                                                 "trainable_parameters": run["trainable_parameters"],
                                                                 "train_nll": run.get("train_nll")})
        for name, metrics in run.get("extra", {}).items():
            rows.setdefault(current_row_name(name), []).append(metrics)
        for task, metrics in run.get("ood", {}).items():
            rows.setdefault(f"{run['method']} → {task}", []).append(metrics)
    summary = {}
    for name, runs in rows.items():
        entry = {m: _mean_std([r[m] for r in runs]) for m in METRICS + ("eval_seconds",)}
        entry["joint_effective_rank"] = _mean_std([r.get("joint_effective_rank") for r in runs])
        entry["effective_rank_std"] = _mean_std([r.get("effective_rank_std") for r in runs])
        entry["gate_std"] = _mean_std([r.get("gate_std") for r in runs])
        entry["r_glob"] = _mean_std([r.get("r_glob") for r in runs])
        entry["train_seconds"] = _mean_std([r.get("train_seconds") for r in runs])
        entry["train_nll"] = _mean_std([r.get("train_nll") for r in runs])
        entry["trainable_parameters"] = runs[0].get("trainable_parameters")
        entry["seeds"] = len(runs)
        summary[name] = entry
    return summary


def _fmt(mean_std: tuple[float, float], scale: float = 1.0, digits: int = 1) -> str:
    mean, std = mean_std
    if mean is None or math.isnan(mean):
        return "—"
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    base = report["spec"]["base"]
    summary = report["summary"]
    in_domain = [n for n in summary if "→" not in n]
    best = {m: _best(summary, in_domain, m) for m in METRICS}
    lines = [f"# Comparison: {base['model']} on {base['task']}", "",
             f"{base['train_size'] or 'all'} training examples, {str(base['max_steps']) + ' steps' if base['max_steps'] else str(base['epochs']) + ' epochs'}, batch "
             f"{base['batch_size']}, lr {base['learning_rate']}, seeds {report['spec']['seeds']}; "
             + ("summarised from finished runs (see `train s`, `eval s`)" if report["spec"].get("report_only")
                else f"wall time {report['wall_seconds'] / 60:.1f} min")
             + ". Mean ± std over the finished seeds (`seeds`: how many; ± 0 for one); best per column in bold. ECE ×100.", "",
             "| method | seeds | ACC ×100 | ECE ×100 | NLL | Brier | s̄ (rank) | s̄ spread | gate spread | r_glob | trainable params | train NLL | train s | eval s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in in_domain:
        lines.append(_row(name, summary[name], best))
    ood = [n for n in summary if "→" in n]
    if ood:
        lines += ["", "Out of domain (adapters trained on the task above):", "",
                  "| method → task | seeds | ACC ×100 | ECE ×100 | NLL | Brier | s̄ (rank) | s̄ spread | gate spread | r_glob | trainable params | train NLL | train s | eval s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        lines += [_row(name, summary[name], {}) for name in sorted(ood)]
    lines += ["", "Rows in brackets re-evaluate the BaRA adapter: `constant gates` replaces every learned gate by "
              "input-independent factor dropout at the data-average keep-probability (the control: BaRA's input-dependent "
              "gates should beat it), "
              "`mean mode` is one pass with the expected gates. `s̄ spread`: std across inputs of the effective rank; "
              "`gate spread`: std across inputs of each factor's gate probability E_q[z_k(x)], averaged over factors "
              "and layers (the choice of factors can depend on the input while their number does not). "
              "`train NLL`: the training NLL over the last epoch's logged steps (near 0: the adapter fits its "
              "training set, the regime where overconfidence shows).", ""]
    return "\n".join(lines)


def _best(summary: dict[str, Any], names: list[str], metric: str) -> str | None:
    scored = [(summary[n][metric][0], n) for n in names if not math.isnan(summary[n][metric][0])]
    if not scored:
        return None
    return (min if LOWER_IS_BETTER[metric] else max)(scored)[1]


def _row(name: str, entry: dict[str, Any], best: dict[str, str | None]) -> str:
    cells = []
    for metric, scale, digits in (("accuracy", 100, 1), ("ece", 100, 1), ("nll", 1, 3), ("brier", 1, 3)):
        text = _fmt(entry[metric], scale, digits)
        cells.append(f"**{text}**" if best.get(metric) == name else text)
    params = entry.get("trainable_parameters")
    cells += [_fmt(entry["joint_effective_rank"], 1, 2), _fmt(entry["effective_rank_std"], 1, 2),
              _fmt(entry.get("gate_std", (math.nan, math.nan)), 1, 3), _fmt(entry["r_glob"], 1, 1),
              f"{params:,}" if params else "—", _fmt(entry.get("train_nll", (math.nan, math.nan)), 1, 3),
              _fmt(entry["train_seconds"], 1, 0), _fmt(entry["eval_seconds"], 1, 0)]
    return f"| {name} | {entry['seeds']} | " + " | ".join(cells) + " |"


def plot_comparison(results: list[dict[str, Any]], spec: CompareSpec, out: Path) -> None:
    """Combined reliability diagram (first seed of each method) and ECE vs number of samples."""
    from safetensors.torch import load_file

    from bara.harness import plots

    first = min(spec.seeds)
    curves = {}
    for method in spec.methods:
        path = run_dir(out, method, first) / "eval" / "predictions.safetensors"
        if path.exists():
            data = load_file(str(path))
            curves[method] = (data["probs"], data["labels"])
    if curves:
        plots.reliability_diagram(curves, out / "reliability.png", title=f"{spec.base.task}: seed {first}")
    ece = {}
    for run in results:
        if run.get("ece_curve"):
            curve = [tuple(point) for point in run["ece_curve"]]
            samples = run["eval"].get("samples")
            if isinstance(samples, int) and samples > curve[-1][0]:  # e.g. a 3-member ensemble: end at S = 3
                curve.append((samples, run["eval"]["ece"]))
            ece.setdefault(run["method"], []).append(curve)
    if ece:
        averaged = {m: [(s, statistics.fmean(c[i][1] for c in runs)) for i, (s, _) in enumerate(runs[0])] for m, runs in ece.items()}
        plots.ece_vs_samples(averaged, out / "ece_vs_samples.png")
