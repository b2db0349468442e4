"""Every closed form against a Monte-Carlo estimate (10^6 samples, within 3 standard errors)."""

from __future__ import annotations

import math

import pytest
import torch

import bara
from bara.gates import (
    GlobalGate,
    hard_bernoulli,
    kl_bernoulli,
    kl_kumaraswamy_beta,
    kumaraswamy_expected_log,
    kumaraswamy_log_sample,
    kumaraswamy_mean,
    relaxed_bernoulli,
)

N = 1_000_000


def kuma_samples(a: float, b: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(N, generator=g, dtype=torch.float64)
    log_pi, _ = kumaraswamy_log_sample(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), u)
    return log_pi


def within_3se(samples: torch.Tensor, value: float) -> None:
    mean, se = samples.mean().item(), samples.std().item() / math.sqrt(samples.numel())
    assert abs(mean - value) <= 3 * se, f"MC {mean:.5f} ± {se:.5f} vs closed form {value:.5f}"


@pytest.mark.parametrize("a,b", [(1.7, 2.3), (9.0, 1.0), (0.5, 0.8), (3.0, 1.2)])
def test_kumaraswamy_mean_and_expected_log(a, b):
    log_pi = kuma_samples(a, b)
    within_3se(log_pi.exp(), kumaraswamy_mean(torch.tensor(a), torch.tensor(b)).item())
    within_3se(log_pi, kumaraswamy_expected_log(torch.tensor(a), torch.tensor(b)).item())


def test_reference_values_of_design():
    kl = kl_kumaraswamy_beta(torch.tensor(3.0), torch.tensor(1.2), 0.625).item()
    assert kl == pytest.approx(0.6964, abs=1e-4)
    assert kumaraswamy_mean(torch.tensor(1.7), torch.tensor(2.3)).item() == pytest.approx(0.4584, abs=1e-4)


@pytest.mark.parametrize("a,b,alpha0", [(3.0, 1.2, 0.625), (9.0, 1.0, 1 / 3), (0.8, 2.5, 1.0), (1.5, 0.7, 0.2)])
def test_kumaraswamy_beta_kl_matches_monte_carlo(a, b, alpha0):
    log_pi = kuma_samples(a, b, seed=1)
    log_1m_pia = torch.log(-torch.expm1(a * log_pi))
    log_q = math.log(a * b) + (a - 1) * log_pi + (b - 1) * log_1m_pia
    log_p = math.log(alpha0) + (alpha0 - 1) * log_pi  # Beta(alpha0, 1) density
    within_3se(log_q - log_p, kl_kumaraswamy_beta(torch.tensor(a), torch.tensor(b), alpha0).item())


def test_ibp_expected_pi_is_product_of_sticks():
    torch.manual_seed(0)  # a 3-standard-error bound on four sticks: unseeded, it failed now and then
    gate = GlobalGate(4, alpha0=1.0, a_init=2.0, b_init=1.5, prior="ibp")
    with torch.no_grad():
        gate.log_a.copy_(torch.tensor([1.0, 2.0, 3.0, 0.5]).log())
        draws = torch.stack([gate.sample_log_pi()[0].exp() for _ in range(20000)])
    expected = gate.expected_pi().detach()
    se = draws.std(0) / math.sqrt(draws.shape[0])
    assert torch.all((draws.mean(0) - expected).abs() <= 3 * se + 1e-6)
    assert torch.all(expected[1:] <= expected[:-1]), "stick-breaking usage must be non-increasing"


def test_bernoulli_kl_matches_torch_and_sampling():
    p = torch.tensor([0.05, 0.3, 0.5, 0.97], dtype=torch.float64)
    reference = torch.distributions.kl_divergence(torch.distributions.Bernoulli(p), torch.distributions.Bernoulli(torch.full_like(p, 0.2)))
    assert torch.allclose(kl_bernoulli(p, 0.2), reference, atol=1e-8)
    assert kl_bernoulli(torch.tensor([0.4]), 0.4).abs().item() < 1e-7


def test_bernoulli_kl_stays_finite_in_half_precision_and_in_a_bf16_model():
    logits = torch.tensor([3.0, 7.0, 12.0, -8.0])
    for dtype in (torch.bfloat16, torch.float16):
        kl = kl_bernoulli(torch.sigmoid(logits.to(dtype)), 0.5)
        assert torch.isfinite(kl).all()
        torch.testing.assert_close(kl, kl_bernoulli(torch.sigmoid(logits.to(dtype)).float(), 0.5))
    model = bara.get_bara_model(torch.nn.Sequential(torch.nn.Linear(8, 8)),
                                bara.BaRAConfig(r=4, target_modules=["0"], local_bias_init=7.0)).to(torch.bfloat16)
    model.train()(torch.randn(2, 3, 8, dtype=torch.bfloat16))
    assert torch.isfinite(bara.kl_divergence(model, num_examples=100))


@pytest.mark.parametrize("temperature", [0.3, 1.0, 3.0])
def test_binary_concrete_keeps_the_bernoulli_probability(temperature):
    # P(relaxed sample > 1/2) = p for every temperature: the relaxation is centred on Bern(p).
    torch.manual_seed(0)
    p = torch.tensor([0.1, 0.5, 0.8])
    logits = torch.logit(p).expand(N, 3)
    above = (relaxed_bernoulli(logits, temperature) > 0.5).double()
    for k in range(3):
        within_3se(above[:, k], p[k].item())
    hard = hard_bernoulli(p.expand(N, 3).double())
    for k in range(3):
        within_3se(hard[:, k], p[k].item())


def test_expected_pi_cached_for_prediction_follows_every_parameter_change():
    gate = GlobalGate(4, alpha0=1 / 3).eval()
    with torch.no_grad():
        first = gate.expected_pi()
        assert gate.expected_pi() is first  # no autograd: computed once
    opt = torch.optim.SGD(gate.parameters(), lr=1.0)
    gate.kl().backward()
    opt.step()  # an in-place update
    with torch.no_grad():
        stepped = gate.expected_pi()
        torch.testing.assert_close(stepped, kumaraswamy_mean(gate.a, gate.b))
        assert not torch.equal(stepped, first)
        gate.load_state_dict({"log_a": torch.zeros(4), "log_b": torch.ones(4)})
        torch.testing.assert_close(gate.expected_pi(), kumaraswamy_mean(gate.a, gate.b))
        gate.double()  # moved to new tensors
        cached = gate.expected_pi()
        assert cached.dtype == torch.float64
        gate.eval()  # already in eval: `predict` calls it on every call, and the cache stays
        assert gate.expected_pi() is cached
        gate.train()
        gate.eval()  # a round of training mode drops it
        assert gate.expected_pi() is not cached
    assert gate.expected_pi().requires_grad  # with autograd: always recomputed, differentiable


def test_expected_pi_in_training_mode_sees_every_optimizer_step():
    """A model left in training mode (as after ``Trainer.train()``) reports the current E π, not a
    value cached before the optimizer moved the gates."""
    gate = GlobalGate(4, alpha0=1 / 3, a_init=9.0).train()
    with torch.no_grad():
        before = gate.expected_pi().clone()
    opt = torch.optim.Adam(gate.parameters(), lr=0.3, foreach=True)
    for _ in range(3):
        opt.zero_grad()
        gate.kl().backward()
        opt.step()
    with torch.no_grad():
        after = gate.expected_pi()
        torch.testing.assert_close(after, kumaraswamy_mean(gate.a, gate.b))
    assert (after - before).abs().min() > 1e-3


def test_log_parameterisation_lets_a_saturated_gate_close_in_a_normal_budget():
    """From E π = 0.9 (a = 9), a few hundred Adam steps at a gate learning rate of 0.05 bring an
    unneeded factor, pulled only by a sparse prior, below the pruning threshold."""
    torch.manual_seed(0)
    gate = GlobalGate(2, alpha0=0.02, a_init=9.0)
    opt = torch.optim.Adam(gate.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        gate.kl().backward()
        opt.step()
    assert gate.expected_pi().max().item() < 0.05


@pytest.mark.parametrize("prior", ["beta", "ibp"])
def test_expected_log_pi_matches_monte_carlo(prior):
    torch.manual_seed(0)
    gate = GlobalGate(3, alpha0=1.0, a_init=2.0, b_init=1.5, prior=prior)
    with torch.no_grad():
        gate.log_a.copy_(torch.tensor([0.7, 2.0, 4.0]).log())
        draws = torch.stack([gate.sample_log_pi()[0] for _ in range(50000)])
        expected = gate.expected_log_pi()
    se = draws.std(0) / math.sqrt(draws.shape[0])
    assert torch.all((draws.mean(0) - expected).abs() <= 3 * se + 1e-6)


@pytest.mark.parametrize("prior", ["beta", "ibp"])
def test_hierarchical_local_kl_is_unbiased_for_the_expected_bernoulli_kl(prior):
    """``expected_local_kl`` with one reparameterised draw of log(1 − π) per call averages to
    E_q(π) KL(Bern(q) ‖ Bern(π)), computed here by brute force over many draws of π."""
    from bara.gates import expected_local_kl

    torch.manual_seed(1)
    gate = GlobalGate(3, alpha0=1.0, a_init=1.5, b_init=2.0, prior=prior)
    q = torch.tensor([0.2, 0.6, 0.95])
    with torch.no_grad():
        log_pi, _ = gate.sample_log_pi(rows=200000)
        brute = q * (q.log() - log_pi) + (1 - q) * (torch.log1p(-q) - torch.log(-torch.expm1(log_pi)))
        _, log_1m_pi = gate.sample_log_pi(rows=200000)  # independent draws
        estimates = expected_local_kl(q, gate.expected_log_pi(), log_1m_pi)
    se = (estimates.std(0) + brute.std(0)) / math.sqrt(200000)
    assert torch.all((estimates.mean(0) - brute.mean(0)).abs() <= 3 * se)


def test_hierarchical_local_kl_trains_the_global_gate_towards_the_inputs_usage():
    """With the layer's usage as the local prior, local gates that are mostly off pull E π down and
    local gates that are on pull it up: the global gate learns from how the inputs use the factor."""
    from bara.gates import expected_local_kl

    torch.manual_seed(0)
    gate = GlobalGate(2, alpha0=1.0, a_init=1.0, b_init=1.0)  # E π = 0.5, the prior Beta(1, 1)
    opt = torch.optim.Adam(gate.parameters(), lr=0.05)
    q = torch.tensor([[0.05, 0.95]]).expand(64, 2)  # factor 0 used by few inputs, factor 1 by most
    for _ in range(300):
        opt.zero_grad()
        _, log_1m_pi = gate.sample_log_pi()
        loss = expected_local_kl(q, gate.expected_log_pi(), log_1m_pi).sum(-1).mean() + gate.kl() / 64
        loss.backward()
        opt.step()
    pi = gate.expected_pi().detach()
    assert pi[0] < 0.25 and pi[1] > 0.75
