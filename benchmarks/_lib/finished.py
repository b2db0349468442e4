"""Rebuild a `bara compare` report from finished runs alone: what ``--report-only`` pages read.

`bara.harness.compare.compare` with ``report_only`` builds every method of its list before it reads
anything, so a label naming an option the library no longer has (``bara[local_kl=marginal]``, kept in
the run archive because the pages still show its rows) stops it. `report_finished` writes the same
``results.json``, ``results.md`` and figure from the same finished runs, reading each label only as the
name of its run folder: restore the run from the archive if the folder lacks it, read its ``done.json``,
summarise. It trains and evaluates nothing, and it refuses a run whose results need re-scoring.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from bara.harness.compare import (RESULT_VERSION, CompareSpec, final_train_nll, markdown, plot_comparison, restore_run,
                                  run_dir, summarise)
from bara.harness.pipeline import RUN_FILE, RunSpec

try:  # older results name some report rows otherwise; `compare` reads them under today's names
    from bara.harness.compare import current_row_name
except ImportError:  # a library from before any row was renamed
    def current_row_name(name: str) -> str:
        return name

# settings of a run that do not change what it reports (`bara.harness.compare` ignores the same)
_IRRELEVANT = {"save_steps", "logging_steps"}
# compared through the folder name (the label) instead: the label's options are read as text
_BY_LABEL = {"method", "method_options", "seed"}


def _check_settings(folder: Path, base: RunSpec) -> None:
    """Refuse a finished run trained with other shared settings (task, sizes, epochs, ...) than ``base``."""
    if not (folder / RUN_FILE).exists():
        return
    old, new = dataclasses.asdict(RunSpec.load(folder / RUN_FILE)), dataclasses.asdict(base)
    changed = [f"{k}={old.get(k)!r} (asked {new[k]!r})" for k in new
               if k not in _IRRELEVANT | _BY_LABEL and old.get(k) != new[k]]
    if changed:
        raise SystemExit(f"error: {folder} was trained with {', '.join(changed)}; it is not a run of this page")


def _train_time_unknown(log_path: Path) -> bool:
    """Whether a run resumed before training time was summed over sessions (its time covers the last one)."""
    if not log_path.is_file():
        return False
    log = json.loads(log_path.read_text())
    return any(member.get("resumed_from") and not member.get("clocked") for member in log.get("members", [log]))


def report_finished(spec: CompareSpec, out: str | Path) -> dict[str, Any]:
    """`bara.harness.compare.compare` (``report_only``) of ``spec`` into ``out``, without building any method."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for seed in spec.seeds:  # seed-major, as `compare` orders its jobs
        for label in spec.methods:
            folder = run_dir(out, label, seed)
            if spec.archive:
                restore_run(run_dir(Path(spec.archive), label, seed), folder)
            _check_settings(folder, spec.base)
            if not (folder / "done.json").exists():
                continue
            result = json.loads((folder / "done.json").read_text())
            if result.get("version", 1) < RESULT_VERSION:
                raise SystemExit(f"error: {folder}: its results predate result version {RESULT_VERSION} and need re-scoring; "
                                 "run the page's command without --report-only")
            if "extra" in result:
                result["extra"] = {current_row_name(name): metrics for name, metrics in result["extra"].items()}
            if _train_time_unknown(folder / "train_log.json"):
                result["train_seconds"] = None
            result["train_nll"] = final_train_nll(folder / "train_log.json")
            results.append(result)
    if not results:
        raise SystemExit(f"error: {out}: no finished runs to report")
    order = {m: i for i, m in enumerate(spec.methods)}
    results.sort(key=lambda r: (order.get(r["method"], len(order)), r["seed"]))
    report = {"spec": {"base": dataclasses.asdict(spec.base), "methods": spec.methods, "seeds": spec.seeds, "ood": spec.ood,
                       "ood_eval_size": spec.ood_eval_size, "report_only": True},
              "wall_seconds": 0.0, "summary": summarise(results, spec),
              "runs": sorted(results, key=lambda r: (r["method"], r["seed"]))}
    (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "results.md").write_text(markdown(report))
    plot_comparison(results, spec, out)
    return report
