"""File finished suite runs under the method label that now names their settings, after a default changed.

When a `BaRAConfig` default changes (`bara.config.CHANGED_DEFAULTS`), two kinds of finished runs
sit under the wrong label: runs of the bare method (``bara``) trained with the old default, and
runs of the variant that spelled the new default out (``bara[local_noise=example]``). Retraining
them would reproduce the same numbers (same settings, same seed), so this script moves them instead:

    bara                        ->  bara[local_noise=row]    (trained with the old default)
    bara[local_noise=example]   ->  bara                     (trained with what is now the default)

Before moving anything it checks that the settings each run was trained with, resolved against the
defaults of the protocol it was trained under, equal the settings of its new label under the current
defaults; a run that does not match stops the script with a one-line error. It moves the run folder
(with its adapter) and the committed archive copy, rewrites the label inside ``run.json`` and
``done.json``, and records the old label in ``done.json`` (``relabelled_from``).

    python benchmarks/relabel_runs.py --dry-run
    python benchmarks/relabel_runs.py --tasks arc_easy,obqa,winogrande_s
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from suite import ARCHIVE, OUT  # noqa: E402

from bara.harness.compare import EVAL_PROTOCOL, effective_config, parse_method, run_dir, trained_config  # noqa: E402

MOVES = (("bara", "bara[local_noise=row]"), ("bara[local_noise=example]", "bara"))  # in this order
GLOBAL_DRAW_CACHE = Path(__file__).resolve().parent / "results" / "global-draw.json"  # keyed by run folder name


def _relabel_records(folder: Path, old: str, new: str) -> None:
    """Rewrite the label inside a run's ``run.json`` and ``done.json`` (the extra rows are keyed by it)."""
    run = json.loads((folder / "run.json").read_text())
    run["method_options"] = parse_method(new)[1]
    (folder / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    done = json.loads((folder / "done.json").read_text())
    done["method"] = new
    done["extra"] = {new + key[len(old):] if key.startswith(old + " ") else key: value
                     for key, value in done.get("extra", {}).items()}
    done.setdefault("relabelled_from", old)
    done["eval_protocol"] = EVAL_PROTOCOL  # its settings are the current protocol's, spelled out by the label
    (folder / "done.json").write_text(json.dumps(done, indent=2) + "\n")


def plan(tasks: list[str]) -> list[tuple[str, str, str, int]]:
    """``(task, old label, new label, seed)`` for every finished run to move; checks each one first."""
    moves = []
    for task in tasks:
        vacated: set[tuple[str, int]] = set()  # (label, seed) folders an earlier move of this task empties
        for old, new in MOVES:
            promised, wanted = (effective_config(*parse_method(label)) for label in (old, new))
            for source in sorted(run_dir(_root(task), old, 1).parent.glob("seed*")):
                if not (source / "done.json").exists():
                    continue
                seed = int(source.name.removeprefix("seed"))
                trained = trained_config(source)
                if trained == promised and trained != wanted:
                    continue  # its label already says how it was trained (filed by an earlier invocation)
                if trained != wanted:
                    diff = sorted(k for k in wanted if trained.get(k) != wanted[k])
                    raise SystemExit(f"{source}: trained with {', '.join(f'{k}={trained.get(k)!r}' for k in diff)}, "
                                     f"not the settings of {new!r}; nothing was moved")
                if run_dir(_root(task), new, seed).exists() and (new, seed) not in vacated:
                    raise SystemExit(f"{run_dir(_root(task), new, seed)} exists already; nothing was moved")
                vacated.add((old, seed))
                moves.append((task, old, new, seed))
    return moves


def _root(task: str) -> Path:
    """The suite's folder of a task: the run folders (with adapters) if they exist, else the archive."""
    return OUT / task if (OUT / task / "runs").exists() else ARCHIVE / task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="arc_easy,obqa,winogrande_s", help="the multiple-choice tasks to relabel")
    parser.add_argument("--dry-run", action="store_true", help="check and list the moves, move nothing")
    args = parser.parse_args()
    moves = plan(args.tasks.split(","))
    for task, old, new, seed in moves:
        print(f"{task} seed {seed}: {old} -> {new}")
        if args.dry_run:
            continue
        for root in (OUT / task, ARCHIVE / task):
            source, target = run_dir(root, old, seed), run_dir(root, new, seed)
            if not (source / "done.json").exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(source), str(target))
            _relabel_records(target, old, new)
            if not any(source.parent.iterdir()):
                source.parent.rmdir()  # the label has no run left here
    if moves and not args.dry_run:
        _rename_cached_runs(moves)
    if not moves:
        print("nothing to relabel")


def _rename_cached_runs(moves: list[tuple[str, str, str, int]]) -> None:
    """Follow the moves in `global_draw.py`'s cache (keys ``task/runs/<label folder>/seedN@digest`` of the
    adapter), so its pages rebuild from the cache under the runs' new names. Only the moved adapters' keys
    change: a run set aside elsewhere under the same name has another digest."""
    from global_draw import _key

    if not GLOBAL_DRAW_CACHE.exists():
        return
    cache = json.loads(GLOBAL_DRAW_CACHE.read_text())
    for task, old, new, seed in moves:  # in the order moved: a folder is vacated before it is refilled
        target = run_dir(OUT / task, new, seed)
        if not (target / "adapter").is_dir():
            continue
        new_key = _key(target)
        old_key = "/".join(run_dir(Path(task), old, seed).parts) + new_key[new_key.index("@"):]
        if old_key in cache:
            cache[new_key] = cache.pop(old_key)
    GLOBAL_DRAW_CACHE.write_text(json.dumps(cache, indent=2) + "\n")


if __name__ == "__main__":
    main()
