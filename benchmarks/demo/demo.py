"""Run ``bara demo`` and record its table as ``benchmarks/results/demo.md`` (for docs/RESULTS.md).

    python benchmarks/demo.py
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

from bara.harness.demo import run_demo

ROOT = Path(__file__).resolve().parent


def _seconds(value: float | None) -> str:
    return "unknown (resumed from a checkpoint without a training clock)" if value is None else f"{value:.0f} s"


def main() -> None:
    out = ROOT / "out" / "demo"
    start = time.perf_counter()
    summary = run_demo(out)
    wall = time.perf_counter() - start
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    report = (out / "report.md").read_text().split("\n", 2)[2]
    text = [
        "## Demo (`bara demo`, via `python benchmarks/demo.py`)",
        "",
        f"Commit `{commit}`, {platform.machine()} with {os.cpu_count()} CPU cores, two processes with one torch thread each; "
        f"wall time {wall / 60:.1f} min (training: LoRA {_seconds(summary['train_seconds']['lora'])}, "
        f"BaRA {_seconds(summary['train_seconds']['bara'])}).",
        "",
        report.strip(),
        "",
    ]
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / "demo.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
