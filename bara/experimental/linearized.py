"""A deterministic predictive that keeps the gates' uncertainty: the gates linearised around their mean.

Experimental: screened against `mean` mode and Monte-Carlo sampling on saved adapters
(`benchmarks/beat-blob/one_pass.py`); not part of the supported API.

In ``sample`` mode a factor k of a layer acts on input n with a gate ``z_nk ~ Bernoulli(p_nk)``,
``p_nk = E_q[π_k] σ(ℓ_k(x_n))`` (the global and the local draw together), and the predictive averages the
softmax over S such draws. Around the mean gates ``p`` each logit is, to first order,

    f_c(z) ≈ f_c(p) + Σ_{layers, k} J_nck (z_nk − p_nk),     J_nck = ∂f_c / ∂z_nk at z = p,

so over the gates the logits are approximately jointly Gaussian around ``f(p)`` (one `mean` pass),
and every difference of two logits has variance

    v_ncj = Σ_{layers, k} (J_nck − J_njk)² p_nk (1 − p_nk)

(independent gates; the stick-breaking prior's shared sticks and the choices of a multiple-choice
example sharing their noise are ignored). The expected softmax then uses the pairwise probit
approximation ``p_c ≈ 1 / (1 + Σ_{j≠c} exp(−(f_c − f_j) / sqrt(1 + π v_cj / 8)))``, which for two
classes is the probit approximation of the logistic, ``σ(Δf / sqrt(1 + π v / 8))``. Differences, not
single logits, carry the uncertainty: a gate that raises one class's logit usually lowers the other's.

The gate enters the layer as ``B (z ⊙ A x)``, so ``J_nck = Σ_t g_ntk (A x)_ntk``, where ``g`` is the
gradient of ``f_c`` with respect to the input of ``lora_B``. A forward pre-hook on each ``lora_B``
makes that input a leaf; one backward per class gives every example's Jacobian at once (examples
do not interact). The cost is one forward and C backward passes: about 1 + 2C forward passes,
5 for a binary task, against S for sampling.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from bara.model import BaRAModel, gate_mode
from bara.objective import gate_probabilities
from bara.predict import Collate, PredictionDataset, Predictions, length_sorted_loader

_MIN_P = 1e-6


def probit_softmax(mean: Tensor, diff_var: Tensor) -> Tensor:
    """``p_c = 1 / (1 + Σ_{j≠c} exp(−(m_c − m_j) / sqrt(1 + π v_cj / 8)))``, renormalised: the pairwise probit
    approximation of ``E[softmax(f)]`` for Gaussian logits with means ``mean`` [n, C] and variances of
    their differences ``diff_var`` [n, C, C].

    Example:
        >>> mean = torch.tensor([[2.0, 0.0]])
        >>> probit_softmax(mean, torch.zeros(1, 2, 2)).allclose(torch.softmax(mean, -1))
        True
        >>> bool(probit_softmax(mean, torch.full((1, 2, 2), 10.0))[0, 0] < torch.softmax(mean, -1)[0, 0])
        True
    """
    gaps = (mean.unsqueeze(-1) - mean.unsqueeze(-2)) / torch.sqrt(1.0 + math.pi * diff_var / 8.0)  # [n, C, C]
    probs = 1.0 / torch.exp(-gaps).sum(-1)  # the j = c term is exp(0) = 1
    return probs / probs.sum(-1, keepdim=True)


def logit_variance(model: BaRAModel, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """The mean-gate logits ``[n, C]`` of ``batch`` and the variance over the gates of every difference of
    two logits ``[n, C, C]`` (first order).

    The model must be in `mean` gate mode and in eval mode; gradients are taken whether or not the
    adapter's parameters require them, and nothing is accumulated into ``.grad``.
    """
    layers = [(name, layer) for name, layer in model.bara_layers() if layer.r > 0]
    leaves: dict[int, Tensor] = {}

    def make_leaf(index: int):
        def hook(module: torch.nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            leaf = args[0].detach().requires_grad_(True)
            leaves[index] = leaf
            return (leaf,) + tuple(args[1:])
        return hook

    handles = [layer.lora_B.register_forward_pre_hook(make_leaf(i)) for i, (_, layer) in enumerate(layers)]
    try:
        with torch.enable_grad():
            logits = model(**batch).logits.float()
            probs = {name: p.detach().float() for name, p in gate_probabilities(model).items()}  # E_q[z], [rows, r]
            inputs = [leaves[i] for i in range(len(layers))]
            n, classes = logits.shape
            jacobians: list[list[Tensor]] = []  # per class, per layer: [n, rows per example × r]
            for c in range(classes):
                column = logits[:, c]
                finite = torch.isfinite(column)  # a masked (padding) choice has no gradient to give
                grads = torch.autograd.grad(column[finite].sum(), inputs, retain_graph=c < classes - 1,
                                            allow_unused=True) if bool(finite.any()) else [None] * len(inputs)
                per_layer = []
                for (name, _), leaf, grad in zip(layers, inputs, grads):
                    p = probs[name]
                    if grad is None:
                        per_layer.append(torch.zeros(n, p.numel() // n))
                        continue
                    h = leaf.detach().float() / p.clamp(min=_MIN_P).view(p.shape[0], *([1] * (leaf.dim() - 2)), p.shape[1])
                    jac = (grad.float() * h).reshape(p.shape[0], -1, p.shape[1]).sum(1)  # [rows, r]
                    per_layer.append(jac.reshape(n, -1))
                jacobians.append(per_layer)
    finally:
        for handle in handles:
            handle.remove()
    gate_var = torch.cat([(probs[name] * (1 - probs[name])).reshape(n, -1) for name, _ in layers], dim=1)  # [n, G]
    jac = torch.stack([torch.cat(per_layer, dim=1) for per_layer in jacobians], dim=1)  # [n, C, G]
    diff = jac.unsqueeze(2) - jac.unsqueeze(1)  # [n, C, C, G]
    return logits.detach(), (diff.square() * gate_var[:, None, None, :]).sum(-1)


def linearized_predict(model: BaRAModel, dataset: PredictionDataset, collator: Collate, *, batch_size: int = 32,
                       device: str | torch.device = "cpu") -> Predictions:
    """Predict every example of ``dataset`` with the linearised-gate predictive (module docstring).

    Example:
        >>> preds = linearized_predict(model, eval_set, collator)                    # doctest: +SKIP
        >>> bool(torch.allclose(preds.probs.sum(-1), torch.ones(len(eval_set))))     # doctest: +SKIP
        True
    """
    if not isinstance(model, BaRAModel):
        raise TypeError(f"linearized_predict needs a BaRAModel, got {type(model).__name__}")
    model.eval()
    loader, restore = length_sorted_loader(dataset, collator, batch_size)
    out = []
    start = time.perf_counter()
    with gate_mode(model, "mean"):
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            mean, diff_var = logit_variance(model, batch)
            probs = probit_softmax(mean, diff_var)
            out.append(torch.nn.functional.pad(probs, (0, dataset.num_classes - probs.shape[-1])).cpu())
    probs = torch.cat(out)[restore]
    return Predictions(probs=probs, labels=dataset.labels, seconds=time.perf_counter() - start)
