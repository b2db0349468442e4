"""Tests for bara.harness.plots: every figure is written as a real, reasonably sized PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import pytest
import torch

from bara.harness.plots import ece_vs_samples, global_gate_bars, rank_histogram, reliability_diagram

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path: Path, min_side: int = 300, max_side: int = 6000) -> None:
    assert path.is_file()
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5_000
    img = mpimg.imread(path)
    h, w = img.shape[:2]
    assert min_side <= h <= max_side and min_side <= w <= max_side
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    # not a blank canvas
    assert float(img[..., :3].std()) > 0.01


def _probs_labels(n: int, k: int, temp: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g) * 2
    labels = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).squeeze(1)
    return torch.softmax(logits * temp, dim=1), labels


# --------------------------------------------------------------------------------------
# reliability_diagram
# --------------------------------------------------------------------------------------


def test_reliability_diagram_two_methods(tmp_path):
    curves = {"LoRA": _probs_labels(300, 4, 2.0, 0), "BaRA": _probs_labels(300, 4, 1.0, 1)}
    out = reliability_diagram(curves, tmp_path / "sub" / "rel.png", title="LoRA vs BaRA")
    assert out == tmp_path / "sub" / "rel.png"
    _check_png(out)


def test_reliability_diagram_single_method_binary_and_str_path(tmp_path):
    out = reliability_diagram({"LoRA": _probs_labels(50, 2, 1.5, 2)}, str(tmp_path / "rel1.png"), n_bins=10)
    assert isinstance(out, Path)
    _check_png(out)


def test_reliability_diagram_errors(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        reliability_diagram({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="pair"):
        reliability_diagram({"a": torch.ones(2, 2)}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="sum to 1"):
        reliability_diagram({"a": (torch.ones(2, 2), torch.tensor([0, 1]))}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------------------
# global_gate_bars
# --------------------------------------------------------------------------------------


def test_global_gate_bars_12x8(tmp_path):
    g = torch.Generator().manual_seed(0)
    pi = {f"model.layers.{i}.self_attn.q_proj": torch.rand(8, generator=g) ** 2 for i in range(12)}
    _check_png(global_gate_bars(pi, tmp_path / "gates.png"))


def test_global_gate_bars_ragged_ranks(tmp_path):
    pi = {"a": torch.tensor([0.9, 0.01, 0.5]), "b": torch.tensor([0.2, 0.7])}
    _check_png(global_gate_bars(pi, tmp_path / "gates.png", threshold=0.6, dead=0.1, title="ragged"), min_side=200)


def test_global_gate_bars_errors(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        global_gate_bars({}, tmp_path / "g.png")
    with pytest.raises(ValueError, match="empty"):
        global_gate_bars({"a": torch.tensor([])}, tmp_path / "g.png")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        global_gate_bars({"a": torch.tensor([0.5, 1.5])}, tmp_path / "g.png")
    with pytest.raises(ValueError, match="dead"):
        global_gate_bars({"a": torch.tensor([0.5])}, tmp_path / "g.png", threshold=0.05, dead=0.5)


# --------------------------------------------------------------------------------------
# rank_histogram
# --------------------------------------------------------------------------------------


def test_rank_histogram_ungrouped(tmp_path):
    ranks = torch.rand(200, generator=torch.Generator().manual_seed(0)) * 8
    _check_png(rank_histogram(ranks, None, tmp_path / "r.png", r_max=8))


def test_rank_histogram_two_groups(tmp_path):
    ranks = torch.rand(200, generator=torch.Generator().manual_seed(1)) * 8
    groups = ["in-domain" if i % 3 else "OOD" for i in range(200)]
    _check_png(rank_histogram(ranks, groups, tmp_path / "r.png", r_max=8, title="by domain"))


def test_rank_histogram_many_groups_small_multiples(tmp_path):
    ranks = torch.rand(140, generator=torch.Generator().manual_seed(2)) * 4
    groups = [f"class {i % 7}" for i in range(140)]
    _check_png(rank_histogram(ranks, groups, tmp_path / "r.png", r_max=4))


def test_rank_histogram_errors(tmp_path):
    p = tmp_path / "r.png"
    with pytest.raises(ValueError, match="empty"):
        rank_histogram(torch.tensor([]), None, p, r_max=8)
    with pytest.raises(ValueError, match="group labels"):
        rank_histogram(torch.tensor([1.0, 2.0]), ["a"], p, r_max=8)
    with pytest.raises(ValueError, match="r_max"):
        rank_histogram(torch.tensor([1.0, 2.0]), None, p, r_max=0)
    with pytest.raises(ValueError, match="lie in"):
        rank_histogram(torch.tensor([1.0, 9.0]), None, p, r_max=8)
    with pytest.raises(ValueError, match="NaN"):
        rank_histogram(torch.tensor([1.0, float("nan")]), None, p, r_max=8)


# --------------------------------------------------------------------------------------
# ece_vs_samples
# --------------------------------------------------------------------------------------


def test_ece_vs_samples(tmp_path):
    curves = {
        "BaRA": [(32, 0.031), (1, 0.08), (4, 0.045), (16, 0.033), (2, 0.06), (8, 0.037)],
        "MC dropout": [(1, 0.1), (4, 0.08), (32, 0.07)],
        "LoRA": [(1, 0.12)],
    }
    _check_png(ece_vs_samples(curves, tmp_path / "e.png"))


def test_ece_vs_samples_single_point(tmp_path):
    _check_png(ece_vs_samples({"LoRA": [(1, 0.1)]}, tmp_path / "e.png"))


def test_ece_vs_samples_errors(tmp_path):
    p = tmp_path / "e.png"
    with pytest.raises(ValueError, match="empty"):
        ece_vs_samples({}, p)
    with pytest.raises(ValueError, match="no points"):
        ece_vs_samples({"a": []}, p)
    with pytest.raises(ValueError, match="positive integers"):
        ece_vs_samples({"a": [(0, 0.1)]}, p)
    with pytest.raises(ValueError, match="fractions"):
        ece_vs_samples({"a": [(1, 5.0)]}, p)
    with pytest.raises(ValueError, match="pairs"):
        ece_vs_samples({"a": [1, 2]}, p)


def test_training_curves(tmp_path):
    from bara.harness.plots import training_curves

    curves = {"lora": [0.9, 0.4, 0.1, 0.04], "bara": [1.2, 0.7, 0.5, 0.33], "blob": [0.8]}
    _check_png(training_curves(curves, tmp_path / "t.png"))
    with pytest.raises(ValueError, match="empty"):
        training_curves({}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="non-empty"):
        training_curves({"a": []}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="positive"):  # a log axis cannot show 0
        training_curves({"a": [0.5, 0.0]}, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_gate_profile_plot_one_panel_per_run(tmp_path):
    from bara.harness.metrics import gate_profile
    from bara.harness.plots import gate_profile_plot

    g = torch.Generator().manual_seed(0)
    names = [f"encoder.layer.{i}.attention.self.{m}" for i in range(3) for m in ("query", "value")]
    probs = {n: torch.rand(10, 4, generator=g) for n in names}
    domains = ["sst2"] * 5 + ["boolq"] * 5
    profiles = {"run a": gate_profile(probs, domains), "run b": gate_profile({n: p**3 for n, p in probs.items()}, domains)}
    _check_png(gate_profile_plot(profiles, names, tmp_path / "gates.png"))
    with pytest.raises(ValueError, match="has 6 layers, expected 2"):
        gate_profile_plot(profiles, names[:2], tmp_path / "bad.png")
    with pytest.raises(ValueError, match="profiles is empty"):
        gate_profile_plot({}, names, tmp_path / "empty.png")


def test_grouped_bars_with_gaps_and_a_reference(tmp_path):
    from bara.harness.plots import grouped_bars

    panels = {"ECE (%)": {"sst2": {"lora": 18.8, "blob": 5.1, "bara": 11.9}, "obqa": {"lora": 6.8, "bara": 4.3}},
              "NLL / LoRA's": {"sst2": {"lora": 1.0, "blob": 0.42, "bara": 0.56}, "obqa": {"lora": 1.0, "bara": float("nan")}}}
    _check_png(grouped_bars(panels, tmp_path / "bars.png", reference={"NLL / LoRA's": 1.0}))
    with pytest.raises(ValueError, match="panels is empty"):
        grouped_bars({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="'ECE'/'sst2'/'bara' must be a finite number"):
        grouped_bars({"ECE": {"sst2": {"bara": "high"}}}, tmp_path / "x.png")
