"""The gates and their distributions.

* Global gate (one per adapted layer): the usage ``π_k ∈ (0, 1)`` of each factor k has the prior
  ``Beta(α0, 1)`` and the variational posterior ``q(π_k) = Kumaraswamy(a_k, b_k)``. With the
  stick-breaking prior (``prior="ibp"``) the Kumaraswamy variables are sticks ``ν_j`` and
  ``π_k = Π_{j≤k} ν_j``: later factors can only be used less than earlier ones.
* Local gate (one per input): ``q(l_nk | x_n) = Bernoulli(σ(ℓ_k(x_n)))`` with
  ``ℓ(x) = W_g · LN(x̄) + b_g``; its prior is a fixed ``Bernoulli(ρ0)`` or, hierarchically, the
  layer's own usage ``Bernoulli(π_k)`` (`expected_local_kl`).
* Relaxation: the binary Concrete (relaxed Bernoulli) with temperature τ while training.

Closed forms (``Kuma(a, b)`` has density ``a b π^{a-1} (1-π^a)^{b-1}``; ``π^a ~ Beta(1, b)``):

* ``E π = b · B(1 + 1/a, b)``
* ``E log π = (ψ(1) − ψ(1 + b)) / a``
* ``KL(Kuma(a, b) ‖ Beta(α0, 1)) = (1 − α0/a)(−γ − ψ(b) − 1/b) + log(a b) − log α0 − (b − 1)/b``
  (exact: the series term of the general Beta(α, β) formula vanishes for β = 1).

The Kumaraswamy parameters are stored as logarithms (``a = exp(log_a)``): an optimizer step then
moves them by a fraction of their size, so a gate that starts near 1 can reach 0 within a normal
training budget (an additive parameter such as ``softplus⁻¹(a)`` moves by the learning rate per step
whatever its size, and ``a ≈ 9`` barely moves ``E π``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EULER_GAMMA = 0.5772156649015329
_EPS = 1e-6


# -- Kumaraswamy -------------------------------------------------------------------------
def kumaraswamy_log_sample(a: Tensor, b: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Reparameterised draw ``π = (1 − u^{1/b})^{1/a}``; returns ``(log π, log(1 − π))``.

    Works in log space so that π near 0 or 1 keeps a finite logit.
    """
    u = u.clamp(_EPS, 1.0 - _EPS)
    log_pi = torch.log(-torch.expm1(torch.log(u) / b)) / a
    log_pi = log_pi.clamp(max=-1e-7)
    log_one_minus_pi = torch.log(-torch.expm1(log_pi))
    return log_pi, log_one_minus_pi


def kumaraswamy_mean(a: Tensor, b: Tensor) -> Tensor:
    """``E π = b · B(1 + 1/a, b)``."""
    return torch.exp(torch.log(b) + torch.lgamma(1 + 1 / a) + torch.lgamma(b) - torch.lgamma(1 + 1 / a + b))


def kumaraswamy_expected_log(a: Tensor, b: Tensor) -> Tensor:
    """``E log π = (ψ(1) − ψ(1 + b)) / a``."""
    return (-EULER_GAMMA - torch.digamma(1 + b)) / a


def kl_kumaraswamy_beta(a: Tensor, b: Tensor, alpha0: float) -> Tensor:
    """Exact ``KL(Kuma(a, b) ‖ Beta(α0, 1))``, elementwise."""
    return (
        (1 - alpha0 / a) * (-EULER_GAMMA - torch.digamma(b) - 1 / b)
        + torch.log(a * b)
        - math.log(alpha0)
        - (b - 1) / b
    )


# -- Bernoulli ---------------------------------------------------------------------------
def kl_bernoulli(p: Tensor, q: Tensor | float) -> Tensor:
    """``KL(Bern(p) ‖ Bern(q)) = p log(p/q) + (1−p) log((1−p)/(1−q))``, elementwise, in at least float32
    (in bf16 or fp16, ``1 − 1e-6`` rounds to 1: a gate near 1 would give ``0 · log 0`` = NaN)."""
    p = p.float() if p.dtype in (torch.float16, torch.bfloat16) else p
    p = p.clamp(_EPS, 1 - _EPS)
    q = torch.as_tensor(q, dtype=p.dtype, device=p.device).clamp(_EPS, 1 - _EPS)
    return p * (torch.log(p) - torch.log(q)) + (1 - p) * (torch.log1p(-p) - torch.log1p(-q))


def relaxed_bernoulli(logits: Tensor, temperature: float, noise: Tensor | None = None) -> Tensor:
    """Binary Concrete draw ``σ((logits + log u − log(1 − u)) / τ)``.

    ``noise``: the uniforms ``u`` to use (e.g. shared by several rows, which couples their draws
    without changing each row's distribution); fresh ones if None.

    Example:
        >>> draw = relaxed_bernoulli(torch.zeros(3), temperature=0.5)
        >>> bool(((draw > 0) & (draw < 1)).all())
        True
    """
    u = (torch.rand_like(logits) if noise is None else noise).clamp(_EPS, 1 - _EPS)
    return torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / temperature)


def expected_local_kl(q: Tensor, expected_log_pi: Tensor, log_one_minus_pi: Tensor) -> Tensor:
    """The local gate's KL against the layer's usage, in expectation over ``q(π)``, per factor.

    With the hierarchical prior ``l_k ~ Bernoulli(π_k)`` the ELBO holds
    ``E_{q(π)} KL(Bern(q) ‖ Bern(π)) = q log q + (1 − q) log(1 − q) − q E[log π] − (1 − q) E[log(1 − π)]``
    (the Bernoulli KL is linear in ``log π`` and ``log(1 − π)``, so the expectation goes inside).
    ``E[log π]`` has a closed form (`GlobalGate.expected_log_pi`); ``E[log(1 − π)]`` has none for a
    Kumaraswamy (only a slowly converging series), so ``log_one_minus_pi`` is the reparameterised
    draw of the same forward: an unbiased one-sample estimate whose gradient reaches ``a`` and ``b``.
    Both gradients reach the global gate, which so learns how often the inputs use each factor.

    Example:
        >>> q = torch.tensor([0.9, 0.1])
        >>> kl = expected_local_kl(q, torch.log(torch.tensor([0.9, 0.1])), torch.log(torch.tensor([0.1, 0.9])))
        >>> torch.allclose(kl, torch.zeros(2), atol=1e-6)   # q equal to a point-mass π: no divergence
        True
    """
    q = q.float() if q.dtype in (torch.float16, torch.bfloat16) else q
    q = q.clamp(_EPS, 1 - _EPS)
    entropy_term = q * torch.log(q) + (1 - q) * torch.log1p(-q)
    return entropy_term - q * expected_log_pi - (1 - q) * log_one_minus_pi


def hard_bernoulli(probs: Tensor, noise: Tensor | None = None) -> Tensor:
    """Exact Bernoulli draw ``1[u < p]`` (no gradient); ``noise``: the uniforms ``u``, as in
    `relaxed_bernoulli`."""
    return ((torch.rand_like(probs) if noise is None else noise) < probs).to(probs.dtype)


# -- modules -----------------------------------------------------------------------------
class GlobalGate(nn.Module):
    """Layer-level gate: variational Kumaraswamy posterior over the factor usage π ∈ (0,1)^r.

    ``a = exp(log_a)``, ``b = exp(log_b)``. With ``prior="ibp"`` the Kumaraswamy variables are the
    sticks ``ν`` and ``π_k = Π_{j≤k} ν_j``. ``a_init=None`` starts the posterior at the prior
    (``Kuma(α0, 1) = Beta(α0, 1)``: no KL at the start).

    Example:
        >>> gate = GlobalGate(4, alpha0=1.0)
        >>> gate.expected_pi().tolist()
        [0.5, 0.5, 0.5, 0.5]
        >>> gate.kl().item()
        0.0
    """

    def __init__(self, r: int, alpha0: float, a_init: float | None = None, b_init: float = 1.0, prior: str = "beta"):
        super().__init__()
        self.alpha0 = alpha0
        self.prior = prior
        a_init = alpha0 if a_init is None else a_init
        self.log_a = nn.Parameter(torch.full((r,), math.log(a_init)))
        self.log_b = nn.Parameter(torch.full((r,), math.log(b_init)))
        self._pi_cache: tuple | None = None  # (parameter versions, E_q[π]) for prediction

    @property
    def a(self) -> Tensor:
        return torch.exp(self.log_a)

    @property
    def b(self) -> Tensor:
        return torch.exp(self.log_b)

    def sample_log_pi(self, rows: int | None = None) -> tuple[Tensor, Tensor]:
        """Reparameterised draws of ``(log π, log(1 − π))``: shape [r], or [rows, r] with
        one independent draw per row."""
        shape = self.log_a.shape if rows is None else (rows, *self.log_a.shape)
        u = torch.rand(shape, device=self.log_a.device, dtype=self.log_a.dtype)
        log_nu, log_one_minus_nu = kumaraswamy_log_sample(self.a, self.b, u)
        if self.prior == "beta":
            return log_nu, log_one_minus_nu
        log_pi = torch.cumsum(log_nu, dim=-1).clamp(max=-1e-7)
        return log_pi, torch.log(-torch.expm1(log_pi))

    def expected_log_pi(self) -> Tensor:
        """``E_q[log π]`` [r], exact (for ``ibp``: the sum of the sticks' expected logs)."""
        expected = kumaraswamy_expected_log(self.a, self.b)
        return expected if self.prior == "beta" else torch.cumsum(expected, dim=0)

    def expected_pi(self) -> Tensor:
        """``E_q[π]`` (for ``ibp``: product of the sticks' means, the sticks being independent).

        In eval mode without autograd (prediction) the value is cached until the parameters change:
        every forward of every layer asks for it. In training mode it is always recomputed, so an
        optimizer step is seen at once, whatever the optimizer does to the parameters' versions."""
        if torch.is_grad_enabled() or self.training:
            self._pi_cache = None
            return self._expected_pi()
        # an in-place update (load_state_dict, a manual step) bumps _version; a moved tensor is a new one
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in (self.log_a, self.log_b))
        if self._pi_cache is None or self._pi_cache[0] != key:
            self._pi_cache = (key, self._expected_pi())
        return self._pi_cache[1]

    def train(self, mode: bool = True) -> "GlobalGate":
        # a sharded (FSDP2) parameter is re-gathered in place without bumping its version: switching
        # between training and prediction, as every training loop does, drops the cached value too
        if mode != self.training:
            self._pi_cache = None
        return super().train(mode)

    def _expected_pi(self) -> Tensor:
        mean = kumaraswamy_mean(self.a, self.b)
        return mean if self.prior == "beta" else torch.cumprod(mean, dim=0)

    def kl(self) -> Tensor:
        """``Σ_k KL(q(π_k) ‖ p(π_k))`` (for ``ibp``: summed over the sticks)."""
        return kl_kumaraswamy_beta(self.a, self.b, self.alpha0).sum()


class LocalGate(nn.Module):
    """Instance-level gate logits ``ℓ(x) = W_g · LN(x̄) + b_g`` (LN without affine parameters).

    ``W_g`` starts at 0, so every instance starts with the same keep-probability σ(b_g).
    ``context_dependent=False`` keeps it there (not trained): the gate is a learned constant,
    the same for every input (the control that tells whether the input dependence helps).

    Example:
        >>> gate = LocalGate(in_features=6, r=3, bias_init=0.0)
        >>> torch.sigmoid(gate(torch.randn(2, 6)))
        tensor([[0.5000, 0.5000, 0.5000],
                [0.5000, 0.5000, 0.5000]], grad_fn=<SigmoidBackward0>)
    """

    def __init__(self, in_features: int, r: int, bias_init: float = 3.0, context_dependent: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(r, in_features), requires_grad=context_dependent)
        self.bias = nn.Parameter(torch.full((r,), float(bias_init)))

    def forward(self, pooled: Tensor) -> Tensor:
        return F.linear(F.layer_norm(pooled, pooled.shape[-1:]), self.weight, self.bias)

    @torch.no_grad()
    def decompose(self, pooled: Tensor) -> dict[str, Tensor]:
        """Split the logits of a set of inputs ``pooled`` [n, d] as ``ℓ(x_n) = b_g + W_g·ū + W_g·(u_n − ū)``,
        u_n the gate's input and ū its mean over these n inputs: ``bias`` [r], ``shared`` [r] (what W_g adds
        to every input alike: a second bias) and ``context`` [n, r] (the only part that tells inputs apart).

        Example:
            >>> gate = LocalGate(4, 2)
            >>> parts = gate.decompose(torch.randn(5, 4))
            >>> parts["bias"].shape, parts["shared"].shape, parts["context"].shape
            (torch.Size([2]), torch.Size([2]), torch.Size([5, 2]))
        """
        inputs = F.layer_norm(pooled, pooled.shape[-1:])
        mean = inputs.mean(0)
        return {"bias": self.bias.clone(), "shared": F.linear(mean, self.weight),
                "context": F.linear(inputs - mean, self.weight)}
