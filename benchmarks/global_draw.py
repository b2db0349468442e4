"""What drawing BaRA's global gate once per example, not once per choice row, changes on multiple-choice tasks.

A cross-encoder reads each choice of a multiple-choice example as its own sequence. Until
`BaRAConfig.global_draw` existed, every choice row drew its own global gate (π and g), so one
Monte-Carlo sample scored an example's choices with different adapters; now an example's choices share
one draw (``global_draw="example"``), as one weight draw of BLoB scores them all. This script takes the
saved adapters of the suite's BaRA runs on the multiple-choice tasks (those trained before the change
were set aside under ``benchmarks/out/stale-global-draw``; both folders are read), and evaluates each both ways at S = 10 on the same examples with the same seed: accuracy, ECE and NLL, and
the paired 95% bootstrap interval of ΔNLL (per example − per row; negative: sharing the draw is better).
Only the evaluation changes here; the table says how each run drew its relaxed global gates in training.
With ``--local-noise`` a second table (page ``local-noise.md``) compares, with the global draw per example,
the local gates drawn per choice row and from uniforms shared by the example's choices (``BaRAConfig.local_noise``).

    python benchmarks/global_draw.py
    python benchmarks/global_draw.py --quick        # one WinoGrande-S run, 200 examples
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from c7 import interval_text  # noqa: E402
from common import git_commit, hardware, header, result_paths, table, write_md  # noqa: E402
from suite import OUT  # noqa: E402

STALE = OUT.parent / "stale-global-draw"  # where the suite's runs trained with per-row draws were set aside

from bara.config import BaRAConfig  # noqa: E402
from bara.io import CONFIG_NAME  # noqa: E402
from bara.layer import BaRALinear  # noqa: E402
from bara.harness.metrics import accuracy, expected_calibration_error, negative_log_likelihood, paired_bootstrap  # noqa: E402
from bara.harness.compare import eval_protocol  # noqa: E402
from bara.harness.pipeline import encode_split, load_trained, seeded_predict  # noqa: E402

TASKS = ("arc_easy", "obqa", "winogrande_s")
METHODS = ("bara", "bara-global")
# evaluation settings: (global_draw, local_noise) of every BaRA layer
SETTINGS = {"row": ("row", "row"), "example": ("example", "row"), "example+local": ("example", "example")}
DELTAS = {"delta": ("example", "row"), "delta_local": ("example+local", "example")}  # (new, old) per cache field


def adapters(root: Path, tasks: list[str], methods: list[str]) -> list[Path]:
    """The finished suite runs (run folders) under ``root`` that kept their adapter, in task, method, seed order."""
    return [folder for task in tasks for method in methods
            for folder in sorted((root / task / "runs" / method).glob("seed*"))
            if (folder / "done.json").exists() and (folder / "adapter").is_dir()]


def _name(folder: Path) -> str:
    """``task/runs/method/seedN``: a run's name wherever it lies (the suite's folder or a set-aside copy)."""
    return "/".join(folder.parts[-4:])


def _key(folder: Path) -> str:
    """The run's name and a digest of its adapter's weights: a run moved aside keeps its cached result, and a
    retrained run of the same name gets its own."""
    digest = hashlib.sha256((folder / "adapter" / "adapter_model.safetensors").read_bytes()).hexdigest()[:12]
    return f"{_name(folder)}@{digest}"


def _trained_per_example(folder: Path) -> bool:
    """Whether the run was trained after `BaRAConfig.global_draw` (`bara.harness.compare.EVAL_PROTOCOL` ≥ 3)."""
    return eval_protocol(folder) >= 3


def _local_noise(folder: Path) -> str:
    """How the run drew its relaxed local gates in training (its saved config; older adapters: per row)."""
    config = BaRAConfig.load(folder / "adapter" / CONFIG_NAME)
    return "shared" if config.local_noise == "example" else "per row"


def evaluate(folder: Path, eval_size: int | None, deltas: list[str]) -> dict:
    """Predict the run's evaluation set under the settings the ``deltas`` compare (same seed for each)."""
    built, model = load_trained(folder, eval_size=eval_size)
    eval_set = encode_split(built, "eval")
    probs = {}
    for name in dict.fromkeys(setting for delta in deltas for setting in DELTAS[delta]):
        for module in model.modules():
            if isinstance(module, BaRALinear):
                module.global_draw, module.local_noise = SETTINGS[name]
        preds = seeded_predict(built, model, eval_set, progress=False)
        probs[name] = preds.probs
    labels = preds.labels
    metrics = {name: {"accuracy": accuracy(p, labels), "ece": expected_calibration_error(p, labels),
                      "nll": negative_log_likelihood(p, labels)} for name, p in probs.items()}
    result = {"examples": len(labels), "metrics": metrics}
    for delta in deltas:
        new, old = DELTAS[delta]
        result[delta] = {metric: paired_bootstrap(metric, probs[new], probs[old], labels, n_boot=1000) for metric in ("nll", "ece")}
    return result


def _cell(metrics: dict, old: str, new: str) -> list[str]:
    before, after = metrics[old], metrics[new]
    return [f"{100 * before['accuracy']:.1f} → {100 * after['accuracy']:.1f}", f"{100 * before['ece']:.1f} → {100 * after['ece']:.1f}",
            f"{before['nll']:.3f} → {after['nll']:.3f}"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=",".join(TASKS), help="multiple-choice suite tasks")
    parser.add_argument("--methods", default=",".join(METHODS), help="BaRA methods of the suite")
    parser.add_argument("--eval-size", type=int, default=None, help="evaluation examples (default: the run's own)")
    parser.add_argument("--root", type=Path, action="append",
                        help=f"folder(s) holding suite tasks' runs (default: {OUT} and {STALE}; repeat to give several)")
    parser.add_argument("--local-noise", action="store_true",
                        help="also compare the local gates per choice row vs from shared uniforms (BaRAConfig.local_noise); "
                             "the page is then results/local-noise.md")
    parser.add_argument("--quick", action="store_true", help="one WinoGrande-S BaRA run, 200 examples")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    tasks, methods = args.tasks.split(","), args.methods.split(",")
    if args.quick:
        tasks, methods, args.eval_size = ["winogrande_s"], ["bara"], 200
    roots = args.root or [OUT, STALE]
    folders = [folder for root in roots for folder in adapters(root, tasks, methods)]
    folders = folders[:1] if args.quick else folders
    if not folders:
        raise SystemExit(f"no finished BaRA run with a saved adapter under {', '.join(map(str, roots))} "
                         f"for tasks {tasks}, methods {methods}")
    json_path, md_path, _ = result_paths("global-draw", args.quick)  # one cache for both pages
    if args.local_noise:
        md_path = result_paths("local-noise", args.quick)[1]
    wanted = list(DELTAS) if args.local_noise else ["delta"]
    cache = json.loads(json_path.read_text()) if json_path.exists() else {}
    start = time.time()
    for i, folder in enumerate(folders, 1):
        key = _key(folder)
        missing = [delta for delta in wanted if delta not in cache.get(key, {})]
        if missing:
            print(f"[{i}/{len(folders)}] {_name(folder)}: {', '.join(missing)}", flush=True)
            result = evaluate(folder, args.eval_size, missing)
            entry = cache.setdefault(key, {"commit": git_commit()})
            entry["metrics"] = entry.get("metrics", {}) | result.pop("metrics")
            entry.update(result)
            entry.setdefault("commits", {}).update({delta: git_commit() for delta in missing})
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(cache, indent=2) + "\n")  # a resumable cache: one run at a time
    rows, local_rows = [], []
    for folder in folders:
        result = cache[_key(folder)]
        name = _name(folder).replace("/runs/", " · ")
        rows.append([name, "per example" if _trained_per_example(folder) else "per row", result["examples"],
                     *_cell(result["metrics"], "row", "example"), interval_text(result["delta"]["nll"]),
                     interval_text(result["delta"]["ece"], scale=100, digits=1)])
        if args.local_noise:
            local_rows.append([name, _local_noise(folder), result["examples"],
                               *_cell(result["metrics"], "example", "example+local"), interval_text(result["delta_local"]["nll"]),
                               interval_text(result["delta_local"]["ece"], scale=100, digits=1)])
    command = shlex.join(["python", "benchmarks/global_draw.py", *(sys.argv[1:] if argv is None else argv)])
    meta = {"commit": git_commit(), "hardware": hardware(),
            "cell_commits": sorted({commit for f in folders for commit in
                                    [cache[_key(f)]["commit"], *cache[_key(f)].get("commits", {}).values()]})}
    title = ("Global gate drawn per choice row vs per example, and local gates with shared uniforms (multiple-choice tasks)"
             if args.local_noise else "Global gate drawn per choice row vs per example (multiple-choice tasks)")
    lines = header(title, meta, time.time() - start, command)
    lines += [__doc__.split("\n\n")[1].replace("\n", " "), "",
              "Each cell: per row → per example. Δ = per example − per row, 95% paired bootstrap interval.", ""]
    lines += table(["run", "trained with draws", "examples", "ACC ×100", "ECE ×100", "NLL", "ΔNLL", "ΔECE ×100"], rows)
    if local_rows:
        lines += ["", "### The local gates' uniforms shared by an example's choices (`local_noise`)", "",
                  "The same runs with the global draw per example, evaluated with the local gates drawn per choice row → "
                  "from uniforms shared by the example's choices (`BaRAConfig.local_noise=\"example\"`: each choice keeps "
                  "its own keep-probabilities, so only the coupling of the draws changes). Δ = shared − per row.", ""]
        lines += table(["run", "trained with local noise", "examples", "ACC ×100", "ECE ×100", "NLL", "ΔNLL", "ΔECE ×100"],
                       local_rows)
    write_md(md_path, lines)
    print(md_path.read_text())


if __name__ == "__main__":
    main()
