"""Diagnostic figures for BaRA experiments.

Every function renders one figure with matplotlib's Agg canvas, writes it as a PNG to
``path`` (parent directories are created), and returns ``path`` as a :class:`pathlib.Path`.
The pyplot state machine is never touched: figures are built from
:class:`matplotlib.figure.Figure` directly, so nothing is shown, no global backend is
switched and nothing leaks between calls.

Empty or malformed inputs raise :class:`ValueError` with a one-line message.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter
from torch import Tensor

from bara.harness.metrics import expected_calibration_error, reliability_bins

__all__ = ["ece_vs_samples", "global_gate_bars", "grouped_bars", "rank_histogram", "reliability_diagram", "training_curves"]

PathLike = str | os.PathLike[str]

_DPI = 150
_COLORS = [
    "#1f77b4",  # blue
    "#d62728",  # red
    "#2ca02c",  # green
    "#ff7f0e",  # orange
    "#9467bd",  # purple
    "#8c564b",  # brown
    "#e377c2",  # pink
    "#17becf",  # cyan
    "#7f7f7f",  # grey
    "#bcbd22",  # olive
]


def _color(i: int) -> str:
    return _COLORS[i % len(_COLORS)]


def _new_figure(width: float, height: float, layout: str | None = None) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: PathLike) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=_DPI, bbox_inches="tight")
    return out


def _to_numpy(x: Tensor | np.ndarray | Sequence[float], name: str) -> np.ndarray:
    try:
        if isinstance(x, Tensor):
            return x.detach().to("cpu", torch.float64).numpy()
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric, got {type(x).__name__}") from err


# --------------------------------------------------------------------------------------
# reliability diagram
# --------------------------------------------------------------------------------------


def reliability_diagram(
    curves: Mapping[str, tuple[Tensor, Tensor]],
    path: PathLike,
    n_bins: int = 15,
    title: str | None = None,
) -> Path:
    """Reliability diagram of one or several methods on a single figure.

    ``curves`` maps a method name to ``(probs [N, K], labels [N])``. The top panel shows,
    for each method, the accuracy per equal-width confidence bin as a translucent bar with a
    solid outline, a marker at the bin's mean confidence, and the diagonal of perfect
    calibration; the legend gives each method's ECE (in %). The bottom panel shows the
    fraction of examples per bin, so sparsely populated bins can be discounted.
    """
    if not curves:
        raise ValueError("reliability_diagram: curves is empty")
    stats = {}
    for name, pair in curves.items():
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ValueError(f"reliability_diagram: curves[{name!r}] must be a (probs, labels) pair")
        probs, labels = pair
        bins = reliability_bins(probs, labels, n_bins=n_bins)
        ece = expected_calibration_error(probs, labels, n_bins=n_bins)
        stats[name] = (bins, ece)

    fig = _new_figure(6.0, 7.0)
    grid = fig.add_gridspec(2, 1, height_ratios=[3.2, 1.0], hspace=0.08)
    ax = fig.add_subplot(grid[0])
    ax_hist = fig.add_subplot(grid[1], sharex=ax)

    ax.plot([0, 1], [0, 1], ls="--", color="0.35", lw=1.2, label="perfect calibration", zorder=1)
    n_methods = len(stats)
    for i, (name, (bins, ece)) in enumerate(stats.items()):
        color = _color(i)
        lower = bins["lower"].numpy()
        width = (bins["upper"] - bins["lower"]).numpy()
        acc = bins["accuracy"].numpy()
        conf = bins["confidence"].numpy()
        count = bins["count"].numpy()
        keep = count > 0
        frac = count / count.sum()
        fill_alpha = 0.35 if n_methods == 1 else 0.18
        ax.bar(
            lower[keep], acc[keep], width=width[keep], align="edge", color=color,
            alpha=fill_alpha, edgecolor="none", zorder=2,
        )
        ax.bar(
            lower[keep], acc[keep], width=width[keep], align="edge", fill=False,
            edgecolor=color, linewidth=1.6, zorder=3,
        )
        ax.plot(
            conf[keep], acc[keep], ls="none", marker="o", ms=4.5, color=color,
            markeredgecolor="white", markeredgewidth=0.6, zorder=4,
        )
        ax.plot([], [], color=color, lw=6, alpha=0.6, label=f"{name}  (ECE {100 * ece:.2f}%)")
        ax_hist.stairs(frac, np.append(lower, 1.0), color=color, lw=1.5, fill=n_methods == 1, alpha=0.8)
    if n_methods > 1:
        ax.plot([], [], ls="none", marker="o", color="0.3", ms=4.5, label="bin mean confidence")

    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("auto")
    ax.set_ylabel("accuracy")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=9, framealpha=0.9)
    ax.set_title(title or f"Reliability diagram ({n_bins} bins)")
    ax.tick_params(labelbottom=False)

    ax_hist.set_xlabel("confidence (top-label probability)")
    ax_hist.set_ylabel("fraction of\nexamples")
    ax_hist.set_ylim(bottom=0)
    ax_hist.grid(True, alpha=0.3)
    return _save(fig, path)


# --------------------------------------------------------------------------------------
# global gates
# --------------------------------------------------------------------------------------


def _short_layer_names(names: list[str]) -> list[str]:
    """Drop the dotted prefix shared by all names (keeping at least one component)."""
    if len(names) < 2:
        return names
    parts = [n.split(".") for n in names]
    common = 0
    for tokens in zip(*parts, strict=False):
        if all(t == tokens[0] for t in tokens):
            common += 1
        else:
            break
    common = min(common, min(len(p) for p in parts) - 1)
    short = [".".join(p[common:]) for p in parts]
    return short if len(set(short)) == len(short) else names


def global_gate_bars(
    expected_pi: Mapping[str, Tensor],
    path: PathLike,
    threshold: float = 0.5,
    dead: float = 0.05,
    title: str | None = None,
) -> Path:
    """Heatmap of the global gate means ``E_q[pi_k]`` (layers x rank-1 factors).

    ``expected_pi`` maps a layer name to a ``[r]`` tensor of values in ``[0, 1]``; layers
    may have different ``r`` (missing cells are drawn blank). Each cell is annotated with
    its value (for up to 600 cells); cells at or above ``threshold`` are framed in black,
    cells below ``dead`` are hatched. The colour bar marks both thresholds and the right
    margin lists the number of active factors (``>= threshold``) per layer.
    """
    if not expected_pi:
        raise ValueError("global_gate_bars: expected_pi is empty")
    if not 0.0 <= dead < threshold <= 1.0:
        raise ValueError(f"global_gate_bars: need 0 <= dead < threshold <= 1, got dead={dead}, threshold={threshold}")
    names = list(expected_pi)
    rows = []
    for name in names:
        v = _to_numpy(expected_pi[name], f"expected_pi[{name!r}]").reshape(-1)
        if v.size == 0:
            raise ValueError(f"global_gate_bars: expected_pi[{name!r}] is empty")
        if not np.all(np.isfinite(v)) or v.min() < -1e-6 or v.max() > 1 + 1e-6:
            raise ValueError(f"global_gate_bars: expected_pi[{name!r}] must contain finite values in [0, 1]")
        rows.append(np.clip(v, 0.0, 1.0))
    n_layers, r = len(rows), max(len(v) for v in rows)
    mat = np.full((n_layers, r), np.nan)
    for i, v in enumerate(rows):
        mat[i, : len(v)] = v
    labels = _short_layer_names(names)

    cell_w, cell_h = 0.55, 0.4
    label_w = min(0.075 * max(len(s) for s in labels), 4.0)
    width = max(5.0, 1.6 + label_w + cell_w * r + 1.6)
    height = max(3.0, 1.5 + cell_h * n_layers)
    fig = _new_figure(width, height, layout="constrained")
    ax = fig.add_subplot()

    cmap = LinearSegmentedColormap.from_list(
        "gate", ["#f7f7f7", "#c6dbef", "#6baed6", "#2171b5", "#08306b"]
    ).with_extremes(bad="white")
    im = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto",
                   interpolation="nearest")

    annotate = mat.size <= 600
    fontsize = 8 if r <= 10 else 6.5
    for i in range(n_layers):
        for k in range(r):
            val = mat[i, k]
            if np.isnan(val):
                continue
            if val < dead:
                ax.add_patch(_rect(k, i, hatch="////", edgecolor="#b2182b", lw=0.0))
            if val >= threshold:
                ax.add_patch(_rect(k, i, hatch=None, edgecolor="black", lw=1.4, inset=0.06))
            if annotate:
                ax.text(k, i, f"{val:.2f}", ha="center", va="center", fontsize=fontsize,
                        color="white" if val > 0.6 else "black")

    ax.set_xticks(range(r))
    ax.set_xticklabels([str(k) for k in range(r)])
    ax.set_yticks(range(n_layers))
    ax.set_yticklabels(labels, fontsize=8 if n_layers <= 30 else 6)
    ax.set_xlabel("rank-1 factor k")
    ax.set_ylabel("layer")
    ax.set_xticks(np.arange(-0.5, r, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, n_layers, 1), minor=True)
    ax.grid(which="minor", color="white", lw=1.0)
    ax.tick_params(which="minor", length=0)

    active = np.nansum(mat >= threshold, axis=1).astype(int)
    sizes = [len(v) for v in rows]
    ax2 = ax.secondary_yaxis("right")
    ax2.set_yticks(range(n_layers))
    ax2.set_yticklabels([f"{a}/{s}" for a, s in zip(active, sizes, strict=True)],
                        fontsize=8 if n_layers <= 30 else 6)
    ax2.set_ylabel(f"active (E[π] ≥ {threshold:g})")

    cbar = fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02, aspect=30)
    cbar.set_label("E_q[π_k]")
    cbar.ax.axhline(threshold, color="black", lw=1.5)
    cbar.ax.axhline(dead, color="#b2182b", lw=1.5)

    total_active = int(active.sum())
    total = int(sum(sizes))
    n_dead = int(np.nansum(mat < dead))
    ax.set_title(title or f"Global gates E_q[π_k] — {total_active}/{total} active, {n_dead} dead")
    handles = [
        Patch(facecolor="none", edgecolor="black", lw=1.4, label=f"active (≥ {threshold:g})"),
        Patch(facecolor="none", edgecolor="#b2182b", hatch="////", label=f"dead (< {dead:g})"),
    ]
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.09 - 0.25 / max(height, 1)),
              ncol=2, fontsize=8, frameon=False)
    return _save(fig, path)


def _rect(k: int, i: int, hatch: str | None, edgecolor: str, lw: float, inset: float = 0.0) -> Rectangle:
    """Unfilled square around heatmap cell (row ``i``, column ``k``), shrunk by ``inset``."""
    return Rectangle(
        (k - 0.5 + inset, i - 0.5 + inset), 1 - 2 * inset, 1 - 2 * inset, fill=False,
        hatch=hatch, edgecolor=edgecolor, lw=lw,
    )


# --------------------------------------------------------------------------------------
# effective-rank histogram
# --------------------------------------------------------------------------------------

_MAX_OVERLAID_GROUPS = 5


def rank_histogram(
    ranks: Tensor,
    groups: Sequence[str] | None,
    path: PathLike,
    r_max: int,
    title: str | None = None,
) -> Path:
    """Histogram of per-instance effective rank ``s̄(x)`` (continuous, in ``[0, r_max]``).

    With ``groups`` (one label per instance, e.g. class or domain) each group gets its own
    histogram, normalised to the fraction of that group, with its mean as a dashed line and
    in the legend. Up to five groups are overlaid on one axis; more groups are split into
    small multiples, each drawn over the pooled distribution in grey.
    """
    x = _to_numpy(ranks, "ranks").reshape(-1) if isinstance(ranks, Tensor | np.ndarray | list | tuple) else None
    if x is None:
        raise ValueError(f"rank_histogram: ranks must be a tensor, got {type(ranks).__name__}")
    if x.size == 0:
        raise ValueError("rank_histogram: ranks is empty")
    if isinstance(r_max, bool) or not isinstance(r_max, int | np.integer) or r_max < 1:
        raise ValueError(f"rank_histogram: r_max must be a positive integer, got {r_max!r}")
    if not np.all(np.isfinite(x)):
        raise ValueError("rank_histogram: ranks contains NaN or infinite values")
    if x.min() < -1e-6 or x.max() > r_max + 1e-6:
        raise ValueError(f"rank_histogram: ranks must lie in [0, r_max={r_max}], got [{x.min():.3g}, {x.max():.3g}]")
    if groups is not None:
        groups = [str(g) for g in groups]
        if len(groups) != x.size:
            raise ValueError(f"rank_histogram: got {len(groups)} group labels for {x.size} ranks")
        if not groups:
            raise ValueError("rank_histogram: groups is empty")

    per_unit = max(1, min(8, 40 // r_max))
    edges = np.linspace(0.0, float(r_max), r_max * per_unit + 1)
    x = np.clip(x, 0.0, float(r_max))

    def _finish(ax, show_x: bool = True, show_y: bool = True, ylabel: str = "") -> None:
        ax.set_xlim(0, r_max)
        ax.set_xticks(range(0, r_max + 1, max(1, r_max // 8)))
        ax.grid(True, alpha=0.3)
        if show_x:
            ax.set_xlabel("effective rank s̄(x) (mean over layers)")
        if show_y:
            ax.set_ylabel(ylabel)

    default_title = f"Per-instance effective rank (r_max = {r_max}, N = {x.size})"
    if groups is None:
        fig = _new_figure(6.5, 4.2)
        ax = fig.add_subplot()
        ax.hist(x, bins=edges, color=_color(0), alpha=0.75, edgecolor="white", linewidth=0.5)
        mean = float(x.mean())
        ax.axvline(mean, color="black", ls="--", lw=1.3, label=f"mean {mean:.2f}")
        ax.legend(fontsize=9)
        _finish(ax, ylabel="number of instances")
        ax.set_title(title or default_title)
        return _save(fig, path)

    order = list(dict.fromkeys(groups))
    garr = np.asarray(groups, dtype=object)
    members = {g: x[garr == g] for g in order}

    if len(order) <= _MAX_OVERLAID_GROUPS:
        fig = _new_figure(6.5, 4.2)
        ax = fig.add_subplot()
        for i, g in enumerate(order):
            v = members[g]
            w = np.full(v.shape, 1.0 / v.size)
            c = _color(i)
            ax.hist(v, bins=edges, weights=w, color=c, alpha=0.25, edgecolor="none")
            ax.hist(v, bins=edges, weights=w, histtype="step", color=c, lw=1.6,
                    label=f"{g}  (n={v.size}, mean {v.mean():.2f})")
            ax.axvline(float(v.mean()), color=c, ls="--", lw=1.3)
        ax.legend(fontsize=9, title="group", title_fontsize=9, loc="best")
        _finish(ax, ylabel="fraction of group")
        ax.set_title(title or default_title)
        return _save(fig, path)

    ncols = 4
    nrows = math.ceil(len(order) / ncols)
    fig = _new_figure(3.2 * ncols, 2.4 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    pooled_w = np.full(x.shape, 1.0 / x.size)
    for j, ax in enumerate(axes.flat):
        if j >= len(order):
            ax.set_visible(False)
            continue
        g = order[j]
        v = members[g]
        c = _color(j)
        ax.hist(x, bins=edges, weights=pooled_w, color="0.8", edgecolor="none")
        ax.hist(v, bins=edges, weights=np.full(v.shape, 1.0 / v.size), histtype="step", color=c, lw=1.6)
        ax.axvline(float(v.mean()), color=c, ls="--", lw=1.2)
        ax.set_title(f"{g}  (n={v.size}, mean {v.mean():.2f})", fontsize=9)
        col = j % ncols
        last_in_col = j + ncols >= len(order)
        _finish(ax, show_x=last_in_col, show_y=col == 0, ylabel="fraction of group")
    handles = [Patch(color="0.8", label="all instances"),
               Line2D([], [], color="0.2", lw=1.6, label="group"),
               Line2D([], [], color="0.2", ls="--", lw=1.2, label="group mean")]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(title or default_title)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return _save(fig, path)


# --------------------------------------------------------------------------------------
# ECE vs number of MC samples
# --------------------------------------------------------------------------------------


def ece_vs_samples(
    curves: Mapping[str, Sequence[tuple[int, float]]],
    path: PathLike,
    title: str | None = None,
) -> Path:
    """ECE as a function of the number of Monte-Carlo samples (log-scaled x axis).

    ``curves`` maps a method name to ``[(n_samples, ece), ...]`` with ECE as a fraction
    (plotted in %). Points are sorted by sample count. A method with a single point
    (e.g. a deterministic LoRA baseline) is drawn as a marker plus a dotted horizontal
    reference line across the plot.
    """
    if not curves:
        raise ValueError("ece_vs_samples: curves is empty")
    parsed: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, pts in curves.items():
        pts = list(pts)
        if not pts:
            raise ValueError(f"ece_vs_samples: curves[{name!r}] has no points")
        try:
            s = np.asarray([p[0] for p in pts], dtype=np.float64)
            e = np.asarray([p[1] for p in pts], dtype=np.float64)
        except (TypeError, ValueError, IndexError) as err:
            raise ValueError(f"ece_vs_samples: curves[{name!r}] must be a list of (n_samples, ece) pairs") from err
        if np.any(s < 1) or np.any(s != np.round(s)):
            raise ValueError(f"ece_vs_samples: curves[{name!r}] sample counts must be positive integers")
        if not np.all(np.isfinite(e)) or np.any(e < 0) or np.any(e > 1):
            raise ValueError(f"ece_vs_samples: curves[{name!r}] ECE values must be fractions in [0, 1]")
        order = np.argsort(s, kind="stable")
        parsed[name] = (s[order], e[order])

    all_s = np.unique(np.concatenate([s for s, _ in parsed.values()]))
    fig = _new_figure(6.5, 4.2)
    ax = fig.add_subplot()
    for i, (name, (s, e)) in enumerate(parsed.items()):
        c = _color(i)
        if s.size == 1:
            ax.axhline(100 * e[0], color=c, ls=":", lw=1.4)
            ax.plot(s, 100 * e, marker="s", ms=6, color=c, ls=":", lw=1.4,
                    label=f"{name}  ({100 * e[0]:.2f}%)")
        else:
            ax.plot(s, 100 * e, marker="o", ms=5, color=c, lw=1.8,
                    label=f"{name}  ({100 * e[-1]:.2f}% at S={int(s[-1])})")
    ax.set_xscale("log")
    lo, hi = all_s.min(), all_s.max()
    if lo == hi:
        ax.set_xlim(lo / 2, hi * 2)
    else:
        ax.set_xlim(lo / 1.3, hi * 1.3)
    ticks = all_s if all_s.size <= 12 else np.unique(np.round(np.geomspace(lo, hi, 10)))
    ax.set_xticks(ticks)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{int(round(v))}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(bottom=0)
    ax.set_xlabel("number of MC samples S (log scale)")
    ax.set_ylabel("ECE (%)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=9)
    ax.set_title(title or "Calibration vs number of MC samples")
    return _save(fig, path)


# --------------------------------------------------------------------------------------
# training curves
# --------------------------------------------------------------------------------------

def training_curves(
    curves: Mapping[str, Sequence[float]],
    path: PathLike,
    ylabel: str = "training NLL",
    title: str | None = None,
) -> Path:
    """One value per epoch for each method (e.g. the mean training NLL), epochs 1, 2, … on x.

    The y axis is logarithmic, so that the approach to 0 (an adapter fitting its training set,
    the regime where overconfidence appears) stays readable next to underfit methods.
    """
    if not curves:
        raise ValueError("training_curves: curves is empty")
    parsed = {name: _to_numpy(list(values), f"curves[{name!r}]") for name, values in curves.items()}
    for name, values in parsed.items():
        if values.ndim != 1 or values.size == 0:
            raise ValueError(f"training_curves: curves[{name!r}] must be a non-empty list of numbers")
        if not np.all(np.isfinite(values)) or np.any(values <= 0):
            raise ValueError(f"training_curves: curves[{name!r}] values must be positive and finite (log axis)")
    fig = _new_figure(6.5, 4.2)
    ax = fig.add_subplot()
    for i, (name, values) in enumerate(parsed.items()):
        epochs = np.arange(1, values.size + 1)
        ax.plot(epochs, values, marker="o", ms=4, color=_color(i), lw=1.8, label=f"{name}  ({values[-1]:.3f} last)")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{ylabel} (log scale)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=9)
    ax.set_title(title or "Training curves")
    return _save(fig, path)


# --------------------------------------------------------------------------------------
# methods side by side, per task
# --------------------------------------------------------------------------------------


def grouped_bars(
    panels: Mapping[str, Mapping[str, Mapping[str, float]]],
    path: PathLike,
    title: str | None = None,
    reference: Mapping[str, float] | None = None,
) -> Path:
    """One panel per metric: for each group (task) on x, one bar per method.

    ``panels`` maps a panel's y label to ``{group: {method: value}}``; a method missing from a group
    leaves a gap, so the same method keeps the same colour and slot everywhere. ``reference`` maps a
    panel's label to a horizontal line (e.g. 1.0 for a ratio to LoRA). NaN values are skipped.

    Example:
        >>> grouped_bars({"ECE (%)": {"sst2": {"lora": 18.8, "bara": 11.9}}}, "ece.png")  # doctest: +SKIP
    """
    if not panels:
        raise ValueError("grouped_bars: panels is empty")
    methods: list[str] = []
    for label, groups in panels.items():
        if not groups:
            raise ValueError(f"grouped_bars: panel {label!r} has no groups")
        for group, values in groups.items():
            for method, value in values.items():
                if not isinstance(value, (int, float)) or math.isinf(value):
                    raise ValueError(f"grouped_bars: {label!r}/{group!r}/{method!r} must be a finite number, got {value!r}")
                if method not in methods:
                    methods.append(method)
    n_groups = max(len(groups) for groups in panels.values())
    fig = _new_figure(max(6.5, 0.22 * len(methods) * n_groups + 2.5), 2.9 * len(panels), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    width = 0.8 / len(methods)
    for ax, (label, groups) in zip(axes, panels.items()):
        x = np.arange(len(groups))
        for i, method in enumerate(methods):
            values = np.asarray([groups[g].get(method, math.nan) for g in groups], dtype=np.float64)
            shown = ~np.isnan(values)
            ax.bar((x - 0.4 + (i + 0.5) * width)[shown], values[shown], width * 0.92, color=_color(i),
                   edgecolor="black" if method == "bara" else "none", linewidth=0.8)
        if reference and label in reference:
            ax.axhline(reference[label], color="black", lw=0.9, ls="--")
        ax.set_xlim(-0.5, len(groups) - 0.5)  # a gap at either end keeps the slots of the other panels
        ax.set_xticks(x)
        ax.set_xticklabels(list(groups), fontsize=9)
        ax.set_ylabel(label, fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    handles = [Patch(facecolor=_color(i), edgecolor="black" if m == "bara" else "none", label=m) for i, m in enumerate(methods)]
    fig.legend(handles=handles, fontsize=7, ncol=min(len(methods), 6), loc="outside lower center")
    fig.suptitle(title or "Methods side by side", fontsize=10)
    return _save(fig, path)


# --------------------------------------------------------------------------------------
# gate profile by domain
# --------------------------------------------------------------------------------------


def gate_profile_plot(
    profiles: Mapping[str, Mapping[str, Mapping[str, Any]]],
    layer_names: Sequence[str],
    path: PathLike,
    title: str | None = None,
) -> Path:
    """Per layer and domain, the mean keep-probability E_q[z] (solid) and the gate entropy (dashed).

    ``profiles`` maps a run label to the output of ``bara.harness.metrics.gate_profile`` (domain -> stats);
    one panel per run. A domain whose gates sit near 0 or 1 has low entropy: its Monte-Carlo passes
    all use the same factors, so its predictions get no averaging from the gates.
    """
    if not profiles:
        raise ValueError("gate_profile_plot: profiles is empty")
    short = _short_layer_names(list(layer_names))
    fig = _new_figure(max(6.0, 0.45 * len(short) + 2), 2.6 * len(profiles), layout="constrained")
    axes = fig.subplots(len(profiles), 1, squeeze=False)[:, 0]
    x = np.arange(len(short))
    for ax, (label, by_domain) in zip(axes, profiles.items()):
        for i, (domain, stats) in enumerate(sorted(by_domain.items())):
            keep, ent = np.asarray(stats["keep_by_layer"]), np.asarray(stats["entropy_by_layer"])
            if keep.size != len(short):
                raise ValueError(f"gate_profile_plot: {label!r}/{domain!r} has {keep.size} layers, expected {len(short)}")
            ax.plot(x, keep, marker="o", ms=4, color=_color(i), lw=1.8, label=f"{domain}: keep E[z]")
            ax.plot(x, ent / math.log(2), marker="x", ms=4, color=_color(i), lw=1.2, ls="--",
                    label=f"{domain}: entropy / ln 2")
        ax.set_ylim(0, 1.02)
        ax.set_xticks(x)
        ax.set_xticklabels(short, rotation=60, ha="right", fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(title or "Gate keep-probability and randomness by domain and layer", fontsize=10)
    return _save(fig, path)


# --------------------------------------------------------------------------------------
# rank per layer (AdaLoRA's final ranks, BaRA's r_glob per layer)
# --------------------------------------------------------------------------------------


def layer_ranks(
    ranks: Mapping[str, float] | Mapping[str, Mapping[str, float]],
    path: PathLike,
    r_max: float | None = None,
    reference: float | None = None,
    title: str | None = None,
    ylabel: str = "rank",
) -> Path:
    """Bar chart of one rank per layer, for one run or several side by side.

    ``ranks`` maps a layer name to its rank (one run), or a run label to such a mapping (grouped
    bars, one colour per run; a layer a run lacks leaves a gap). Layer names are shortened to the
    part after their common dotted prefix. ``r_max`` (e.g. AdaLoRA's ``init_r``, BaRA's ``r``)
    draws the ceiling as a dotted line and fixes the y range; ``reference`` (e.g. AdaLoRA's
    ``target_r``, the mean rank its budget ends at) draws a dashed line. Bars are annotated with
    their values when there are at most 60. The title gives each run's mean rank.

    Example:
        >>> from bara.harness.methods.adalora import final_ranks
        >>> layer_ranks(final_ranks(model), "ranks.png", r_max=12, reference=8)       # doctest: +SKIP
        >>> from bara.objective import expected_pi                                       # BaRA's r_glob per layer
        >>> r_glob = {n: float((pi > 0.5).sum()) for n, pi in expected_pi(bara_model).items()}  # doctest: +SKIP
        >>> layer_ranks({"adalora": final_ranks(model), "bara": r_glob}, "both.png")   # doctest: +SKIP
    """
    if not ranks:
        raise ValueError("layer_ranks: ranks is empty")
    nested = [isinstance(v, Mapping) for v in ranks.values()]
    if all(nested):
        runs = {str(label): dict(values) for label, values in ranks.items()}
    elif not any(nested):
        runs = {"": dict(ranks)}
    else:
        raise ValueError("layer_ranks: ranks must map layers to numbers, or runs to such mappings, not a mix")
    layers: list[str] = []
    for label, values in runs.items():
        if not values:
            raise ValueError(f"layer_ranks: run {label!r} has no layers")
        for layer, value in values.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"layer_ranks: {label + '/' if label else ''}{layer!r} must be a finite rank >= 0, "
                                 f"got {value!r}")
            if layer not in layers:
                layers.append(layer)
    for name, value in (("r_max", r_max), ("reference", reference)):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"layer_ranks: {name} must be a finite number >= 0, got {value!r}")

    short = _short_layer_names(layers)
    n_runs = len(runs)
    width = 0.8 / n_runs
    fig = _new_figure(max(5.0, 0.3 * len(layers) * max(1.0, 0.6 * n_runs) + 2.0), 3.6, layout="constrained")
    ax = fig.add_subplot()
    x = np.arange(len(layers))
    annotate = len(layers) * n_runs <= 60
    for i, (label, values) in enumerate(runs.items()):
        heights = np.asarray([float(values.get(layer, math.nan)) for layer in layers], dtype=np.float64)
        shown = ~np.isnan(heights)
        xs = (x - 0.4 + (i + 0.5) * width)[shown]
        ax.bar(xs, heights[shown], width * 0.92, color=_color(i), label=label or None)
        if annotate:
            for xi, h in zip(xs, heights[shown]):
                ax.text(xi, h, f"{h:g}", ha="center", va="bottom", fontsize=6.5)
    top = max(float(v) for values in runs.values() for v in values.values())
    if r_max is not None:
        ax.axhline(r_max, color="black", lw=0.9, ls=":", label=f"max {r_max:g}")
        top = max(top, float(r_max))
    if reference is not None:
        ax.axhline(reference, color="black", lw=0.9, ls="--", label=f"target {reference:g}")
        top = max(top, float(reference))
    ax.set_ylim(0, max(1.0, top) * 1.12)
    ax.set_xlim(-0.5, len(layers) - 0.5)
    ax.set_xticks(x)
    ax.set_xticklabels(short, rotation=60 if len(layers) > 6 else 0, ha="right" if len(layers) > 6 else "center",
                       fontsize=7 if len(layers) > 24 else 8)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    if n_runs > 1 or r_max is not None or reference is not None:
        ax.legend(fontsize=7, ncol=min(4, n_runs + 2), loc="upper right")
    means = ", ".join(f"{label + ' ' if label else ''}mean {np.mean(list(v.values())):.2f}" for label, v in runs.items())
    ax.set_title(title or f"{ylabel.capitalize()} per layer ({means})", fontsize=10)
    return _save(fig, path)


__all__ += ["layer_ranks"]


def adalora_ranks(report: Mapping[str, Any] | PathLike, path: PathLike, title: str | None = None) -> Path:
    """`layer_ranks` of an AdaLoRA adapter: its final rank per layer against ``init_r`` (dotted) and
    ``target_r`` (dashed).

    ``report`` is what ``bara.harness.methods.adalora.rank_report`` returns, or the adapter folder
    (or its ``adalora_ranks.json``) that ``AdaLoRA.save`` wrote.

    Example:
        >>> adalora_ranks("runs/sst2/adalora/adapter", "runs/sst2/adalora/ranks.png")  # doctest: +SKIP
    """
    import json

    if not isinstance(report, Mapping):
        file = Path(report)
        file = file / "adalora_ranks.json" if file.is_dir() else file
        try:
            report = json.loads(file.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"adalora_ranks: cannot read {file} ({err})") from err
    if not isinstance(report.get("ranks"), Mapping):
        raise ValueError("adalora_ranks: the report has no 'ranks' mapping (layer -> rank)")
    return layer_ranks(report["ranks"], path, r_max=report.get("init_r"), reference=report.get("target_r"),
                       title=title or (f"AdaLoRA final rank per layer (mean {report.get('mean_rank', 0):.2f}, "
                                       f"init_r {report.get('init_r')}, target_r {report.get('target_r')})"))


__all__ += ["adalora_ranks"]
