"""`BaRALinear`: one adapted ``nn.Linear`` (DESIGN §2).

``y_t = W0 x_t + b0 + c · B (z_n ⊙ A x_t)`` where ``z_n ∈ [0,1]^r`` is the joint gate of the
instance n the token t belongs to: ``z_nk = g_nk · l_nk`` (global × local), or one additive-logit
gate for ``variant="additive"``. In ``ones`` mode the layer is literally
``base_layer(x) + scaling * lora_B(lora_A(x))`` — plain LoRA.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from bara.config import BaRAConfig
from bara.gates import GlobalGate, LocalGate, hard_bernoulli, kl_bernoulli, relaxed_bernoulli

# mode -> (how the global gate is set, how the local gate is set); each "sample", "mean" or "one".
GATE_MODES: dict[str, tuple[str, str]] = {
    "sample": ("sample", "sample"),
    "mean": ("mean", "mean"),
    "ones": ("one", "one"),
    "global": ("sample", "one"),
    "global_mean": ("mean", "one"),
    "local": ("one", "sample"),
    "local_mean": ("one", "mean"),
    # check C7's control: input-independent factor dropout with the keep-probabilities set by
    # `bara.model.fix_gates` (by default the data-average of E_q[z]); no learned gate is used
    "constant": ("constant", "one"),
}


@dataclass
class GateContext:
    """Per-forward information shared by all BaRA layers of one model.

    ``pool_mask`` ([instances, tokens], 1 = pool this token) is set by the model's forward
    pre-hook from the attention mask (minus label tokens of a causal LM), because linear
    layers never see the mask themselves.
    """

    pool_mask: Tensor | None = None
    reuse_gates: bool = False  # set while decoding: keep the gates of the prompt pass
    # multiple choice ([examples, choices, tokens] inputs): [examples, choices], 1 for a real choice and 0
    # for a padding copy, so that the local KL is summed over an example's real choices
    choice_rows: Tensor | None = None
    # counts the model's forwards, so that a layer called twice in one (shared weights, e.g. ALBERT)
    # adds up the local KL of its calls; None for a layer used outside a BaRAModel
    forward: int | None = None
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


def _per_row(draws: Tensor | float | None, choices: int) -> Tensor | float | None:
    """Per-example draws [examples, r] repeated over each example's ``choices`` consecutive rows."""
    return draws.repeat_interleave(choices, 0) if isinstance(draws, Tensor) and draws.dim() == 2 and choices > 1 else draws


class BaRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus r gated rank-1 factors ``b_k a_kᵀ``.

    Attributes mirror peft's LoRA layers: ``base_layer``, ``lora_A`` (din→r), ``lora_B``
    (r→dout), ``scaling``; plus ``global_gate`` and ``local_gate``.

    Example:
        >>> layer = BaRALinear(nn.Linear(16, 4), BaRAConfig(r=2))
        >>> layer(torch.randn(3, 5, 16)).shape
        torch.Size([3, 5, 4])
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
        self.variant = config.variant
        self.global_draw = config.global_draw
        self.local_noise = config.local_noise
        self.gate_input = config.gate_input
        self.straight_through = config.relaxation == "straight_through"
        self.local_kl_kind = config.local_kl
        self.local_mi_weight = config.local_mi_weight
        factory = {"device": base_layer.weight.device}
        self.lora_A = nn.Linear(self.in_features, r, bias=False, **factory)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, **factory)
        # peft's lora_dropout: on the factors' input only; the gates pool the undropped input
        self.lora_dropout = nn.Dropout(config.lora_dropout) if config.lora_dropout else nn.Identity()
        if r > 0:
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # as LoRA/peft
        nn.init.zeros_(self.lora_B.weight)  # ΔW = 0 at start
        self.global_gate = GlobalGate(r, config.alpha0, config.kuma_a_init, config.kuma_b_init, config.prior).to(**factory)
        gate_dim = self.in_features if config.gate_input == "x" else r
        self.local_gate = LocalGate(gate_dim, r, config.local_bias_init, config.context_dependent,
                                    config.center_gate_input).to(**factory)
        self.mode = "sample"
        self.context = context if context is not None else GateContext()
        self._stats: dict[str, Tensor] = {}
        self._stats_forward: int | None = None  # the context's forward that wrote _stats
        self._warned_reshaped_call = False
        self.global_used = True  # whether the last forward used the global gate (for its KL)
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
    def _gate(self, pooled: Tensor) -> Tensor:
        """Joint gate z [n, r] for the current mode; records the statistics of this forward."""
        global_kind, local_kind = GATE_MODES[self.mode]
        logits = self.local_gate(pooled.to(self.local_gate.weight.dtype))
        local_p = torch.sigmoid(logits)
        expected_pi = self.global_gate.expected_pi()
        stats = {"local_probs": local_p, "expected_pi": expected_pi}
        stochastic = self.training
        log_pi = log_1m_pi = None
        # on multiple-choice inputs an example's choice rows share one global draw (``global_draw``). The
        # `constant` control draws like the local gates (per row, or from shared uniforms under
        # ``local_noise``): it stands in for the joint gate z = g·l, whose randomness is mostly the local
        # part (E π ≈ 1 for most factors)
        draws, choices = self._global_draws(logits.shape[0]) if global_kind == "sample" else (logits.shape[0], 1)
        noise = self._local_uniforms(logits) if local_kind == "sample" or global_kind == "constant" else None
        if global_kind == "sample" or (self.variant == "additive" and local_kind != "one"):
            # training: one draw of π per forward (DESIGN §2); prediction: one per instance, so that
            # the S Monte-Carlo copies of an input average over q(π) too
            log_pi, log_1m_pi = self.global_gate.sample_log_pi(None if stochastic else draws)

        if self.variant == "additive" and global_kind != "one" and local_kind != "one":
            z = self._additive_gate(logits, expected_pi, _per_row(log_pi, choices), _per_row(log_1m_pi, choices),
                                    global_kind, stats, noise)
        else:
            shape = (draws, logits.shape[1])
            g = _per_row(self._one_gate(global_kind, lambda: (log_pi - log_1m_pi).expand(shape), expected_pi.expand(shape),
                                        torch.exp(log_pi).expand(shape) if log_pi is not None else None, stochastic,
                                        noise if global_kind == "constant" else None), choices)
            l = self._one_gate(local_kind, lambda: logits, local_p, local_p, stochastic, noise)
            z = g * l
            # the KL terms only feed a loss: prediction (no autograd) skips them
            if local_kind != "one" and torch.is_grad_enabled() and (kl := self._local_kl(local_p, self.rho0)) is not None:
                stats["local_kl"] = kl
        self.global_used = global_kind not in ("one", "constant")
        if self.global_used and torch.is_grad_enabled():
            # computed here, inside the forward, where sharded (FSDP) parameters are gathered
            stats["global_kl"] = self.global_gate.kl()
        stats["gate_probs"] = self._expected_gate(expected_pi, local_p, global_kind, local_kind)
        self._record(stats)
        return z

    def _record(self, stats: dict[str, Tensor]) -> None:
        """Keep this call's statistics; a second call within one model forward (a layer whose
        weights are shared across depth) has local gates of its own, so its local KL adds up."""
        if getattr(torch._C, "_current_graph_task_id", lambda: -1)() != -1:
            return  # activation checkpointing re-runs the forward inside backward: keep what the loss saw
        forward = self.context.forward
        previous = self._stats if forward is not None and forward == self._stats_forward else {}
        if "local_kl" in previous and "local_kl" in stats:
            if previous["local_kl"].shape == stats["local_kl"].shape:
                stats["local_kl"] = previous["local_kl"] + stats["local_kl"]
            elif not self._warned_reshaped_call:  # e.g. DeBERTa-v2 sends its position table through query_proj
                self._warned_reshaped_call = True
                warnings.warn(f"BaRA: a layer was called twice in one forward on {previous['local_kl'].shape[0]} "
                              f"and then {stats['local_kl'].shape[0]} rows; only the last call's local KL and gate "
                              "statistics count (leave this module out of target_modules if it is not per-token)")
        self._stats, self._stats_forward = stats, forward

    def _choice_layout(self, rows: int) -> tuple[int, int]:
        """``(examples, choices)`` of a multiple-choice batch of ``rows`` choice rows, else ``(rows, 1)``."""
        layout = self.context.choice_rows
        if layout is not None and layout.numel() == rows:
            return layout.shape[0], layout.shape[1]
        return rows, 1

    def _global_draws(self, rows: int) -> tuple[int, int]:
        """``(draws, choices)``: the global gate draws ``draws`` rows, each shared by ``choices``
        consecutive rows: an example's choice rows under ``global_draw="example"``, else one row."""
        return self._choice_layout(rows) if self.global_draw == "example" else (rows, 1)

    def _local_uniforms(self, logits: Tensor) -> Tensor | None:
        """The uniforms of the local draws when an example's choice rows share them
        (``local_noise="example"``): each row keeps its own keep-probability, so its draw has the
        same distribution as alone, but rows with similar probabilities keep the same factors.
        None (fresh uniforms per row) otherwise."""
        examples, choices = self._choice_layout(logits.shape[0])
        if self.local_noise != "example" or choices == 1:
            return None
        return _per_row(torch.rand(examples, logits.shape[1], device=logits.device, dtype=logits.dtype), choices)

    def _one_gate(self, kind, logits_fn, mean_p, sample_p, stochastic, noise=None) -> Tensor | float:
        if kind == "one":
            return 1.0
        if kind == "constant":
            keep = self.constant_keep.expand_as(mean_p)
            if not self.training:
                return hard_bernoulli(keep, noise)
            return relaxed_bernoulli(torch.logit(keep, eps=1e-6), self.temperature, noise=noise)
        if kind == "mean":
            return mean_p
        if stochastic:
            return relaxed_bernoulli(logits_fn(), self.temperature, self.straight_through, noise)
        return hard_bernoulli(sample_p.detach(), noise)

    def _additive_gate(self, logits, expected_pi, log_pi, log_1m_pi, kind, stats, noise=None) -> Tensor:
        """Variant B: ``q(z=1 | x, π) = σ(logit π + ℓ(x))`` with prior ``Bernoulli(π)``."""
        if kind == "mean":  # plug-in approximation E_π σ(logit π + ℓ) ≈ σ(logit E π + ℓ)
            return torch.sigmoid(torch.logit(expected_pi, eps=1e-6) + logits)
        gate_logits = (log_pi - log_1m_pi) + logits
        if torch.is_grad_enabled() and (kl := self._local_kl(torch.sigmoid(gate_logits), torch.exp(log_pi))) is not None:
            stats["local_kl"] = kl
        if self.training:
            return relaxed_bernoulli(gate_logits, self.temperature, self.straight_through, noise)
        return hard_bernoulli(torch.sigmoid(gate_logits).detach(), noise)

    def _local_kl(self, q: Tensor, prior: Tensor | float) -> Tensor | None:
        """Per-instance local KL [n] (``marginal``: the KL of the batch-average gate, per instance,
        plus ``local_mi_weight`` × each instance's KL from that average; ``ceiling``: that marginal
        KL plus each instance's KL on the factors it keeps above the prior's keep-probability).

        Skipped (None) when no gradient is being recorded: prediction never needs it."""
        if not torch.is_grad_enabled():
            return None
        if self.local_kl_kind == "instance":
            return kl_bernoulli(q, prior).sum(-1)
        prior_mean = prior.mean(0) if isinstance(prior, Tensor) and prior.dim() == 2 else prior
        average = q.mean(0)
        kl = kl_bernoulli(average, prior_mean).sum(-1).expand(q.shape[0])
        if self.local_mi_weight:  # mean over n of KL(q_n ‖ q̄) is the input-gate mutual information
            kl = kl + self.local_mi_weight * kl_bernoulli(q, average).sum(-1)
        if self.local_kl_kind == "ceiling":  # KL(q‖ρ) is 0 with zero slope at q = ρ: the hinge is smooth
            kl = kl + (kl_bernoulli(q, prior) * (q > prior)).sum(-1)
        return kl

    def _expected_gate(self, expected_pi, local_p, global_kind, local_kind) -> Tensor:
        """``E_q[z]`` per instance and factor, respecting factors forced open by the mode."""
        if global_kind == "constant":
            return self.constant_keep.expand_as(local_p)
        g = expected_pi if global_kind != "one" else torch.ones_like(expected_pi)
        if local_kind == "one":
            return g.expand_as(local_p)
        if self.variant == "additive" and global_kind != "one":
            return torch.sigmoid(torch.logit(expected_pi, eps=1e-6) + torch.logit(local_p, eps=1e-6))
        return g * local_p

    # -- forward -------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        result = self.base_layer(x)
        x_lora = x if x.dtype == self.lora_A.weight.dtype else x.to(self.lora_A.weight.dtype)
        if self.mode == "ones":
            self._stats = {}
            return result + (self.scaling * self.lora_B(self.lora_A(self.lora_dropout(x_lora)))).to(result.dtype)
        if self.r == 0:
            self._stats = {}
            return result
        h = self.lora_A(self.lora_dropout(x_lora))
        tokens = self._instance_view(x_lora)
        if self.context.reuse_gates and self._cached_gate is not None and self._cached_gate.shape[0] == tokens.shape[0]:
            z = self._cached_gate
        else:
            pooled = self._pool(tokens if self.gate_input == "x" else self._instance_view(h))
            z = self._gate(pooled)
            self._cached_gate = z.detach()
        gated = (self._instance_view(h) * z.to(h.dtype).unsqueeze(1)).reshape(h.shape)
        return result + (self.scaling * self.lora_B(gated)).to(result.dtype)

    def extra_repr(self) -> str:
        return f"r={self.r}, scaling={self.scaling:g}, mode={self.mode!r}, gate_input={self.gate_input!r}, variant={self.variant!r}"
