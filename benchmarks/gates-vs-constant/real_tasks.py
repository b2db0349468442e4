"""Check C7 (DESIGN §5): do BaRA's gates earn their keep on a real task?

BaRA must beat (a) the same adapter with its gates replaced by input-independent factor dropout
at the data-average keep-probabilities ("constant gates", MC-averaged the same way) and (b) LoRA
with all of the model's dropout on at evaluation (MC-dropout). Besides the default BaRA this
runs the levers DESIGN §6 lists for making the local gate context-dependent: a slower KL warm-up,
a sparser local prior, a smaller local-KL weight, the additive (hierarchical-prior) variant, a
larger gate learning rate, and the marginal local KL (no mutual-information tax; `local_mi_weight`
keeps a fraction of it; `local_kl=ceiling` charges each input only for the factors it keeps above ρ0),
and `gate_holdout`: the adapter trains on part of the training set and the local gates are then
refitted on the held-out rest by the predictive likelihood (`bara.experimental.refit`), so that the gates see
where the adapter fails to generalise instead of where it fits.

    python benchmarks/c7.py --quick          # SST-2, seed 1
    python benchmarks/c7.py --task sst2+boolq --max-length 128 --baselines mcdropout \
        --variants "bara[local_kl=marginal,gate_lr_multiplier=10]" --name c7-mixture   # two domains, one head
    python benchmarks/c7.py --seeds 1,2,3    # resumable; writes benchmarks/results/c7.md
    python benchmarks/c7.py --seeds 1,2,3 --variants bara,bara[rho0=0.2] --paired   # chosen levers on every seed
    python benchmarks/c7.py --seeds 1,2,3,4,5,6 --baselines mcdropout --variants "bara[rho0=0.2]" --paired \
        --name c7-rho0   # one lever on more seeds, against the controls C7 names
    python benchmarks/c7.py --task sst2+boolq --max-length 128 --baselines "" --name c7-mixture-refit \
        --variants "bara[local_kl=marginal,gate_lr_multiplier=10,gate_holdout=0.2,refit_epochs=5]"   # held-out gate refit
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from bara.harness.compare import CompareSpec, compare, mean_curve, parse_method, run_dir, split_methods, summarise, train_nll_by_epoch
from bara.harness.pipeline import RunSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import stale_mcdropout_note  # noqa: E402

ROOT = Path(__file__).resolve().parent
VARIANTS = ["bara", "bara[kl_warmup=0.5]", "bara[rho0=0.2]", "bara[beta_local=0.01]", "bara[variant=additive]",
            "bara[gate_lr_multiplier=10]", "bara[local_kl=marginal]", "bara[local_kl=marginal,rho0=0.2]"]
BASELINES = ["lora", "map", "mcdropout", "ensemble", "blob", "laplace", "bara-global"]


def verdicts(summary: dict, names: list[str] = VARIANTS) -> list[str]:
    lines = []
    mc = summary.get("mcdropout")
    for name in names:
        row, control = summary.get(name), summary.get(f"{name} [constant gates, C7]")
        if not row or not control:
            continue
        ece, nll = row["ece"][0], row["nll"][0]
        beats_control = ece < control["ece"][0] and nll < control["nll"][0]
        beats_mc = "—" if mc is None else "PASS" if ece < mc["ece"][0] and nll < mc["nll"][0] else "MISS"  # —: MC-dropout not run
        lines.append(f"| {name} | {row['seeds']} | {100 * ece:.1f} / {nll:.3f} | {100 * control['ece'][0]:.1f} / {control['nll'][0]:.3f} | "
                     f"{'PASS' if beats_control else 'MISS'} | {beats_mc} | "
                     f"{row['joint_effective_rank'][0]:.2f} | {row['effective_rank_std'][0]:.3f} |")
    return lines


def ece_per_cost(report: dict, name: str) -> dict | None:
    """Issue 5 §2's calibration-per-cost measures of the BaRA variant ``name``, read off each run's S = 10
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


def ece_vs_samples_rows(report: dict, names: list[str]) -> list[str]:
    """Issue 5 §2's calibration-per-cost targets (`ece_per_cost`), one table row per BaRA variant."""
    rows = []
    for name in names:
        if (m := ece_per_cost(report, name)) is None:
            continue
        at, blob10, mean_mode = m["at"], m["blob"][10], m["mean_mode"]
        vs_blob = "—" if m["s4_below_blob"] is None else f"{'PASS' if m['s4_below_blob'] else 'MISS'} ({at[4]:.1f} vs {blob10:.1f})"
        rows.append(f"| {name} | " + " | ".join("—" if at[s] is None else f"{at[s]:.1f}" for s in (1, 2, 4, 10))
                    + f" | {mean_mode:.1f} | {vs_blob} | {'PASS' if m['mean_within'] else 'MISS'} ({mean_mode / at[10]:.2f}×) |")
    return rows


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


def refit_rows(out: Path, names: list[str], seeds: list[int]) -> list[str]:
    """What the held-out gate refit (`gate_holdout`) did, from each run's ``train_log.json``: the held-out
    predictive NLL before and after, the mean shift of the gate biases, and (affine) the weight scales."""
    rows = []
    for name in names:
        for seed in seeds:
            log_file = run_dir(out, name, seed) / "train_log.json"
            refit = json.loads(log_file.read_text()).get("after_training", {}).get("gate_refit") if log_file.exists() else None
            if not refit:
                continue
            shifts, scales = refit.get("bias_shifts"), refit.get("scales")
            shift = f"{sum(shifts) / len(shifts):+.2f}" if shifts else "—"
            scale = f"{min(scales):.2f} – {max(scales):.2f}" if scales else "—"
            rows.append(f"| {name} | {seed} | {refit['scope']} | {refit['holdout_size']} | "
                        f"{refit['holdout_nll_before']:.3f} → {refit['holdout_nll_after']:.3f} | {shift} | {scale} |")
    return rows


def rank_plots(out: Path, names: list[str], seeds: list[int], stem: str) -> list[str]:
    """Copy each variant's per-domain rank histogram (first finished seed) next to the results page."""
    import re
    import shutil

    lines = []
    for name in names:
        found = [(seed, run_dir(out, name, seed) / "eval" / "rank_histogram.png") for seed in seeds]
        found = [(seed, plot) for seed, plot in found if plot.exists()]
        if found:
            seed, plot = found[0]
            target = ROOT / "results" / f"{stem}-ranks-{re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_')}.png"
            shutil.copyfile(plot, target)
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
    target = training_curves(curves, ROOT / "results" / f"{stem}-train-nll.png",
                             title="Training NLL per epoch (data term; mean over seeds)")
    seeds_text = ", ".join(f"{name} {n}" for name, n in counts.items())
    return [f"Training NLL per epoch (the data term of the loss, mean of each epoch's logged steps; seeds: {seeds_text}):", "",
            f"![training NLL per epoch]({target.name})", ""]


def _p_value(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def domain_rows(report: dict) -> list[str]:
    """Tasks with several domains (mixtures such as ``sst2+boolq``): each run's metrics per domain and,
    for gated runs, the permutation-test p-values of C4 on real data — does the rank s̄(x), or the
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


# Options a trained constant-gate control may set on top of its variant's: only where its gates start. The default
# BaRA's gates fall from σ(3) ≈ 0.95 to ρ0 = 0.5 within its first epoch because W_g's common mode (the mean
# direction of LN(x̄), shared by every input) moves them as a bias with Adam steps on ~din coordinates; frozen at
# 0, W_g cannot, and the bias alone moves ~lr per step, so a control started at σ(3) would keep ~0.9 of every
# factor and compare keep-probabilities, not context. `local_bias_init=0` starts it at 0.5.
TWIN_FREE_OPTIONS = frozenset({"local_bias_init"})
# Options that only change how W_g reads the input: with W_g held at 0 they do nothing, so a control with or
# without them is the same model and matches a variant either way.
INERT_WITHOUT_CONTEXT = frozenset({"center_gate_input"})


def _flat_options(label: str) -> dict | None:
    """A BaRA label's options and config fields in one mapping (None for another method or a bad label)."""
    try:
        method, options = parse_method(label)
    except ValueError:
        return None
    return None if method != "bara" else {**{k: v for k, v in options.items() if k != "config"}, **options.get("config", {})}


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


DEFAULT_TRAIN_SIZE, DEFAULT_EPOCHS = 512, 10.0


def run_folder(task: str, train_size: int, epochs: float) -> str:
    """Folder (under --out and the archive) of one C7 setting: the task, plus every setting off its default.

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
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "c7")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="default BaRA, LoRA and MC-dropout only")
    parser.add_argument("--report-only", action="store_true", help="summarise finished runs, train nothing")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="BaRA variants to train on every seed (the others are reported from their finished runs)")
    parser.add_argument("--baselines", default=",".join(BASELINES),
                        help="baselines to run next to the variants (MC-dropout is the one C7 needs)")
    parser.add_argument("--train-size", type=int, default=DEFAULT_TRAIN_SIZE,
                        help="training examples (per part of a mixture); other sizes get their own run and archive folders")
    parser.add_argument("--eval-size", type=int, default=500, help="evaluation examples (per part of a mixture)")
    parser.add_argument("--epochs", type=float, default=DEFAULT_EPOCHS, help="training epochs (other than 10: own run and archive folders)")
    parser.add_argument("--max-length", type=int, default=64, help="tokens per input (mixtures with BoolQ passages want more)")
    parser.add_argument("--name", default=None, help="results file benchmarks/results/<name>.md (default c7[-task])")
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
    archive = ROOT / "results" / "runs" / "c7" / folder  # committed records of the finished runs (no weights)
    report = compare(CompareSpec(base=base, methods=methods, seeds=seeds, workers=args.workers, report_only=args.report_only,
                                 archive=str(archive)), out)
    seeds_done = sorted({run["seed"] for run in report["runs"]})
    wall = time.perf_counter() - start
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    table = (out / "results.md").read_text().split("\n", 2)[2]
    lines = [f"## Check C7{' (' + args.name + ')' if args.name else ''}: do the gates earn their keep? (`benchmarks/c7.py`)", "",
             f"`python benchmarks/c7.py {' '.join(sys.argv[1:])}` · commit `{commit}` · "
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
    others = [v for v in VARIANTS if v not in variants] if args.name is None else []  # a named run reports its own
    finished = [json.loads((run_dir(out, v, s) / "done.json").read_text()) for v in others for s in seeds
                if (run_dir(out, v, s) / "done.json").exists()]
    if finished:  # levers tried earlier on fewer seeds: their verdicts, from the finished runs
        lines += verdicts(summarise(finished, None) | {"mcdropout": report["summary"].get("mcdropout")}, others)
    lines += [""]
    if ece_rows := ece_vs_samples_rows(report, variants):
        lines += ["ECE×100 against the number of Monte-Carlo samples S (the first S of each run's S = 10 samples, "
                  "mean over seeds) and in `mean` mode (one pass), with issue 5's targets: BaRA at S = 4 below BLoB at "
                  "S = 10, and `mean` mode within 25% of BaRA's S = 10 ECE.", "",
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
    if refits := refit_rows(out, variants + others, seeds):
        lines += ["The held-out gate refit (`gate_holdout`, `bara/refit.py`), from each run's `train_log.json`: the "
                  "held-out examples' predictive NLL (S = 4) before and after the refit, the mean shift of the local-gate "
                  "biases over layers (negative: more dropout) and, for the affine scope, the range over layers of the "
                  "scale given to the learned gate weights (below 1: less input dependence; negative: reversed).", "",
                  "| BaRA variant | seed | scope | held out | held-out NLL before → after | mean bias shift | weight scales |",
                  "|---|---|---|---|---|---|---|"] + refits + [""]
    if by_domain := domain_rows(report):
        lines += ["Per domain (the task is a mixture): accuracy ×100 / ECE ×100 / NLL (/ mean s̄(x) for gated runs), "
                  "and check C4 on real data — permutation-test p-values (2000 relabelings) for a difference between "
                  "domains in the rank s̄(x) and in the pattern of gate probabilities (all layers side by side). "
                  "Small p with learned gates and p = 1 with constant gates is what context-dependent gating looks like.", "",
                  "| run | seed | per domain | p (rank differs) | p (gate pattern differs) |", "|---|---|---|---|---|"] + by_domain + [""]
    (ROOT / "results").mkdir(exist_ok=True)
    name = args.name or f"c7{'' if args.task == 'sst2' else '-' + slug}"
    if by_domain:
        lines += rank_plots(out, variants, seeds, name)
    lines += train_curve_plot(out, list(dict.fromkeys(methods + others)), seeds, name)
    (ROOT / "results" / f"{name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
