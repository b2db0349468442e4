"""The gates and their distributions (DESIGN §2).

* Global gate (one per layer): ``π_k ~ Beta(α0, 1)`` a priori, ``q(π_k) = Kumaraswamy(a_k, b_k)``.
  With the ``ibp`` prior, ``π_k = Π_{j≤k} ν_j`` with ``ν_j`` Beta/Kumaraswamy distributed.
* Local gate (one per instance): ``q(l_nk | x_n) = Bernoulli(σ(ℓ_k(x_n)))`` with
  ``ℓ(x) = W_g · LN(x̄) + b_g``, prior ``Bernoulli(ρ0)``.
* Relaxation: the binary Concrete (relaxed Bernoulli) with temperature τ.

Closed forms used (Kumaraswamy ``Kuma(a, b)``: density ``a b π^{a-1} (1-π^a)^{b-1}``):

* ``E π = b · B(1 + 1/a, b)``
* ``E log π = (ψ(1) − ψ(1 + b)) / a``   (because ``π^a ~ Beta(1, b)``)
* ``KL(Kuma(a, b) ‖ Beta(α0, 1)) = (1 − α0/a)(−γ − ψ(b) − 1/b) + log(a b) − log α0 − (b − 1)/b``
  (exact: the series term of the general Beta(α, β) formula vanishes for β = 1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

EULER_GAMMA = 0.5772156649015329
_EPS = 1e-6
CENTER_RATE = 0.01  # the running mean of a centred local gate's input follows ~100 batches


def inverse_softplus(y: float) -> float:
    """x with softplus(x) = y (y > 0)."""
    return y + math.log(-math.expm1(-y))


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


def relaxed_bernoulli(logits: Tensor, temperature: float, straight_through: bool = False,
                      noise: Tensor | None = None) -> Tensor:
    """Binary Concrete draw ``σ((logits + log u − log(1 − u)) / τ)``.

    With ``straight_through`` the forward value is the hard gate ``1[sample > 0.5]`` and the
    gradient is the relaxed one. ``noise``: the uniforms ``u`` to use (e.g. shared by several
    rows, which couples their draws without changing each row's distribution); fresh ones if None.
    """
    u = (torch.rand_like(logits) if noise is None else noise).clamp(_EPS, 1 - _EPS)
    soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / temperature)
    if not straight_through:
        return soft
    hard = (soft > 0.5).to(soft.dtype)
    return hard + soft - soft.detach()


def hard_bernoulli(probs: Tensor, noise: Tensor | None = None) -> Tensor:
    """Exact Bernoulli draw ``1[u < p]`` (no gradient); ``noise``: the uniforms ``u``, as in
    `relaxed_bernoulli`."""
    return ((torch.rand_like(probs) if noise is None else noise) < probs).to(probs.dtype)


# -- modules -----------------------------------------------------------------------------
class GlobalGate(nn.Module):
    """Layer-level gate: variational Kumaraswamy posterior over the factor usage π ∈ (0,1)^r.

    ``a = softplus(ã)``, ``b = softplus(b̃)``. With ``prior="ibp"`` the Kumaraswamy variables
    are the sticks ``ν`` and ``π_k = Π_{j≤k} ν_j``.
    """

    def __init__(self, r: int, alpha0: float, a_init: float = 9.0, b_init: float = 1.0, prior: str = "beta"):
        super().__init__()
        self.alpha0 = alpha0
        self.prior = prior
        self.a_raw = nn.Parameter(torch.full((r,), inverse_softplus(a_init)))
        self.b_raw = nn.Parameter(torch.full((r,), inverse_softplus(b_init)))
        self._pi_cache: tuple | None = None  # (parameter versions, E_q[π]) for prediction

    @property
    def a(self) -> Tensor:
        return F.softplus(self.a_raw)

    @property
    def b(self) -> Tensor:
        return F.softplus(self.b_raw)

    def sample_log_pi(self, rows: int | None = None) -> tuple[Tensor, Tensor]:
        """Reparameterised draws of ``(log π, log(1 − π))``: shape [r], or [rows, r] with
        one independent draw per row."""
        shape = self.a_raw.shape if rows is None else (rows, *self.a_raw.shape)
        u = torch.rand(shape, device=self.a_raw.device, dtype=self.a_raw.dtype)
        log_nu, log_one_minus_nu = kumaraswamy_log_sample(self.a, self.b, u)
        if self.prior == "beta":
            return log_nu, log_one_minus_nu
        log_pi = torch.cumsum(log_nu, dim=-1).clamp(max=-1e-7)
        return log_pi, torch.log(-torch.expm1(log_pi))

    def expected_pi(self) -> Tensor:
        """``E_q[π]`` (for ``ibp``: product of the sticks' means, the sticks being independent).

        Without autograd (prediction) the value is cached until the parameters change: every forward of
        every layer asks for it, and it costs a dozen small operations (lgamma, exp, ...) each time."""
        if torch.is_grad_enabled():
            return self._expected_pi()
        # an in-place update (optimizer step, load_state_dict) bumps _version; a moved tensor is a new one
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in (self.a_raw, self.b_raw))
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
    ``context_dependent=False`` keeps it there (not trained): the gate is a learned constant.

    ``centered=True`` feeds ``LN(x̄) − μ`` instead, with μ a running mean of ``LN(x̄)`` over the
    training batches (a buffer, saved with the adapter). Every input shares the mean direction of
    ``LN(x̄)``, so through it ``W_g`` acts as a second bias that Adam moves on all ``d`` coordinates at
    once; centred, a pull that is the same for every input (the KL's towards ρ0) reaches ``W_g`` not
    at all, and ``W_g`` can only learn what tells inputs apart.
    """

    def __init__(self, in_features: int, r: int, bias_init: float = 3.0, context_dependent: bool = True,
                 centered: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(r, in_features), requires_grad=context_dependent)
        self.bias = nn.Parameter(torch.full((r,), float(bias_init)))
        self.centered = centered
        if centered:
            self.register_buffer("input_mean", torch.zeros(in_features))
            # an integer, so that casting the model to bf16 (8-bit mantissa) cannot stop the count at 256
            self.register_buffer("input_count", torch.zeros((), dtype=torch.long))

    def forward(self, pooled: Tensor) -> Tensor:
        return F.linear(self._input(pooled, track=self.training), self.weight, self.bias)

    def _input(self, pooled: Tensor, track: bool = False) -> Tensor:
        """What W_g reads: ``LN(x̄)``, minus the running mean when centred (first moved by this batch if ``track``)."""
        normed = F.layer_norm(pooled, pooled.shape[-1:])
        if not self.centered:
            return normed
        if track:
            self._track_mean(normed)
        return normed - self.input_mean

    @torch.no_grad()
    def decompose(self, pooled: Tensor) -> dict[str, Tensor]:
        """Split the logits of a set of inputs ``pooled`` [n, d] as ``ℓ(x_n) = b_g + W_g·ū + W_g·(u_n − ū)``,
        u_n the gate's input and ū its mean over these n inputs: ``bias`` [r], ``shared`` [r] (what W_g adds
        to every input alike: a second bias) and ``context`` [n, r] (the only part that tells inputs apart).
        The three add up to ``self(pooled)`` in eval mode (in training the forward first moves the running mean).

        Example:
            >>> gate = LocalGate(4, 2)
            >>> parts = gate.decompose(torch.randn(5, 4))
            >>> parts["bias"].shape, parts["shared"].shape, parts["context"].shape
            (torch.Size([2]), torch.Size([2]), torch.Size([5, 2]))
        """
        inputs = self._input(pooled)
        mean = inputs.mean(0)
        return {"bias": self.bias.clone(), "shared": F.linear(mean, self.weight),
                "context": F.linear(inputs - mean, self.weight)}

    @torch.no_grad()
    def _track_mean(self, normed: Tensor) -> None:
        """The running mean: the plain average of the first batches, then an exponential one that follows
        the slow drift of the layer's input as the adapters below it train (a window of ~1/CENTER_RATE batches)."""
        self.input_count += 1
        rate = torch.clamp(1.0 / self.input_count.float(), min=CENTER_RATE)
        self.input_mean.lerp_(normed.mean(0).to(self.input_mean.dtype), rate.to(self.input_mean.dtype))
