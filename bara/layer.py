"""`BaRALinear`: one adapted ``nn.Linear``.

``y_t = W0 x_t + b0 + c · B (z_n ⊙ A x_t)`` where ``z_n ∈ [0,1]^r`` is the joint gate of the
instance n the token t belongs to: ``z_nk = g_nk · l_nk`` (global × local). In ``ones`` mode the
layer is literally ``base_layer(x) + scaling * lora_B(lora_A(x))``: plain LoRA.

How each gate is set in a forward is a small strategy object (`GateDraw`): sampled, replaced by
its expectation, or held open. A gate mode (`GATE_MODES`) pairs one strategy for the global gate
with one for the local gate. Each forward leaves its statistics, the KL terms included, in the
layer's public `GateStats` (``layer.stats``), which `bara.objective` reads.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from bara.config import BaRAConfig
from bara.gates import GlobalGate, LocalGate, expected_local_kl, hard_bernoulli, kl_bernoulli, relaxed_bernoulli


# -- how a gate is set in one forward ---------------------------------------------------------
@dataclass(frozen=True)
class GateInputs:
    """One gate's distribution in a forward: ``logits`` and ``probs`` of a draw (per row) and its
    expectation ``mean``. ``logits`` is a callable: only a relaxed draw needs it."""

    logits: object  # () -> Tensor
    probs: Tensor
    mean: Tensor


class GateDraw:
    """How a gate is set in one forward. ``random``: predictions average several passes;
    ``in_use``: the gate is part of the model in this mode, so its KL counts."""

    random: bool = False
    in_use: bool = True

    def draw(self, gate: GateInputs, training: bool, temperature: float, noise: Tensor | None) -> Tensor | float:
        raise NotImplementedError

    def expectation(self, gate: GateInputs) -> Tensor | float:
        return gate.mean


class Sampled(GateDraw):
    """A relaxed (binary-Concrete) draw in training, an exact Bernoulli draw in prediction.

    Example:
        >>> p = torch.tensor([[0.0, 1.0]])
        >>> Sampled().draw(GateInputs(lambda: torch.logit(p), p, p), False, 1.0, None)
        tensor([[0., 1.]])
    """

    random = True

    def draw(self, gate: GateInputs, training: bool, temperature: float, noise: Tensor | None) -> Tensor:
        if training:
            return relaxed_bernoulli(gate.logits(), temperature, noise)
        return hard_bernoulli(gate.probs.detach(), noise)


class Expected(GateDraw):
    """The gate replaced by its expectation (one deterministic pass)."""

    def draw(self, gate: GateInputs, training: bool, temperature: float, noise: Tensor | None) -> Tensor:
        return gate.mean


class Open(GateDraw):
    """The gate held at 1: the factor is always on."""

    in_use = False

    def draw(self, gate: GateInputs, training: bool, temperature: float, noise: Tensor | None) -> float:
        return 1.0

    def expectation(self, gate: GateInputs) -> float:
        return 1.0


class ConstantDraw(Sampled):
    """Input-independent factor dropout at fixed keep-probabilities (`bara.fix_gates`), in place of
    the joint gate: the control that tells whether the learned gates add anything to dropout."""

    in_use = False


@dataclass(frozen=True)
class GateMode:
    """A pair of strategies: how the global gate and how the local gate are set."""

    global_draw: GateDraw
    local_draw: GateDraw

    @property
    def random(self) -> bool:
        return self.global_draw.random or self.local_draw.random


_SAMPLED, _EXPECTED, _OPEN = Sampled(), Expected(), Open()
GATE_MODES: dict[str, GateMode] = {
    "sample": GateMode(_SAMPLED, _SAMPLED),
    "mean": GateMode(_EXPECTED, _EXPECTED),
    "ones": GateMode(_OPEN, _OPEN),
    "global": GateMode(_SAMPLED, _OPEN),
    "global_mean": GateMode(_EXPECTED, _OPEN),
    "local": GateMode(_OPEN, _SAMPLED),
    "local_mean": GateMode(_OPEN, _EXPECTED),
    "constant": GateMode(ConstantDraw(), _OPEN),
}


# -- what a forward reports -----------------------------------------------------------------
@dataclass
class GateStats:
    """The statistics of one layer's last forward.

    ``local_probs`` [rows, r]: σ(ℓ(x)); ``expected_pi`` [r]: E_q[π]; ``gate_probs`` [rows, r]:
    E_q[z] given the mode; ``global_kl`` (scalar) and ``local_kl`` ([rows]) only when autograd
    records and the gate is in use (prediction skips them).

    Example:
        >>> layer = BaRALinear(nn.Linear(6, 6), BaRAConfig(r=3))
        >>> _ = layer(torch.randn(2, 4, 6))
        >>> layer.stats.gate_probs.shape, layer.stats.local_kl.shape, layer.stats.global_kl.shape
        (torch.Size([2, 3]), torch.Size([2]), torch.Size([]))
    """

    local_probs: Tensor
    expected_pi: Tensor
    gate_probs: Tensor
    global_kl: Tensor | None = None
    local_kl: Tensor | None = None


@dataclass
class GateContext:
    """Per-forward information shared by all BaRA layers of one model.

    ``pool_mask`` ([instances, tokens], 1 = pool this token) is set by the model's forward
    pre-hook from the attention mask (minus label tokens of a causal LM), because linear
    layers never see the mask themselves.

    Example:
        >>> context = GateContext(pool_mask=torch.tensor([[1, 1, 0, 0]]))
        >>> context.pool_weights(torch.float32)
        tensor([[0.5000, 0.5000, 0.0000, 0.0000]])
    """

    pool_mask: Tensor | None = None
    reuse_gates: bool = False  # set while decoding: keep the gates of the prompt pass
    # multiple choice ([examples, choices, tokens] inputs): [examples, choices], 1 for a real choice and 0
    # for a padding copy, so that the local KL is summed over an example's real choices
    choice_rows: Tensor | None = None
    # counts the model's forwards, so that a layer called twice in one (shared weights, e.g. ALBERT)
    # adds up the local KL of its calls; None for a layer used outside a BaRAModel
    forward: int | None = None
    # whether the model's forward is running: activation checkpointing re-runs layers inside backward,
    # after the forward returned, and those calls must not change what the loss saw
    active: bool = False
    _weights: tuple = field(default=(None, None, None), repr=False)  # (mask, dtype, pooling weights)

    def pool_weights(self, dtype: torch.dtype) -> Tensor | None:
        """``pool_mask`` as pooling weights [instances, tokens] that sum to 1 per instance (an
        instance without tokens pools nothing), computed once per forward for all layers."""
        mask, cached_dtype, weights = self._weights
        if self.pool_mask is None:
            return None
        if mask is not self.pool_mask or cached_dtype != dtype:
            m = self.pool_mask.float()
            weights = (m / m.sum(-1, keepdim=True).clamp(min=1.0)).to(dtype)
            self._weights = (self.pool_mask, dtype, weights)
        return weights


def _per_row(draws: Tensor | float, choices: int) -> Tensor | float:
    """Per-example draws [examples, r] repeated over each example's ``choices`` consecutive rows."""
    return draws.repeat_interleave(choices, 0) if isinstance(draws, Tensor) and draws.dim() == 2 and choices > 1 else draws


class BaRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus r gated rank-1 factors ``b_k a_kᵀ``.

    Attributes mirror peft's LoRA layers: ``base_layer``, ``lora_A`` (din→r), ``lora_B``
    (r→dout), ``scaling``; plus ``global_gate``, ``local_gate`` and ``stats`` (the last forward's
    `GateStats`).

    Example:
        >>> layer = BaRALinear(nn.Linear(16, 4), BaRAConfig(r=2))
        >>> layer(torch.randn(3, 5, 16)).shape
        torch.Size([3, 5, 4])
        >>> layer.stats.gate_probs.shape
        torch.Size([3, 2])
    """

    def __init__(self, base_layer: nn.Linear, config: BaRAConfig, r: int | None = None,
                 context: GateContext | None = None):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"BaRALinear wraps nn.Linear, got {type(base_layer).__name__}")
        r = config.r if r is None else r
        self.base_layer = base_layer
        self.r = r
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.scaling = config.scaling
        self.temperature = config.temperature
        self.rho0 = config.rho0
        self.hierarchical = config.local_prior == "global"
        factory = {"device": base_layer.weight.device}
        self.lora_A = nn.Linear(self.in_features, r, bias=False, **factory)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, **factory)
        # peft's lora_dropout: on the factors' input only; the gates pool the undropped input
        self.lora_dropout = nn.Dropout(config.lora_dropout) if config.lora_dropout else nn.Identity()
        if r > 0:
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # as LoRA/peft
        nn.init.zeros_(self.lora_B.weight)  # ΔW = 0 at start
        self.global_gate = GlobalGate(r, config.alpha0, config.kuma_a_init, config.kuma_b_init, config.prior).to(**factory)
        self.local_gate = LocalGate(self.in_features, r, config.local_bias_init, config.context_dependent).to(**factory)
        self.mode = "sample"
        self.context = context if context is not None else GateContext()
        self.stats: GateStats | None = None
        self._stats_forward: int | None = None  # the context's forward that wrote stats
        self._warned_reshaped_call = False
        self.register_buffer("constant_keep", torch.ones(r), persistent=False)  # for mode "constant"
        self._cached_gate: Tensor | None = None

    # -- pooling -------------------------------------------------------------------------
    def _instance_view(self, x: Tensor) -> Tensor:
        """View x as [instances, tokens, features] (a 2-D input is one token per instance)."""
        return x.unsqueeze(1) if x.dim() == 2 else x.reshape(-1, x.shape[-2], x.shape[-1])

    def _pool(self, h: Tensor) -> Tensor:
        """Stop-gradient mask-weighted mean over each instance's tokens: [n, T, d] -> [n, d]."""
        h = h.detach()
        mask = self.context.pool_mask
        if mask is None or mask.numel() != h.shape[0] * h.shape[1]:
            # (a layer that sees one vector per instance, e.g. a pooler's dense, has nothing to mask)
            if mask is not None and h.shape[1] > 1 and not self.context.reuse_gates:
                warnings.warn(f"BaRA: the attention mask of shape {tuple(mask.shape)} does not match this layer's "
                              f"tokens {tuple(h.shape[:2])}; its local gates pool every token, padding included", stacklevel=2)
            return h.mean(dim=1)
        weights = self.context.pool_weights(h.dtype).reshape(h.shape[0], 1, h.shape[1])
        return torch.bmm(weights, h).squeeze(1)  # Σ_t w_t h_t without an [n, T, d] temporary

    # -- gates ---------------------------------------------------------------------------
    def _choice_layout(self, rows: int) -> tuple[int, int]:
        """``(examples, choices)`` of a multiple-choice batch of ``rows`` choice rows, else ``(rows, 1)``."""
        layout = self.context.choice_rows
        if layout is not None and layout.numel() == rows:
            return layout.shape[0], layout.shape[1]
        return rows, 1

    def gate(self, pooled: Tensor) -> Tensor:
        """Joint gate z [rows, r] for the current mode, from the pooled inputs [rows, d]; records
        this forward's `GateStats`.

        On multiple-choice inputs (each choice its own row) an example's rows share one global draw,
        so that one Monte-Carlo sample scores every choice with the same adapter, and draw their local
        gates from shared uniforms: each row keeps its own keep-probability (and marginal), but rows
        whose probabilities agree keep the same factors, so the sampling noise does not fall on the
        difference between the choices' scores.
        """
        mode = GATE_MODES[self.mode]
        logits = self.local_gate(pooled.to(self.local_gate.weight.dtype))
        local_p = torch.sigmoid(logits)
        expected_pi = self.global_gate.expected_pi()
        rows, r = logits.shape
        examples, choices = self._choice_layout(rows)
        recording = torch.is_grad_enabled()  # the KL terms only feed a loss: prediction skips them
        shared = choices > 1 and mode.random
        noise = _per_row(torch.rand(examples, r, device=logits.device, dtype=logits.dtype), choices) if shared else None

        # the global gate: one draw of π per forward in training (its relaxed gates per example); in
        # prediction one per example, so that the S copies of an input average over q(π) as well
        log_pi = log_1m_pi = None
        if mode.global_draw is _SAMPLED or (self.hierarchical and recording and mode.local_draw.in_use):
            log_pi, log_1m_pi = self.global_gate.sample_log_pi(None if self.training else examples)
        if isinstance(mode.global_draw, ConstantDraw):
            keep = self.constant_keep.expand(rows, r)
            global_in = GateInputs(lambda: torch.logit(keep, eps=1e-6), keep, keep)
            g = mode.global_draw.draw(global_in, self.training, self.temperature, noise)
        else:
            shape = (examples, r)
            global_in = GateInputs(lambda: (log_pi - log_1m_pi).expand(shape),
                                   torch.exp(log_pi).expand(shape) if log_pi is not None else expected_pi,
                                   expected_pi)
            g = _per_row(mode.global_draw.draw(global_in, self.training, self.temperature, None), choices)
        local_in = GateInputs(lambda: logits, local_p, local_p)
        z = (g * mode.local_draw.draw(local_in, self.training, self.temperature, noise)).expand(rows, r)

        stats = GateStats(local_probs=local_p, expected_pi=expected_pi,
                          gate_probs=self._expected_gate(mode, global_in, local_p))
        if recording and mode.local_draw.in_use:
            stats.local_kl = self._local_kl(local_p, _per_row(log_1m_pi, choices) if log_1m_pi is not None else None)
        if recording and mode.global_draw.in_use:
            # computed here, inside the forward, where sharded (FSDP) parameters are gathered
            stats.global_kl = self.global_gate.kl()
        self._record(stats)
        return z

    def _local_kl(self, q: Tensor, log_1m_pi: Tensor | None) -> Tensor:
        """Per-row local KL [rows]: against ``Bernoulli(ρ0)``, or (``local_prior="global"``) against the
        layer's usage ``Bernoulli(π_k)`` in expectation over q(π) (`bara.gates.expected_local_kl`)."""
        if not self.hierarchical:
            return kl_bernoulli(q, self.rho0).sum(-1)
        return expected_local_kl(q, self.global_gate.expected_log_pi(), log_1m_pi).sum(-1)

    @staticmethod
    def _expected_gate(mode: GateMode, global_in: GateInputs, local_p: Tensor) -> Tensor:
        """``E_q[z]`` per row and factor [rows, r], respecting factors the mode holds open."""
        g = mode.global_draw.expectation(global_in)
        l = mode.local_draw.expectation(GateInputs(None, local_p, local_p))
        return torch.ones_like(local_p) * g * l

    def _record(self, stats: GateStats) -> None:
        """Keep this call's statistics; a second call within one model forward (a layer whose
        weights are shared across depth) has local gates of its own, so its local KL adds up.
        Calls after the model's forward returned (activation checkpointing re-running the layer in
        backward) leave the statistics the loss saw as they were."""
        ctx = self.context
        if ctx.forward is not None and not ctx.active:
            return
        previous = self.stats if ctx.forward is not None and ctx.forward == self._stats_forward else None
        if previous is not None and previous.local_kl is not None and stats.local_kl is not None:
            if previous.local_kl.shape == stats.local_kl.shape:
                stats.local_kl = previous.local_kl + stats.local_kl
            elif not self._warned_reshaped_call:  # e.g. DeBERTa-v2 sends its position table through query_proj
                self._warned_reshaped_call = True
                warnings.warn(f"BaRA: a layer was called twice in one forward on {previous.local_kl.shape[0]} "
                              f"and then {stats.local_kl.shape[0]} rows; only the last call's local KL and gate "
                              "statistics count (leave this module out of target_modules if it is not per-token)")
        self.stats, self._stats_forward = stats, ctx.forward

    # -- forward -------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        result = self.base_layer(x)
        x_lora = x if x.dtype == self.lora_A.weight.dtype else x.to(self.lora_A.weight.dtype)
        if self.mode == "ones":
            self.stats = None
            return result + (self.scaling * self.lora_B(self.lora_A(self.lora_dropout(x_lora)))).to(result.dtype)
        if self.r == 0:
            self.stats = None
            return result
        h = self.lora_A(self.lora_dropout(x_lora))
        tokens = self._instance_view(x_lora)
        if self.context.reuse_gates and self._cached_gate is not None and self._cached_gate.shape[0] == tokens.shape[0]:
            z = self._cached_gate
        else:
            z = self.gate(self._pool(tokens))
            self._cached_gate = z.detach()
        gated = (self._instance_view(h) * z.to(h.dtype).unsqueeze(1)).reshape(h.shape)
        return result + (self.scaling * self.lora_B(gated)).to(result.dtype)

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:g}, mode={self.mode!r}"
