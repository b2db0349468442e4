"""Fitting the local gates on held-out data (a research option for check C7).

The ELBO fits the gates on the training set, where the adapter can fit almost every example:
its likelihood term rewards keeping factors wherever the training labels can be matched, which
is where the adapter overfits and where calibration on new data would want noise (DESIGN §6;
``benchmarks/results/c7-mixture-gates.md``). Here the adapter is trained on part of the
training set and the local-gate network is then refitted, with everything else frozen, on the
held-out rest, to maximise the Monte-Carlo *predictive* log-likelihood

    log (1/S) Σ_s p(y | x, z_s),     z_s ~ q(z | x)

(hard 0/1 draws in the forward pass, as prediction draws them, with binary-Concrete gradients:
straight-through), minus the configured local KL (weight β_l, as in training). Unlike the expected log-likelihood
of the ELBO, the predictive rewards spreading the S samples where the adapter is wrong, so the
gates learn how much of each factor to drop for which input. The global gates, the factors and
the head keep their trained values; the data-average keep-probability may move, and the C7
control (constant gates) takes the refitted average, so C7 still asks whether the input
dependence beats input-independent dropout at the same rate.

Example:
    >>> log = refit_local_gates(model, holdout, collator, epochs=10)   # doctest: +SKIP
    >>> log["holdout_nll_before"], log["holdout_nll_after"]             # doctest: +SKIP
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader

from bara.harness.data import Collator, EncodedDataset
from bara.model import BaRAModel, gate_mode
from bara.objective import kl_terms
from bara.predict import _repeat


def split_holdout(dataset: EncodedDataset, fraction: float, seed: int) -> tuple[EncodedDataset, EncodedDataset]:
    """A seeded random split into (training part, held-out part of ``fraction``), the same on every call.

    Example:
        >>> train, held = split_holdout(train_set, 0.2, seed=1)   # doctest: +SKIP
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"gate_holdout={fraction!r} must lie strictly between 0 and 1")
    held = round(fraction * len(dataset))
    if held < 1 or held >= len(dataset):
        raise ValueError(f"gate_holdout={fraction} of {len(dataset)} training examples leaves no example on one side")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    pick = lambda idx: EncodedDataset([dataset.items[i] for i in sorted(idx)], dataset.head, dataset.num_classes)
    return pick(order[held:]), pick(order[:held])


SCOPES = ("affine", "full")


class _Scaled(nn.Module):
    """Parametrization ``W ↦ s · W`` with one learnable scalar s (starts at 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, weight: Tensor) -> Tensor:
        return self.scale * weight


@contextmanager
def _refit_parameters(model: BaRAModel, scope: str, moves: dict[str, Any]) -> Iterator[list[nn.Parameter]]:
    """Within the block only the refitted gate parameters require gradients; everything is restored after.
    ``moves`` receives, per layer, how far the refit moved the gate biases (mean change) and, for
    ``affine``, the scale it gave the weights.

    ``full``: every local-gate weight and bias. ``affine``: per layer, the r biases and one scale
    of the trained weight, ``ℓ(x) = s · W LN(x̄) + b`` (r + 1 numbers; s < 0 reverses the learned
    input dependence; a torch parametrization, folded back into W at the end, so the saved adapter
    has its usual tensors).
    """
    if scope not in SCOPES:
        raise ValueError(f"refit scope {scope!r} is unknown; allowed: {', '.join(SCOPES)}")
    before = {name: p.requires_grad for name, p in model.named_parameters()}
    gates = [layer.local_gate for _, layer in model.bara_layers()]
    context_free = [not gate.weight.requires_grad for gate in gates]  # context_dependent=False: W_g stays 0
    for p in model.parameters():
        p.requires_grad_(False)
    biases = [gate.bias.detach().clone() for gate in gates]
    params: list[nn.Parameter] = []
    for gate, frozen in zip(gates, context_free):
        if scope == "full":
            params += [gate.bias] if frozen else [gate.weight, gate.bias]
        else:
            parametrize.register_parametrization(gate, "weight", _Scaled())
            params += [gate.bias, gate.parametrizations.weight[0].scale]
    for p in params:
        p.requires_grad_(True)
    try:
        yield params
    finally:
        moves["bias_shifts"] = [float((gate.bias.detach() - bias).mean()) for gate, bias in zip(gates, biases)]
        if scope == "affine":
            moves["scales"] = [float(gate.parametrizations.weight[0].scale) for gate in gates]
            for gate in gates:
                parametrize.remove_parametrizations(gate, "weight", leave_parametrized=True)
        for name, p in model.named_parameters():
            p.requires_grad_(before[name])


@contextmanager
def _relaxed_gates_without_dropout(model: BaRAModel, straight_through: bool) -> Iterator[None]:
    """Backbone in eval mode (no dropout, as at prediction) but BaRA layers in training mode, so
    the gates are drawn from the reparameterised relaxation and carry gradients; with
    ``straight_through`` the forward pass uses hard 0/1 gates, the distribution prediction samples."""
    was_training = model.training
    layers = [layer for _, layer in model.bara_layers()]
    relaxation = [layer.straight_through for layer in layers]
    model.eval()
    for layer in layers:
        layer.train()
        layer.straight_through = straight_through or layer.straight_through
    try:
        with gate_mode(model, "sample"):
            yield
    finally:
        model.train(was_training)
        for layer, kind in zip(layers, relaxation):
            layer.straight_through = kind


def predictive_nll(model: BaRAModel, batch: dict[str, Tensor], samples: int) -> Tensor:
    """``mean_n −log (1/S) Σ_s p(y_n | x_n, z_s)`` with the S copies in one forward pass."""
    labels = batch["labels"]
    inputs = _repeat({k: v for k, v in batch.items() if k != "labels"}, samples)
    log_probs = torch.log_softmax(model(**inputs).logits.float(), dim=-1)
    n = labels.shape[0]
    picked = log_probs.view(samples, n, -1).gather(-1, labels.view(1, n, 1).expand(samples, n, 1)).squeeze(-1)
    return -(torch.logsumexp(picked, dim=0) - math.log(samples)).mean()


# the default refit learning rates: the affine scope moves few numbers, the full scope every gate weight
REFIT_LR = {"affine": 0.05, "full": 5e-3}


def refit_local_gates(model: BaRAModel, holdout: EncodedDataset, collator: Collator, *, epochs: float = 10.0,
                      lr: float | None = None, samples: int = 4, batch_size: int = 16, seed: int = 1,
                      scope: str = "affine", straight_through: bool = True, progress: bool = False) -> dict[str, Any]:
    """Refit the local gates of ``model`` on ``holdout`` (everything else frozen).

    Args:
        holdout: examples the adapter was not trained on.
        epochs: passes over ``holdout`` (fractions allowed; at least one step).
        lr: Adam learning rate of the gate parameters; by default ``REFIT_LR[scope]``: 0.05 for
            ``affine`` (r + 1 numbers per layer), 5e-3 for ``full`` (every gate weight).
        samples: S, the relaxed gate draws per example in the predictive likelihood.
        scope: ``"affine"`` refits, per layer, the gate biases and one scale of the trained gate
            weights (r + 1 numbers: how much keep-probability, and how strongly to follow the
            input dependence the ELBO learned); ``"full"`` refits every gate weight, which can
            fit a small held-out set by heart (on the SST-2+BoolQ mixture, seed 1, its held-out NLL
            fell from 0.70 to 0.42, the affine refit's to 0.64, yet both gave the same test NLL,
            0.680 and 0.682, from 0.716 without a refit; `benchmarks/results/c7-mixture-refit.md` and
            `c7-mixture-refit-log.md`).
        straight_through: hard gates in the forward pass (relaxed gradients), so the likelihood
            fitted is that of the gates prediction draws; ``False`` keeps the configured relaxation.

    Returns:
        ``steps``, the held-out predictive NLL (S samples) before and after, the local KL after
        the last step, each layer's mean bias change (``bias_shifts``) and, for ``affine``, each
        layer's weight scale (``scales``).
    """
    if not isinstance(model, BaRAModel):
        raise TypeError(f"refit_local_gates needs a BaRAModel, got {type(model).__name__}")
    if scope not in SCOPES:
        raise ValueError(f"refit scope {scope!r} is unknown; allowed: {', '.join(SCOPES)}")
    lr = REFIT_LR[scope] if lr is None else lr
    if samples < 1 or epochs <= 0 or lr <= 0:
        raise ValueError(f"refit needs samples >= 1, epochs > 0 and lr > 0 (got {samples}, {epochs}, {lr})")
    beta_local = model.bara_config.beta_local
    loader = DataLoader(holdout, batch_size=batch_size, shuffle=True, collate_fn=collator,
                        generator=torch.Generator().manual_seed(seed))
    steps = max(1, math.ceil(epochs * len(loader)))
    moves: dict[str, Any] = {}
    with torch.random.fork_rng(), _refit_parameters(model, scope, moves) as params, _relaxed_gates_without_dropout(model, straight_through):
        torch.manual_seed(seed)
        before = _mean_nll(model, holdout, collator, samples, batch_size)
        optimizer = torch.optim.Adam(params, lr=lr)
        done, local_kl = 0, float("nan")
        while done < steps:
            for batch in loader:
                loss = predictive_nll(model, batch, samples)
                kl = kl_terms(model, len(holdout)).local_kl
                optimizer.zero_grad()
                (loss + beta_local * kl).backward()
                optimizer.step()
                done, local_kl = done + 1, float(kl.detach())
                if progress and done % 10 == 0:
                    print(f"gate refit step {done}/{steps}: predictive NLL {float(loss):.4f}, local KL {local_kl:.3f}")
                if done == steps:
                    break
        after = _mean_nll(model, holdout, collator, samples, batch_size)
    return {"steps": steps, "holdout_size": len(holdout), "samples": samples, "lr": lr, "scope": scope,
            "holdout_nll_before": before, "holdout_nll_after": after, "local_kl": local_kl} | moves


def _mean_nll(model: BaRAModel, dataset: EncodedDataset, collator: Collator, samples: int, batch_size: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator)
    total = 0.0
    with torch.no_grad():
        for batch in loader:
            total += float(predictive_nll(model, batch, samples)) * batch["labels"].shape[0]
    return total / len(dataset)
