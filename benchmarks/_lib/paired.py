"""Paired per-example comparisons of BaRA's learned gates with their controls, from saved predictions.

Shared by the calibration suite (`benchmarks/suite/suite.py`) and the learned-vs-constant-gates study
(`benchmarks/gates-vs-constant/`): for a BaRA run, learned gates − constant gates (the same adapter with
input-independent factor dropout at the data-average keep-probabilities), − MC-dropout (the same
evaluation examples) and − the same variant trained with ``context_dependent=false`` (W_g held at 0),
pooled over seeds, with paired bootstrap intervals. Method labels such as ``bara[rho0=0.8]`` are read as
labels only (no method is built), so runs of options the library no longer has still report.
"""

from __future__ import annotations

import json
from pathlib import Path

from bara.harness.compare import run_dir

try:  # the report row of a BaRA adapter re-evaluated with constant gates: "<label> <CONSTANT_GATES_ROW>"
    from bara.harness.compare import CONSTANT_GATES_ROW
except ImportError:  # a library from before the row was renamed
    CONSTANT_GATES_ROW = "[constant gates, C7]"
CONSTANT_ROW_NAMES = tuple(dict.fromkeys((CONSTANT_GATES_ROW, "[constant gates, C7]")))  # today's name, then the older one


def constant_gates_label(row: str) -> str | None:
    """The BaRA label whose constant-gate re-evaluation the report row ``row`` is (None for any other row)."""
    for suffix in CONSTANT_ROW_NAMES:
        if row.endswith(f" {suffix}"):
            return row[: -len(suffix) - 1]
    return None


def constant_gates_row(summary: dict, label: str) -> dict | None:
    """The summary row of ``label`` re-evaluated with constant gates, under today's or the older row name."""
    return next((summary[f"{label} {suffix}"] for suffix in CONSTANT_ROW_NAMES if f"{label} {suffix}" in summary), None)

def ece_per_cost(report: dict, name: str) -> dict | None:
    """The calibration-per-cost measures of the BaRA variant ``name``, read off each run's S = 10
    evaluation (ECE ×100 of its first S samples, mean over seeds) and its `mean`-mode row: ``at`` and ``blob``
    (S → ECE, None where no curve has that S), ``mean_mode``, and the two targets, ``s4_below_blob`` (BaRA at
    S = 4 below BLoB at S = 10; None without both) and ``mean_within`` (`mean` mode ≤ 1.25 × BaRA's S = 10).
    None where ``name`` has no S = 10 curve or no `mean`-mode row. ``report``: ``runs`` and ``summary``."""
    curves: dict[str, list[dict[int, float]]] = {}
    for run in report.get("runs", []):  # a suite summary built without its runs has no curves
        if run.get("ece_curve"):
            curves.setdefault(run["method"], []).append({int(k): v for k, v in run["ece_curve"]})

    def mean_at(method: str) -> dict[int, float | None]:
        values = {s: [c[s] for c in curves.get(method, []) if s in c] for s in (1, 2, 4, 10)}
        return {s: 100 * sum(v) / len(v) if v else None for s, v in values.items()}

    at, blob = mean_at(name), mean_at("blob")
    mean_row = report["summary"].get(f"{name} [mean mode]")
    if at[10] is None or mean_row is None:
        return None
    mean_mode = 100 * mean_row["ece"][0]
    s4_below_blob = None if blob[10] is None or at[4] is None else at[4] < blob[10]
    return {"at": at, "blob": blob, "mean_mode": mean_mode, "s4_below_blob": s4_below_blob,
            "mean_within": mean_mode <= 1.25 * at[10]}


PAIRED_HEADER = ["| BaRA variant | seeds | ΔNLL vs constant gates | ΔECE×100 vs constant gates | ΔAUROC vs constant gates | "
                 "ΔNLL vs MC-dropout | ΔECE×100 vs MC-dropout | ΔNLL vs constant gates trained as such | "
                 "ΔECE×100 vs constant gates trained as such | "
                 "ΔNLL per seed: vs constant · vs MC-dropout · vs trained constant |",
                 "|---|---|---|---|---|---|---|---|---|---|"]
SIGNAL_HEADER = ["| BaRA variant | seeds | s̄(x) mean ± std over inputs | AUROC (low rank → wrong) | corr(s̄(x), confidence) |",
                 "|---|---|---|---|---|"]


def _predictions(folder: Path) -> tuple:
    from safetensors.torch import load_file

    t = load_file(str(folder / "predictions.safetensors"))
    return t["probs"].double(), t["labels"]


def interval_text(result: dict[str, float], scale: float = 1.0, digits: int = 3) -> str:
    """A `bara.harness.metrics.paired_bootstrap` result as ``"+d [+low, +high]"``, times ``scale``."""
    return f"{scale * result['diff']:+.{digits}f} [{scale * result['low']:+.{digits}f}, {scale * result['high']:+.{digits}f}]"


def rank_signal_rows(out: Path, names: list[str], seeds: list[int]) -> list[str]:
    """Does the per-input effective rank s̄(x) carry information? Pooled over seeds: how well a *low*
    rank picks out the wrong predictions (AUROC, 0.5 = none), and its correlation with the confidence."""
    import torch
    from safetensors.torch import load_file

    from bara.harness.metrics import separation_auroc

    rows = []
    for name in names:
        files = [run_dir(out, name, seed) / "eval" / "predictions.safetensors" for seed in seeds]
        tensors = [t for t in (load_file(str(f)) for f in files if f.exists()) if "ranks" in t]
        if not tensors:
            continue
        probs = torch.cat([t["probs"] for t in tensors]).double()
        labels = torch.cat([t["labels"] for t in tensors])
        ranks = torch.cat([t["ranks"] for t in tensors]).double()
        conf, pred = probs.max(1)
        auroc = separation_auroc(-ranks, pred != labels)
        corr = float(torch.corrcoef(torch.stack([ranks, conf]))[0, 1])
        rows.append(f"| {name} | {len(tensors)} | {ranks.mean():.2f} ± {ranks.std():.2f} | {auroc:.3f} | {corr:+.3f} |")
    return rows


# Options a trained constant-gate control may set on top of its variant's: only where its gates start. The default
# BaRA's gates fall from σ(3) ≈ 0.95 to ρ0 = 0.5 within its first epoch because W_g's common mode (the mean
# direction of LN(x̄), shared by every input) moves them as a bias with Adam steps on ~din coordinates; frozen at
# 0, W_g cannot, and the bias alone moves ~lr per step, so a control started at σ(3) would keep ~0.9 of every
# factor and compare keep-probabilities, not context. `local_bias_init=0` starts it at 0.5.
TWIN_FREE_OPTIONS = frozenset({"local_bias_init"})
# Options that only changed how W_g read the input: with W_g held at 0 they do nothing, so a control with or
# without them is the same model and matches a variant either way. (`center_gate_input` is no longer a BaRA
# option; the suite's archive keeps runs that set it, and their rows still pair with their controls.)
INERT_WITHOUT_CONTEXT = frozenset({"center_gate_input"})


def _flat_options(label: str) -> dict | None:
    """A BaRA label's options in one mapping, ``"bara[rho0=0.8,gate_lr_multiplier=10]"`` →
    ``{"rho0": 0.8, "gate_lr_multiplier": 10}`` (None for another method or a bad label).

    Read as a label only, values parsed as YAML scalars the way `bara.harness.compare.parse_method` does: the
    archive holds runs of options the library no longer has, and their labels must still pair.
    """
    import yaml

    name, _, rest = label.partition("[")
    if name.strip() != "bara":
        return None
    if not rest:
        return {}
    if not rest.endswith("]"):
        return None
    options = {}
    for item in filter(None, (part.strip() for part in rest[:-1].split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            return None
        options[key.strip()] = yaml.safe_load(value)
    return options


def context_free_twin(name: str, ranks: dict[str, float]) -> str | None:
    """The trained constant-gate control of BaRA variant ``name`` among finished runs (``ranks``: method label →
    mean joint effective rank s̄, as `finished_ranks` gives): ``name`` trained with ``context_dependent=false``
    (W_g held at 0, so every factor's keep-probability is learned but never depends on the input). Its other
    options must be ``name``'s, except those in ``TWIN_FREE_OPTIONS``; of several, the one whose s̄ is closest
    to ``name``'s (the control should keep as many factors, or it compares ranks, not context). None for a
    control itself, other methods, or no match.

    >>> context_free_twin("bara", {"bara": 3.6, "bara[context_dependent=false]": 6.5,
    ...                            "bara[context_dependent=false,local_bias_init=0]": 3.7, "bara-global": 7.0})
    'bara[context_dependent=false,local_bias_init=0]'
    >>> context_free_twin("bara[center_gate_input=true]", {"bara[context_dependent=false]": 3.5})  # inert there
    'bara[context_dependent=false]'
    """
    base = _flat_options(name)
    if base is None or base.get("context_dependent", True) is False:
        return None
    base = {k: v for k, v in base.items() if k not in INERT_WITHOUT_CONTEXT}
    found = []
    for label, rank in ranks.items():
        options = _flat_options(label)
        if options is None or options.pop("context_dependent", True) is not False:
            continue
        options = {k: v for k, v in options.items() if k not in INERT_WITHOUT_CONTEXT}
        differ = {k for k in set(options) | set(base) if options.get(k, object()) != base.get(k, object())}
        if differ <= TWIN_FREE_OPTIONS:
            distance = abs(rank - ranks.get(name, rank))
            found.append((distance if distance == distance else float("inf"), len(differ), label))  # NaN: no rank logged
    return min(found)[2] if found else None


def is_trained_control(label: str) -> bool:
    """Whether ``label`` is a BaRA run trained with ``context_dependent=false`` (a control, not a variant)."""
    return (_flat_options(label) or {}).get("context_dependent", True) is False


def twin_note(name: str, comparison: dict) -> str:
    """What the trained control of a `paired_comparison` sets beyond its variant's options, and its seed count
    where it pooled fewer seeds than the variant, e.g. ``" (local_bias_init=0, 2 seeds)"``; "" for the exact
    twin on every seed."""
    base, options = _flat_options(name) or {}, _flat_options(comparison.get("twin") or "") or {}
    parts = [f"{k}={options[k]}" for k in sorted(TWIN_FREE_OPTIONS) if k in options and options[k] != base.get(k)]
    if comparison["twin_seeds"] != comparison["seeds"]:
        parts.append(seeds_text(comparison["twin_seeds"]))
    return f" ({', '.join(parts)})" if parts else ""


def finished_ranks(out: Path) -> dict[str, float]:
    """Method label → mean joint effective rank s̄ over its finished runs under ``out`` (from their ``done.json``;
    NaN for methods without gates)."""
    ranks: dict[str, list[float]] = {}
    for done in sorted((out / "runs").glob("*/seed*/done.json")):
        result = json.loads(done.read_text())
        if "method" in result:
            rank = (result.get("eval") or {}).get("joint_effective_rank")
            ranks.setdefault(result["method"], []).append(float("nan") if rank is None else rank)
    return {label: sum(values) / len(values) for label, values in ranks.items()}


def paired_comparison(out: Path, name: str, seeds: list[int], compute_missing: bool = False,
                      ranks: dict[str, float] | None = None) -> dict | None:
    """One BaRA variant's per-example paired differences, pooled over the finished seeds, with 95%
    bootstrap intervals: learned gates − constant gates (same adapter), learned gates − MC-dropout
    (same evaluation examples, pooled over the seeds that have both) and learned gates − the same variant
    trained with constant gates (`context_free_twin`, where it ran; ``twin`` names it). Negative means the learned gates
    are better. Returns None where no seed has both predictions; otherwise ``seeds``, ``mc_seeds`` and
    ``twin_seeds`` (counts), ``vs_constant`` (nll, ece, auroc), ``vs_mc`` and ``vs_twin`` (nll, ece; None
    without such runs), each a `bara.harness.metrics.paired_bootstrap` result, and ``per_seed`` (mean ΔNLL of
    each seed, all three ways).

    Constant-gate predictions missing from older runs are computed when ``compute_missing`` (one extra
    evaluation per run). ``ranks``: `finished_ranks` of ``out``, read here when not given (a caller comparing
    several variants reads it once)."""
    import torch

    from bara.harness.metrics import negative_log_likelihood as nll
    from bara.harness.metrics import paired_bootstrap
    from bara.harness.pipeline import evaluate

    def boot(a, b, y, metrics) -> dict[str, dict[str, float]]:
        return {metric: paired_bootstrap(metric, a, b, y, n_boot=1000) for metric in metrics}

    def per_seed(pairs) -> str:  # one mean difference per training seed: does every seed agree on the sign?
        return ", ".join(f"{nll(a, y) - nll(b, y):+.3f}" for a, b, y in pairs) if pairs else "—"

    twin = context_free_twin(name, finished_ranks(out) if ranks is None else ranks)
    with_constant, with_mc, with_twin = [], [], []  # (learned, other, labels) of each seed that has both
    for seed in seeds:
        folder = run_dir(out, name, seed)
        if not (folder / "done.json").exists():
            continue
        if not (folder / "eval-constant" / "predictions.safetensors").exists():
            if not compute_missing:
                continue
            evaluate(folder, out=folder / "eval-constant", mode="constant", plots=False, progress=False)
        p, y = _predictions(folder / "eval")
        c, y2 = _predictions(folder / "eval-constant")
        assert torch.equal(y, y2), f"{folder}: evaluations disagree on the labels"
        with_constant.append((p, c, y))
        mc_folder = run_dir(out, "mcdropout", seed) / "eval"
        if (mc_folder / "predictions.safetensors").exists():
            m, y3 = _predictions(mc_folder)
            assert torch.equal(y, y3), f"{mc_folder}: MC-dropout was evaluated on other examples"
            with_mc.append((p, m, y))
        twin_folder = run_dir(out, twin, seed) if twin else None
        if twin_folder and (twin_folder / "done.json").exists():
            t, y4 = _predictions(twin_folder / "eval")
            assert torch.equal(y, y4), f"{twin_folder}: the trained constant-gate control was evaluated on other examples"
            with_twin.append((p, t, y))
    if not with_constant:
        return None
    pooled = lambda pairs: (torch.cat(part) for part in zip(*pairs))  # noqa: E731
    return {"seeds": len(with_constant), "mc_seeds": len(with_mc), "twin_seeds": len(with_twin), "twin": twin,
            "vs_constant": boot(*pooled(with_constant), ("nll", "ece", "auroc")),
            "vs_mc": boot(*pooled(with_mc), ("nll", "ece")) if with_mc else None,
            "vs_twin": boot(*pooled(with_twin), ("nll", "ece")) if with_twin else None,
            "per_seed": f"{per_seed(with_constant)} · {per_seed(with_mc)} · {per_seed(with_twin)}"}


def seeds_text(n: int) -> str:
    """``"1 seed"``, ``"3 seeds"``."""
    return f"{n} seed{'s' * (n != 1)}"


def paired_row(name: str, comparison: dict) -> str:
    """A `paired_comparison` as one row under ``PAIRED_HEADER``."""
    constant = comparison["vs_constant"]
    row = [interval_text(constant["nll"]), interval_text(constant["ece"], 100.0), interval_text(constant["auroc"])]
    for key, count in (("vs_mc", "mc_seeds"), ("vs_twin", "twin_seeds")):
        other = comparison.get(key)
        if other is None:
            row += ["—", "—"]
            continue
        n = comparison[count]  # pooled over the seeds both have; the count is stated when it is fewer
        if key == "vs_twin":
            note = twin_note(name, comparison)
        else:
            note = "" if n == comparison["seeds"] else f" ({seeds_text(n)})"
        row += [interval_text(other["nll"]) + note, interval_text(other["ece"], 100.0) + note]
    return f"| {name} | {comparison['seeds']} | " + " | ".join(row) + f" | {comparison['per_seed']} |"


def paired_rows(out: Path, names: list[str], seeds: list[int], compute_missing: set[str]) -> list[str]:
    """`paired_row` of each variant in ``names`` that has a comparison; constant-gate predictions missing
    from older runs are computed for the variants in ``compute_missing``."""
    ranks = finished_ranks(out)
    comparisons = ((name, paired_comparison(out, name, seeds, name in compute_missing, ranks)) for name in names
                   if not is_trained_control(name))  # a trained control is a column of its variant's row
    return [paired_row(name, comparison) for name, comparison in comparisons if comparison is not None]
