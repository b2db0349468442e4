"""Run ``bara demo`` and record its table as ``benchmarks/demo/demo.md`` (for docs/RESULTS.md).

    python benchmarks/demo/demo.py
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

from bara.harness.demo import run_demo

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "_lib"))
from common import OUT, git_commit, script_command  # noqa: E402

ROOT = Path(__file__).resolve().parent  # the page


def _seconds(value: float | None) -> str:
    return "unknown (resumed from a checkpoint without a training clock)" if value is None else f"{value:.0f} s"


def main() -> None:
    out = OUT / "demo"
    start = time.perf_counter()
    summary = run_demo(out)
    wall = time.perf_counter() - start
    commit = git_commit()
    report = (out / "report.md").read_text().split("\n", 2)[2]
    text = [
        f"## Demo (`bara demo`, via `{script_command(__file__)}`)",
        "",
        f"Commit `{commit}`, {platform.machine()} with {os.cpu_count()} CPU cores, two processes with one torch thread each; "
        f"wall time {wall / 60:.1f} min (training: LoRA {_seconds(summary['train_seconds']['lora'])}, "
        f"BaRA {_seconds(summary['train_seconds']['bara'])}).",
        "",
        report.strip(),
        "",
    ]
    (ROOT / "demo.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
