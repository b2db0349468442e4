"""What the command line and the demo print: one rich console and the metrics table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


def print_metrics(rows: dict[str, dict[str, Any]], title: str) -> None:
    """Print one row per method: accuracy, ECE, NLL, Brier, effective rank, r_glob and evaluation time."""
    table = Table(title=title)
    for column in ("method", "ACC", "ECE ×100", "NLL", "Brier", "s̄ (rank)", "r_glob", "eval s"):
        table.add_column(column, justify="right")
    for name, m in rows.items():
        rank = m.get("joint_effective_rank")
        table.add_row(name, f"{100 * m['accuracy']:.1f}", f"{100 * m['ece']:.1f}", f"{m['nll']:.3f}", f"{m['brier']:.3f}",
                      "—" if rank is None else f"{rank:.2f} / {int(m['max_rank'])}",
                      "—" if rank is None else f"{m['r_glob']:.1f}",
                      "—" if m.get("eval_seconds") is None else f"{m['eval_seconds']:.0f}")
    console.print(table)
