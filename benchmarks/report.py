"""Assemble ``docs/RESULTS.md`` from the generated pages of every study folder under ``benchmarks/``.

The pages of the studies that still run come first, in `STUDIES` order; then the static pages under
``benchmarks/archive/`` (studies of options BaRA no longer has). Never edit docs/RESULTS.md by hand:
rerun the benchmark scripts, then this one.

    python benchmarks/report.py
"""

from __future__ import annotations

import datetime
import platform
import re
import subprocess
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent
TARGET = ROOT.parent / "docs" / "RESULTS.md"
# study folders (under benchmarks/), each with its pages in the order they appear
STUDIES = {
    "demo": ["demo.md"],
    "suite": ["suite.md", "suite-quick.md"],
    "gates-vs-constant": ["sst2.md", "sst2-rho0.md", "sst2-n2048.md", "multitask.md", "multitask-e10.md",
                          "multitask-mc-noise.md", "synthetic.md"],
    "r-sweep": ["r-sweep.md"],
    "beat-blob": ["screen.md", "one-pass.md", "laplace-factors.md", "confirm.md", "frontier.md"],
    "small-data": ["small-data.md"],
    "cost": ["cost.md", "cost-r64.md", "eval-order.md", "gpu.md"],
    "synthetic": ["synthetic.md", "synthetic_quick.md"],
}
ARCHIVE = ROOT / "archive"
ARCHIVED = {
    "gate-levers": ["c7-levers.md", "c7-mixture.md", "c7-mixture-seed2.md", "c7-mixture-seeds.md", "c7-mixture-levers.md",
                    "c7-mixture-gates.md", "c7-multitask-e10-lever.md"],
    "gate-refit": ["c7-mixture-refit.md", "c7-mixture-refit-log.md"],
    "gate-decomposition": ["gate-decomposition.md"],
    "shared-choice-draws": ["global-draw.md", "local-noise.md", "global-draw_quick.md", "local-noise_quick.md"],
    "backbone-dropout": ["c7-dropout.md", "c7-adapter-dropout.md"],
}
# Commits that changed what a baseline's rows mean. A page generated before one of them still shows the old
# runs (its runs were trained then), so the report says so above the page instead of letting it pass as current.
RESULT_CHANGES = {
    "5b25c15": {
        "mcdropout": "its `mcdropout` rows evaluated MC-dropout with the attention dropout off (hidden dropout only)",
        "ensemble": "its `ensemble` rows trained each member on its own subsample of the training set (about three "
                    "times the data of the other methods)",
    },
}


def page_commit(text: str) -> str | None:
    """The commit a generated page names in its header (``commit `abc1234` ``), or None for a page without one."""
    found = re.search(r"commit `([0-9a-f]{7,40})`", text)
    return found.group(1) if found else None


def stale_notes(text: str, before: Callable[[str, str], bool]) -> list[str]:
    """Notes for the rows of ``text`` that a later commit in RESULT_CHANGES made stale.

    ``before(page, change)`` says whether commit ``page`` precedes commit ``change``. Only methods that have a
    row on the page (``| method |``) count, so a page without MC-dropout gets no MC-dropout note.
    """
    commit = page_commit(text)
    if commit is None:
        return []
    notes = []
    for change, reasons in RESULT_CHANGES.items():
        stale = [why for method, why in reasons.items() if re.search(rf"^\| {re.escape(method)} \|", text, re.MULTILINE)]
        if stale and before(commit, change):
            notes.append(f"> **Stale rows.** This page was generated on `{commit}`, before `{change}` changed these "
                         f"baselines: {'; '.join(stale)}. `benchmarks/suite/suite.md` has them retrained on the "
                         "current code; this page's comparisons with these rows are not current.")
    return notes


def git_precedes(page: str, change: str) -> bool:
    """Whether ``page`` is a strict ancestor of ``change`` in this repository's history.

    A commit this clone lacks (a shallow clone) makes git exit 128: no note rather than a guess.
    """
    ancestor = subprocess.run(["git", "merge-base", "--is-ancestor", page, change], capture_output=True, cwd=ROOT)
    return ancestor.returncode == 0 and not change.startswith(page) and not page.startswith(change)


def with_notes(text: str, notes: list[str]) -> str:
    """``text`` with ``notes`` placed after its title line."""
    if not notes:
        return text
    title, _, rest = text.partition("\n")
    return "\n".join([title, "", *notes, rest])


NOT_STUDIES = {"archive", "results", "out"}  # the archived studies, the run archive, local run folders


def pages(root: Path, order: dict[str, list[str]]) -> list[Path]:
    """The pages (``*.md`` but READMEs) of the study folders under ``root``: the folders in ``order``'s order, then
    any other; within a folder the pages ``order`` names first, in its order, then the rest by name."""
    folders = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith((".", "_")) and d.name not in NOT_STUDIES),
                     key=lambda d: (list(order).index(d.name) if d.name in order else len(order), d.name))
    found = []
    for folder in folders:
        names = order.get(folder.name, [])
        found += sorted((p for p in folder.glob("*.md") if p.name != "README.md"),
                        key=lambda p: (names.index(p.name) if p.name in names else len(names), p.name))
    return found


def section(path: Path) -> str:
    """A page as a section of docs/RESULTS.md: stale-row notes added, its figures linked from docs/."""
    text = path.read_text().strip()
    text = with_notes(text, stale_notes(text, git_precedes))
    folder = path.parent.relative_to(ROOT.parent).as_posix()  # pages link their figures by bare file name
    return re.sub(r"\]\(([^/()]+\.png)\)", rf"](../{folder}/\1)", text)


def main() -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    live = pages(ROOT, STUDIES)
    archived = pages(ARCHIVE, ARCHIVED) if ARCHIVE.is_dir() else []
    parts = [
        "# Results",
        "",
        f"Generated by `python benchmarks/report.py` on {datetime.date.today()} at commit `{commit}` "
        f"({platform.machine()}, Python {platform.python_version()}) from the pages under `benchmarks/<study>/` "
        "(`benchmarks/README.md` lists them). Each section below names the script and command that produced it, the "
        "commit it ran on, the hardware and the wall time; rerun that command to reproduce it.",
        "",
    ]
    for path in live:
        parts += [section(path), ""]
    if not (ROOT / "cost" / "gpu.md").exists():
        parts += ["## Cost on a GPU", "", "Not measured yet: `python benchmarks/cost/gpu_cost.py` runs the GPU protocol "
                  "(a Llama-7B-shaped 4-layer stack, bf16, batch 8 × 512) on a CUDA machine and writes this section.", ""]
    if not live:
        parts.append("No benchmark has been run yet.")
    if archived:
        parts += ["# Archived studies", "",
                  "Static pages of studies whose options BaRA no longer has (`benchmarks/archive/`). They are kept as they "
                  "were generated; `benchmarks/archive/README.md` says which commit produced each and how to rebuild it "
                  "there. They are linked here, not copied: they speak the language of the version that made them.", ""]
        parts += [f"- [`{path.relative_to(ROOT.parent).as_posix()}`](../{path.relative_to(ROOT.parent).as_posix()})"
                  for path in archived] + [""]
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text("\n".join(parts) + "\n")
    print(f"wrote {TARGET} from {len(live)} page(s) and {len(archived)} archived page(s)")


if __name__ == "__main__":
    main()
