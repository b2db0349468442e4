"""The variational objective and the effective-rank statistics.

Negative ELBO per example (the trainer adds the likelihood term and multiplies the KL by the
warm-up factor β_t):

``L = mean_n[−log p(y_n | x_n, z_n)] + β_t ( β_l · mean_n Σ_{layers,k} KL(q(l_nk | x_n) ‖ p(l_nk))
      + (β_g / N) Σ_{layers,k} KL(Kuma(a_k, b_k) ‖ Beta(α0, 1)) )``

with the local prior ``p(l_nk) = Bern(ρ0)`` or, hierarchically, ``Bern(π_k)`` in expectation over q(π).

A multiple-choice example (a cross-encoder reads each of its C choices as its own sequence) has one
local gate per choice sequence: its local KL sums over its real choices, as its likelihood counts the
example once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bara.model import BaRAModel


@dataclass
class KLTerms:
    """The KL parts of the last forward: ``total = β_g · global_kl / N + β_l · local_kl``.

    Example:
        >>> import bara, torch
        >>> model = bara.get_bara_model(torch.nn.Sequential(torch.nn.Linear(8, 8)),
        ...                             bara.BaRAConfig(r=4, target_modules=["0"]))
        >>> _ = model.train()(torch.randn(2, 5, 8))
        >>> terms = bara.kl_terms(model, num_examples=100)
        >>> bool(terms.total > 0), bool(terms.local_kl > 0)
        (True, True)
    """

    global_kl: Tensor  # Σ over layers and factors of KL(q(π) ‖ p(π)), not divided by N
    local_kl: Tensor  # mean over examples of Σ over layers, factors (and real choices) of KL_Bern
    total: Tensor


def kl_terms(model: BaRAModel, num_examples: int) -> KLTerms:
    """Both KL parts of the objective (`KLTerms`), from the gates used in the last forward pass.

    The global KL is counted for layers whose global gate was in use (not forced open); the
    local KL is averaged over the examples of the last forward (a multiple-choice example's KL
    summed over its real choices). Both were computed inside that forward (where FSDP has the
    parameters gathered) and are absent from no-grad forwards.

    Example:
        >>> import bara, torch
        >>> model = bara.get_bara_model(torch.nn.Sequential(torch.nn.Linear(8, 8)),
        ...                             bara.BaRAConfig(r=4, target_modules=["0"], beta_local=0.1))
        >>> _ = model.train()(torch.randn(2, 5, 8))
        >>> terms = bara.kl_terms(model, num_examples=100)
        >>> torch.isclose(terms.total, terms.global_kl / 100 + 0.1 * terms.local_kl).item()
        True
    """
    if num_examples <= 0:
        raise ValueError(f"num_examples={num_examples} must be the (positive) number of training examples")
    cfg = model.bara_config
    # a plain tensor: outside the forward pass FSDP parameters are DTensors
    stats = [layer.stats for _, layer in model.bara_layers() if layer.r > 0 and layer.stats is not None]
    zero = stats[0].local_probs.new_zeros(()).float() if stats else torch.zeros(())
    global_kl, local_kl = zero, zero
    for layer_stats in stats:
        if layer_stats.global_kl is not None:
            global_kl = global_kl + layer_stats.global_kl
        if layer_stats.local_kl is not None:
            local_kl = local_kl + _per_example(layer_stats.local_kl, model.context.choice_rows)
    total = cfg.beta_global * global_kl / num_examples + cfg.beta_local * local_kl
    return KLTerms(global_kl=global_kl, local_kl=local_kl, total=total)


def _per_example(kl_rows: Tensor, choice_rows: Tensor | None) -> Tensor:
    """Mean over examples of the local KL of each row ([rows]); rows of a multiple-choice batch
    (``choice_rows`` [examples, choices]) add up over an example's real choices."""
    if choice_rows is None or choice_rows.numel() != kl_rows.numel():
        return kl_rows.mean()
    return (kl_rows.view(choice_rows.shape) * choice_rows.to(kl_rows.dtype)).sum(1).mean()


def kl_divergence(model: BaRAModel, num_examples: int) -> Tensor:
    """Scalar ``β_g · KL_global / N + β_l · mean local KL`` of the last forward.

    Example:
        >>> import bara, torch
        >>> model = bara.get_bara_model(torch.nn.Sequential(torch.nn.Linear(8, 8)),
        ...                             bara.BaRAConfig(r=4, target_modules=["0"]))
        >>> x, y = torch.randn(4, 3, 8), torch.randn(4, 3, 8)
        >>> nll = ((model.train()(x) - y) ** 2).mean()
        >>> loss = nll + bara.kl_warmup_factor(10, 100, 0.1) * bara.kl_divergence(model, num_examples=1000)
        >>> loss.backward()
    """
    return kl_terms(model, num_examples).total


def kl_warmup_factor(step: int, total_steps: int, warmup_fraction: float) -> float:
    """β_t: rises linearly from 0 to 1 over the first ``warmup_fraction`` of the steps.

    Example:
        >>> [kl_warmup_factor(step, 100, 0.1) for step in (0, 5, 10, 50)]
        [0.0, 0.5, 1.0, 1.0]
    """
    warmup_steps = warmup_fraction * total_steps
    return 1.0 if warmup_steps <= 0 else min(1.0, step / warmup_steps)


def gate_probabilities(model: BaRAModel) -> dict[str, Tensor]:
    """``{layer: E_q[z] of shape [instances, r]}`` for the last forward pass.

    Example:
        >>> import bara, torch
        >>> model = bara.get_bara_model(torch.nn.Sequential(torch.nn.Linear(8, 8)),
        ...                             bara.BaRAConfig(r=4, target_modules=["0"]))
        >>> _ = model(torch.randn(3, 5, 8))
        >>> bara.gate_probabilities(model)["0"].shape
        torch.Size([3, 4])
    """
    return {name: layer.stats.gate_probs.detach() for name, layer in model.bara_layers() if layer.stats is not None}


def effective_ranks(model: BaRAModel) -> dict[str, Tensor]:
    """``{layer: s̄(x) of shape [instances]}`` with ``s̄(x) = Σ_k E_q[π_k] σ(ℓ_k(x))``.

    Example:
        >>> import bara, torch
        >>> model = bara.get_bara_model(torch.nn.Sequential(torch.nn.Linear(8, 8)),
        ...                             bara.BaRAConfig(r=4, target_modules=["0"]))
        >>> _ = model(torch.randn(3, 5, 8))
        >>> bara.effective_ranks(model)["0"]        # E π = 0.9 and σ(3) ≈ 0.95 on each of 4 factors
        tensor([3.4293, 3.4293, 3.4293])
    """
    return {name: probs.sum(-1) for name, probs in gate_probabilities(model).items()}


def deterministic_ranks(model: BaRAModel) -> dict[str, Tensor]:
    """``{layer: s_det(x)}`` with ``s_det(x) = Σ_k 1[E_q[π_k] σ(ℓ_k(x)) > 0.5]``.

    Example:
        >>> import bara, torch
        >>> model = bara.get_bara_model(torch.nn.Sequential(torch.nn.Linear(8, 8)),
        ...                             bara.BaRAConfig(r=4, target_modules=["0"]))
        >>> _ = model(torch.randn(3, 5, 8))
        >>> bara.deterministic_ranks(model)["0"]
        tensor([4, 4, 4])
    """
    return {name: (probs > 0.5).sum(-1) for name, probs in gate_probabilities(model).items()}


def expected_pi(model: BaRAModel) -> dict[str, Tensor]:
    """``{layer: E_q[π] of shape [r]}``.

    Example:
        >>> import bara, torch
        >>> model = bara.get_bara_model(torch.nn.Sequential(torch.nn.Linear(8, 8)),
        ...                             bara.BaRAConfig(r=4, target_modules=["0"]))
        >>> bara.expected_pi(model)["0"]
        tensor([0.9000, 0.9000, 0.9000, 0.9000])
    """
    with torch.no_grad():
        return {name: layer.global_gate.expected_pi().detach() for name, layer in model.bara_layers()}


def rank_summary(model: BaRAModel, gate_probs: dict[str, Tensor] | None = None) -> dict[str, float]:
    """Dataset-level rank statistics.

    ``gate_probs`` holds, per layer, ``E_q[z]`` stacked over a dataset ([N, r]; default: the
    last forward). Returns the joint effective rank ``s̄_{Φ,θ} = E_x s̄(x)`` averaged over
    layers, the mean global rank ``r_glob = Σ_k 1[E_q[π_k] > 0.5]``, the complexity term
    ``J = Σ_k sqrt(p̂_k)`` (p̂_k: fraction of instances whose gate k is on, ``E_q[z_k] > 0.5``),
    the spread of s̄(x) across instances (``effective_rank_std``: does the *number* of factors
    depend on the input?), the mean over layers and factors of the spread of ``E_q[z_k(x)]``
    across instances (``gate_std``: does the *choice* of factors depend on it? it can be large
    while the rank stays constant), and the maximum rank r.

    Example:
        >>> import bara, torch
        >>> model = bara.get_bara_model(torch.nn.Sequential(torch.nn.Linear(8, 8)),
        ...                             bara.BaRAConfig(r=4, target_modules=["0"]))
        >>> _ = model(torch.randn(3, 5, 8))
        >>> summary = bara.rank_summary(model)
        >>> summary["r_glob"], summary["max_rank"]
        (4.0, 4.0)
    """
    probs = gate_probabilities(model) if gate_probs is None else gate_probs
    # E π as seen by the last forward when there was one (no parameter access: FSDP-safe)
    pis = {name: layer.stats.expected_pi.detach() for name, layer in model.bara_layers() if layer.stats is not None}
    pis = pis or expected_pi(model)
    layers = [name for name in pis if name in probs and probs[name].numel() > 0]
    if not layers:
        raise ValueError("no gate statistics yet: run a forward pass in a gated mode first")
    joint, spread, factor_spread, complexity = [], [], [], []
    for name in layers:
        s_bar = probs[name].float().sum(-1)
        joint.append(s_bar.mean())
        several = s_bar.numel() > 1
        spread.append(s_bar.std() if several else s_bar.new_zeros(()))
        factor_spread.append(probs[name].float().std(0).mean() if several else s_bar.new_zeros(()))
        complexity.append(torch.sqrt((probs[name].float() > 0.5).float().mean(0)).sum())
    r_glob = [float((pis[name] > 0.5).sum()) for name in layers]
    return {
        "joint_effective_rank": float(torch.stack(joint).mean()),
        "effective_rank_std": float(torch.stack(spread).mean()),
        "gate_std": float(torch.stack(factor_spread).mean()),
        "r_glob": sum(r_glob) / len(r_glob),
        "complexity_J": float(torch.stack(complexity).mean()),
        "max_rank": float(model.bara_config.r),
    }
