"""Learned vs constant gates where the answer is known: do learned gates beat plain factor dropout on calibration?

On the real tasks (``real_tasks.py``) BaRA never beat its constant-gate control: the data could not tell
whether context-dependent rank is useless there or whether the objective cannot learn it. This
script asks the second question on `bara.experimental.synthetic.make_token_classification_task`: the
synthetic study's clusters (``benchmarks/synthetic/``), but every token carries a label drawn from ``softmax(κ H (W0 + ΔW_c) x_t)``, so the
Bayes-optimal predictive is known and the score is the held-out NLL in excess of it (and ECE).

Tasks (d = 32, K = 4 clusters, 16 tokens per instance, 4 classes, BaRA/LoRA r = 8, ΔW gain 2):

* ``clusters`` — ranks [2, 2, 2, 2], orthogonal per-cluster updates: per-input rank is the answer;
* ``variable`` — ranks [0, 2, 2, 4]: one cluster needs no adaptation at all;
* ``blurred``  — as ``clusters`` with cluster means of norm 1 instead of 3: the context is weak;
* ``shared``   — the control: all clusters share one rank-2 ΔW, so input-dependent gates have
  nothing to add and should not cost anything either;
* ``one-label`` — as ``clusters``, but training uses one token label per instance (all 16 tokens
  are context): the regime of the real tasks, where one label per input faces the gate KL. Its
  N_train is 16 × the grid's, so that each size sees as many labels as the other tasks do;
* ``one-label-shared`` — the ``shared`` control in the one-label regime.

Methods, each trained with Adam (lr 1e-2, batch 64) on N_train instances:

* ``lora``     — the adapter with all gates at 1;
* ``dropout``  — the same factors trained and evaluated with input-independent factor dropout
  (keep 0.5, S = 10): "plain dropout" trained as such;
* ``bara``     — the ELBO with BaRA's defaults, evaluated with S = 10 sampled gates, in
  ``mean`` mode, and with its gates replaced by constant keep-probabilities equal to their data
  average (the constant-gate control: the same adapter, no input dependence).

    python benchmarks/gates-vs-constant/synthetic_tasks.py            # 6 tasks × N ∈ {32, 128, 512} × 3 seeds
    python benchmarks/gates-vs-constant/synthetic_tasks.py --quick    # clusters and shared, N = 128, seeds 0-1
    python benchmarks/gates-vs-constant/synthetic_tasks.py --jobs 2   # two worker processes (1 thread each)
    python benchmarks/gates-vs-constant/synthetic_tasks.py --variants "bara[beta_local=1]"   # BaRA variants beside the default
    python benchmarks/gates-vs-constant/synthetic_tasks.py --variants "bara[beta_local=1]" --report-only   # page from the cache

Results: ``benchmarks/gates-vs-constant/synthetic.{json,md,png}``; finished runs are cached in the JSON
and skipped when the script is started again with the same settings (``--report-only`` trains nothing).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "_lib"))
from common import (Cache, add_grid_options, close_cache, fmt, fmt_seconds, git_commit, header, median, page_paths,  # noqa: E402
                    report_meta, run_cells, script_command, table, verdict, write_md)

HERE = Path(__file__).resolve().parent


def result_paths(name: str, quick: bool) -> tuple[Path, Path, Path]:
    """The cache, page and figure stem of page ``name``, next to this script."""
    return page_paths(HERE, name, quick)


# the cache names the constant-gate row of a BaRA run "<label>, constant gates (C7 control)"; pages show it without
# the check code
CONSTANT_ROW = "constant gates (C7 control)"


def shown(label: str) -> str:
    """A row label as the page shows it."""
    return label.replace(CONSTANT_ROW, "constant gates")

TASKS = {
    "clusters": {"ranks": [2, 2, 2, 2], "title": "four clusters, each its own rank-2 ΔW_c"},
    "variable": {"ranks": [0, 2, 2, 4], "title": "ranks [0, 2, 2, 4]: cluster 0 needs no adaptation"},
    "blurred": {"ranks": [2, 2, 2, 2], "mean_norm": 1.0, "title": "as `clusters`, cluster means of norm 1 (weak context)"},
    "shared": {"ranks": [2, 2, 2, 2], "shared": True, "title": "control: one rank-2 ΔW shared by all clusters"},
    "one-label": {"ranks": [2, 2, 2, 2], "labelled": 1, "size_factor": 16,
                  "title": "as `clusters`, but training sees one token label per instance (as sequence classification)"},
    "one-label-shared": {"ranks": [2, 2, 2, 2], "shared": True, "labelled": 1, "size_factor": 16,
                         "title": "the `shared` control with one token label per instance"},
}
BASE_METHODS = ["lora", "dropout", "bara"]
RANK = 8
KEEP = 0.5


def build_task(name: str, seed: int):
    from bara.experimental.synthetic import make_token_classification_task

    spec = TASKS[name]
    return make_token_classification_task(spec["ranks"], shared=spec.get("shared", False),
                                          mean_norm=spec.get("mean_norm", 3.0), seed=seed)


def score(out: dict, n_clusters: int) -> dict:
    """Accuracy, ECE, NLL and NLL in excess of the Bayes-optimal predictive (same labels), overall and per cluster."""
    from bara.harness.metrics import accuracy, expected_calibration_error, negative_log_likelihood

    probs, labels, truth = out["probs"].flatten(0, 1), out["labels"].flatten(), out["true_probs"].flatten(0, 1)
    bayes = negative_log_likelihood(truth, labels)
    nll = negative_log_likelihood(probs, labels)
    per_cluster = []
    for c in range(n_clusters):
        pick = out["cluster"] == c
        p, y, t = out["probs"][pick].flatten(0, 1), out["labels"][pick].flatten(), out["true_probs"][pick].flatten(0, 1)
        per_cluster.append(negative_log_likelihood(p, y) - negative_log_likelihood(t, y))
    return {"acc": accuracy(probs, labels), "ece": expected_calibration_error(probs, labels), "nll": nll,
            "excess_nll": nll - bayes, "bayes_nll": bayes, "excess_nll_per_cluster": per_cluster}


def gate_stats(out: dict, n_clusters: int) -> dict:
    """How input-dependent the learned gates are: per-cluster mean gates, their spread, s̄ per cluster."""
    gates, cluster = out["gate_probs"], out["cluster"]
    means = torch.stack([gates[cluster == c].mean(0) for c in range(n_clusters)])
    return {"cluster_gates": [[round(float(v), 3) for v in row] for row in means],
            "cluster_ranks": [float(row.sum()) for row in means],
            # per factor, the largest difference between two clusters' mean keep-probability, averaged over factors
            "gate_spread": float((means.max(0).values - means.min(0).values).mean()),
            # 0: every gate at 1/2 (pure dropout noise), 1: every gate at 0 or 1 (a deterministic choice)
            "gate_certainty": float((2 * (gates - 0.5).abs()).mean())}


def parse_variant(method: str) -> dict:
    """``"bara[beta_local=1]"`` → ``{"beta_local": 1}``: the BaRAConfig fields a BaRA variant changes."""
    from bara.harness.compare import parse_method

    name, options = parse_method(method)
    if name != "bara" or set(options) - {"config"}:
        raise ValueError(f"{method!r}: the synthetic task runs lora, dropout, bara and bara[<BaRAConfig field>=...] only")
    return options.get("config", {})


def bara_label(method: str) -> str:
    return "BaRA" + method[len("bara"):]


def rows_of(method: str) -> list[tuple[str, str]]:
    """The evaluation rows of one trained method: (row label, gate mode)."""
    if method == "lora":
        return [("LoRA", "ones")]
    if method == "dropout":
        return [("factor dropout (trained)", "constant")]
    label = bara_label(method)
    return [(f"{label}, S = 10", "sample"), (f"{label}, mean mode", "mean"), (f"{label}, {CONSTANT_ROW}", "constant")]


def run_cell(task_name: str, n_train: int, method: str, seed: int, steps: int) -> dict:
    torch.set_num_threads(1)
    from bara import BaRAConfig
    from bara.model import fix_gates
    from bara.experimental.synthetic import predict_token_classifier, train_token_classifier

    task = build_task(task_name, seed)
    k = len(task.clusters.ranks)
    gated = method.startswith("bara")
    config = BaRAConfig(r=RANK, target_modules=["proj"], **(parse_variant(method) if gated else {}))
    start = time.perf_counter()
    model = train_token_classifier(task, config, method="bara" if gated else method, steps=steps, n_train=n_train,
                                   keep=KEEP, labelled_tokens=TASKS[task_name].get("labelled"), seed=seed)
    cell = {"task": task_name, "n_train": n_train, "method": method, "seed": seed,
            "seconds": time.perf_counter() - start, "rows": {}}
    for label, mode in rows_of(method):
        if gated and mode == "constant":  # the constant-gate control: the data-average of the mean-mode gates
            fix_gates(model, {"proj": cell.pop("gate_mean")})
        out = predict_token_classifier(task, model, mode=mode, seed=seed)
        cell["rows"][label] = score(out, k)
        if gated and mode == "sample":
            cell.update(gate_stats(out, k))
            cell["gate_mean"] = out["gate_probs"].mean(0)
    return cell


def cell_key(task: str, n: int, method: str, seed: int) -> str:
    return f"{task}|N{n}|{method}|seed{seed}"


def task_sizes(task: str, sizes: list[int]) -> list[int]:
    """The training sizes of ``task``: the grid's, times its ``size_factor`` (same number of labels)."""
    return [n * TASKS[task].get("size_factor", 1) for n in sizes]


def grid(sizes: list[int], seeds: list[int], tasks: list[str], methods: list[str]) -> list[tuple]:
    return [(t, n, m, s) for t in tasks for n in task_sizes(t, sizes) for s in seeds for m in methods]


# -- report ----------------------------------------------------------------------------------
def _values(cells: dict, task: str, n: int, method: str, label: str, seeds: list[int], key: str) -> list[float]:
    return [cells[k]["rows"][label][key] for s in seeds if (k := cell_key(task, n, method, s)) in cells]


def _spread(values: list[float], digits: int = 3) -> str:
    if not values:
        return "—"
    return fmt(values[0], digits) if len(values) == 1 else f"{fmt(median(values), digits)} [{fmt(min(values), digits)}–{fmt(max(values), digits)}]"


def verdicts(cells: dict, sizes: list[int], seeds: list[int], tasks: list[str], methods: list[str]) -> list[list[str]]:
    """Per BaRA variant, task and N: is its median excess NLL (S = 10) below that of every control
    (LoRA, trained factor dropout and its own constant gates)?"""
    rows = []
    for method in (m for m in methods if m.startswith("bara")):
        label = bara_label(method)
        for task in tasks:
            for n in task_sizes(task, sizes):
                bara = _values(cells, task, n, method, f"{label}, S = 10", seeds, "excess_nll")
                controls = {f"{label}, {CONSTANT_ROW}": (method, f"{label}, {CONSTANT_ROW}")}
                controls |= {lab: (m, lab) for m in ("lora", "dropout") for lab, _ in rows_of(m) if m in methods}
                values = {lab: v for lab, (m, row) in controls.items() if (v := _values(cells, task, n, m, row, seeds, "excess_nll"))}
                if not bara or not values:
                    continue
                best = min(values, key=lambda lab: median(values[lab]))
                margin = median(bara) - median(values[best])
                wins = sum(b < c for b, c in zip(bara, values[best]))
                rows.append([label, task, str(n), fmt(median(bara)), f"{shown(best).replace(label + ', ', '')}: {fmt(median(values[best]))}",
                             f"{margin:+.3f}", f"{wins} of {len(bara)}", verdict(margin < 0)])
    return rows


def summarise(cells: dict, sizes: list[int], seeds: list[int], tasks: list[str], methods: list[str]) -> list[str]:
    lines = []
    for task in tasks:
        lines += [f"### Task `{task}`: {TASKS[task]['title']}", ""]
        rows = []
        for n in task_sizes(task, sizes):
            for method in methods:
                runs = [cells[k] for s in seeds if (k := cell_key(task, n, method, s)) in cells]
                for label, mode in rows_of(method):
                    if not runs:
                        continue
                    gates = "—"
                    if mode == "sample":
                        ranks = [median([c["cluster_ranks"][i] for c in runs]) for i in range(len(TASKS[task]["ranks"]))]
                        gates = (f"s̄ {[round(r, 1) for r in ranks]}, spread {fmt(median([c['gate_spread'] for c in runs]), 2)}, "
                                 f"certainty {fmt(median([c['gate_certainty'] for c in runs]), 2)}")
                    value = lambda key, scale=1.0: [scale * c["rows"][label][key] for c in runs]  # noqa: E731
                    rows.append([str(n), shown(label), _spread(value("excess_nll")), _spread(value("ece", 100), 1),
                                 _spread(value("acc", 100), 1), gates])
        lines += table(["N_train", "method", "excess NLL median [min–max]", "ECE×100", "accuracy×100",
                        "BaRA gates: per-cluster s̄, spread, certainty"], rows) + [""]
    return lines


def plot(cells: dict, sizes: list[int], seeds: list[int], tasks: list[str], methods: list[str], stem: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(tasks))
    rows = -(-len(tasks) // cols) + (len(tasks) % cols == 0)  # a spare panel holds the legend
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.4 * rows), squeeze=False, sharey=True)
    flat = list(axes.flat)
    for ax, task in zip(flat, tasks):
        for method in methods:
            for label, mode in rows_of(method):
                if mode == "mean":
                    continue
                points = [(n, median(v)) for n in task_sizes(task, sizes) if (v := _values(cells, task, n, method, label, seeds, "excess_nll"))]
                if points:
                    ax.plot(*zip(*points), marker="o", label=shown(label), linestyle="--" if mode == "constant" and method != "dropout" else "-")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(task)
        ax.set_xlabel("N_train (instances of 16 tokens)" + (", one label each" if TASKS[task].get("labelled") else ""))
        ax.set_ylabel("held-out NLL − Bayes NLL (median)")
    for ax in flat[len(tasks):]:
        ax.axis("off")
    handles, labels = flat[0].get_legend_handles_labels()
    flat[-1].legend(handles, labels, loc="center", fontsize=8)
    fig.tight_layout()
    path = stem.parent / f"{stem.name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_grid_options(parser, quick="tasks clusters and shared, N = 128, seeds 0 and 1 (< 1 min)", sizes="32,128,512",
                     tasks=f"subset of: {', '.join(TASKS)} (default all)", tasks_default=None,
                     steps_help="Adam steps per run (batch 64, lr 1e-2)")
    parser.add_argument("--variants", default="", help="extra BaRA variants to train next to lora, dropout and bara, e.g. "
                        "'bara[beta_local=1],bara[rho0=0.8]' (keys are BaRAConfig fields)")
    parser.add_argument("--report-only", action="store_true",
                        help="write the page from the cached runs, train nothing (every cell of the grid must be cached)")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    sizes = [int(s) for s in (args.sizes or ("128" if args.quick else "32,128,512")).split(",")]
    seeds = [int(s) for s in (args.seeds or ("0,1" if args.quick else "0,1,2")).split(",")]
    tasks = [t for t in (args.tasks or ("clusters,shared" if args.quick else ",".join(TASKS))).split(",") if t]
    if unknown := sorted(set(tasks) - set(TASKS)):
        parser.error(f"unknown task(s) {unknown}; choose among {list(TASKS)}")
    from bara.harness.compare import split_methods

    methods = BASE_METHODS + [v for v in split_methods(args.variants) if v not in BASE_METHODS]
    for method in methods[len(BASE_METHODS):]:
        try:
            parse_variant(method)
        except ValueError as error:
            parser.error(str(error))
    json_path, md_path, stem = result_paths("synthetic", args.quick)
    cache = Cache(json_path, {"steps": args.steps, "n_eval": 1024, "batch_size": 64, "lr": 1e-2, "r": RANK, "keep": KEEP},
                  fresh=args.fresh)
    todo = [c for c in grid(sizes, seeds, tasks, methods) if cell_key(*c) not in cache]
    print(f"{len(todo)} runs to do ({len(grid(sizes, seeds, tasks, methods)) - len(todo)} cached)", flush=True)
    if args.report_only and todo:
        raise SystemExit(f"error: --report-only: {len(todo)} runs of this grid are not in {json_path}, e.g. {cell_key(*todo[0])}")
    start, commit = time.perf_counter(), git_commit()

    def record(cell_args: tuple, result: dict) -> None:
        result["commit"] = commit
        cache.put(cell_key(*cell_args), result)
        summary = ", ".join(f"{label}: {row['excess_nll']:.3f}" for label, row in result["rows"].items())
        print(f"  {cell_key(*cell_args)}: excess NLL {summary} ({result['seconds']:.1f} s)", flush=True)

    run_cells(todo, run_cell, (args.steps,), args.jobs, record)
    wall = time.perf_counter() - start
    cells = cache.data["cells"]
    meta = report_meta(cache, commit) if args.report_only else close_cache(cache, wall, commit, sizes=sizes, seeds=seeds, tasks=tasks)

    decided = verdicts(cells, sizes, seeds, tasks, methods)
    command = script_command(__file__, [a for a in ("--quick" if args.quick else "", f"--variants '{args.variants}'" if args.variants else "",
                                                    "--report-only" if args.report_only else "") if a])
    lines = header("Learned gates vs constant gates on a synthetic task with a known answer"
                   + (" (quick run)" if args.quick else ""), meta, wall, command)
    lines += [
        "Each token's label is drawn from a known distribution, so the score is the held-out NLL in excess of the "
        "Bayes-optimal predictive's on the same labels (1024 fresh instances × 16 tokens); ECE and accuracy beside it. "
        f"d = 32, K = 4 clusters, 4 classes, ΔW gain 2, r = {RANK}; Adam lr 1e-2, batch 64, {args.steps} steps; "
        f"factor dropout keeps each factor with probability {KEEP}; BaRA uses its defaults (τ = 1, β_l = 0.1, "
        "ρ0 = 0.5, α0 = 1/3), the ELBO summing the 16 token NLLs of an instance. Seeds draw the task, the data and the "
        f"init: {seeds}. Sum of per-run training times (evaluation not counted): {fmt_seconds(meta['compute_seconds'])}.",
        "",
        "## Verdict per task and training size",
        "",
        "BaRA (S = 10) against the best of its three controls (median excess NLL over seeds; `wins`: seeds where BaRA's "
        "excess NLL is below that control's). PASS means the learned, input-dependent gates are worth more than any "
        "form of plain dropout here; on `shared` a MISS is the expected answer, and the margin is what spurious "
        "input dependence costs.",
        "",
    ]
    lines += table(["BaRA", "task", "N_train", "its excess NLL", "best control: its excess NLL", "BaRA − control", "wins",
                    "gates earn their keep"], decided) + [""]
    lines += ["## Per task", "", "Spread: per factor, the largest difference between two clusters' mean keep-probability, "
              "averaged over factors (0: the gates ignore the input). Certainty: mean of |2 E_q[z] − 1| over inputs and "
              "factors (0: every gate a coin flip, 1: every gate decided).", ""]
    lines += summarise(cells, sizes, seeds, tasks, methods)
    lines += [f"![excess NLL against training size]({plot(cells, sizes, seeds, tasks, methods, stem)})", "",
              f"Per-run numbers (per-cluster excess NLL and mean gates, timings) are in `{json_path.name}`."]
    write_md(md_path, lines)
    print(f"wrote {md_path} (wall {fmt_seconds(wall)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
