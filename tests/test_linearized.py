"""The linearised-gate predictive (`bara.experimental.linearized`): where the logits are linear in the
gates its variance is the exact variance over the sampled gates, and its probabilities are a softmax."""

from __future__ import annotations

import types

import torch
from torch import nn

import bara
from bara.experimental.linearized import logit_variance, probit_softmax


class Tiny(nn.Module):
    """Logits linear in the adapted layer's output: mean over tokens, then a linear head."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x, attention_mask=None):
        return types.SimpleNamespace(logits=self.head(self.proj(x).mean(1)))


def _model() -> bara.BaRAModel:
    torch.manual_seed(0)
    model = bara.get_bara_model(Tiny(), bara.BaRAConfig(r=4, target_modules=["proj"])).eval()
    (_, layer), = model.bara_layers()
    with torch.no_grad():
        layer.lora_B.weight.normal_()
        layer.local_gate.weight.normal_(std=0.5)
        layer.local_gate.bias.copy_(torch.tensor([2.0, 0.0, -1.0, 1.0]))
        layer.global_gate.log_a.copy_(torch.log(torch.tensor([9.0, 2.0, 1.0, 0.5])))
    return model


def test_where_the_logits_are_linear_in_the_gates_the_variance_is_the_sampled_one():
    model = _model()
    x = torch.randn(5, 7, 6)
    with bara.gate_mode(model, "mean"):
        mean, diff_var = logit_variance(model, {"x": x})
        expected_mean = model(x=x).logits
    assert torch.allclose(mean, expected_mean, atol=1e-6)
    draws = 20_000
    torch.manual_seed(1)
    with bara.gate_mode(model, "sample"), torch.no_grad():
        sampled = model(x=x.repeat(draws, 1, 1)).logits.view(draws, 5, 3)
    assert torch.allclose(sampled.mean(0), mean, atol=0.05)
    diffs = sampled.unsqueeze(-1) - sampled.unsqueeze(-2)  # [draws, n, C, C]
    off_diagonal = ~torch.eye(3, dtype=torch.bool).expand(5, 3, 3)
    assert (diff_var[off_diagonal] > 1e-3).all() and (diff_var[~off_diagonal] == 0).all()
    assert torch.allclose(diff_var, diffs.var(0), rtol=0.08, atol=1e-3), (diff_var, diffs.var(0))
    assert all(p.grad is None for p in model.parameters())  # nothing accumulated into .grad


def test_probit_softmax_is_a_distribution_that_flattens_with_the_variance():
    mean = torch.tensor([[3.0, 0.0, -1.0]])
    flat = probit_softmax(mean, torch.full((1, 3, 3), 50.0))
    assert torch.allclose(flat.sum(-1), torch.ones(1))
    sharp = probit_softmax(mean, torch.zeros(1, 3, 3))
    assert torch.allclose(sharp, torch.softmax(mean, -1), atol=1e-6)  # no variance: the softmax itself
    assert flat[0, 0] < sharp[0, 0]
