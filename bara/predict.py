"""Predictive distributions: Monte-Carlo averages of softmax probabilities, or one `mean` pass.

In ``sample`` mode the S samples of a batch go through the model together (the batch is
repeated S times along its first axis, in chunks of at most ``max_rows`` rows), so S samples
cost one large forward instead of S small ones. Examples go through longest first, so that a
batch pads little (the dataset's `longest_first` order); the results come back in dataset order.
Gate statistics (``E_q[z]`` per instance and
layer) are collected along the way for the rank report.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from bara.layer import GATE_MODES
from bara.model import BaRAModel, gate_mode
from bara.objective import gate_probabilities

try:  # a progress bar when rich is present
    from rich.progress import track
except ImportError:  # pragma: no cover
    def track(it, **_):
        return it


class PredictionDataset(Protocol):
    """What `predict` needs of a dataset: indexable examples that a collate function batches, the labels
    ``[N]``, the class count (multiple-choice batches are padded to it), a domain tag per example
    (``None`` where there is none) and the longest-first order of the examples."""

    num_classes: int

    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> Any: ...
    @property
    def labels(self) -> Tensor: ...
    @property
    def domains(self) -> list[str | None]: ...
    def longest_first(self) -> list[int]: ...


Collate = Callable[[list[Any]], dict[str, Tensor]]


def enable_dropout(model: nn.Module) -> None:
    """Switch every dropout of ``model`` on (MC-dropout); everything else stays in eval mode.

    That is every dropout layer, and the attention dropout: transformers' attention modules drop
    attention probabilities only when the attention module itself is in training mode (they pass
    ``dropout=p if self.training else 0`` to the attention function), so each attention module's own
    flag is set too — not with ``.train()``, which would also put its projections (and any adapter
    layers inside them) in training mode. ``model.eval()`` undoes all of it.
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout) or module.__class__.__name__.endswith("Dropout"):
            module.train()
        elif module.__class__.__name__.endswith("Attention"):
            module.training = True


@dataclass
class Predictions:
    """Predictions on one split. ``probs`` is the mean predictive ``[N, K]``."""

    probs: Tensor
    labels: Tensor
    sample_probs: Tensor | None = None  # [S, N, K] when sampled
    gate_probs: dict[str, Tensor] = field(default_factory=dict)  # layer -> [N, r] (choices averaged)
    domains: list[str | None] = field(default_factory=list)
    seconds: float = 0.0

    def first_samples(self, k: int) -> "Predictions":
        """The predictive of the first ``k`` Monte-Carlo samples (ECE-vs-S without new passes)."""
        if self.sample_probs is None or not 1 <= k <= self.sample_probs.shape[0]:
            raise ValueError(f"cannot take {k} samples from predictions with {0 if self.sample_probs is None else self.sample_probs.shape[0]}")
        subset = self.sample_probs[:k]
        return Predictions(subset.mean(0), self.labels, subset, self.gate_probs, self.domains, self.seconds * k / self.sample_probs.shape[0])

    @property
    def instance_ranks(self) -> Tensor | None:
        """Per-example s̄(x), averaged over layers, or None for models without gates."""
        if not self.gate_probs:
            return None
        return torch.stack([p.sum(-1) for p in self.gate_probs.values()]).mean(0)


def length_sorted_loader(dataset: PredictionDataset, collator: Collate, batch_size: int,
                         longest_first: bool = True) -> tuple[DataLoader, Tensor]:
    """A loader over ``dataset`` longest example first, and the index that puts what comes out of it
    back in dataset order: ``outputs[restore]`` (with ``longest_first=False``: dataset order throughout)."""
    order = dataset.longest_first() if longest_first else list(range(len(dataset)))
    loader = DataLoader(Subset(dataset, order), batch_size=batch_size, shuffle=False, collate_fn=collator)
    return loader, torch.argsort(torch.tensor(order, dtype=torch.long))


def _repeat(batch: dict[str, Tensor], times: int) -> dict[str, Tensor]:
    return {k: v.repeat(times, *([1] * (v.dim() - 1))) for k, v in batch.items()}


def is_stochastic(model: nn.Module, mode: str) -> bool:
    """Whether predictions in ``mode`` are random (and so averaged over samples): for a
    `BaRAModel`, any mode in which a gate is sampled (``sample``, ``global``, ``local``,
    ``constant``); for other models, ``sample``."""
    if isinstance(model, BaRAModel):
        if mode not in GATE_MODES:
            raise ValueError(f"gate mode {mode!r} is unknown; allowed: {', '.join(GATE_MODES)}")
        return GATE_MODES[mode].random
    return mode == "sample"


def _collect_gates(model: nn.Module, batch: dict[str, Tensor], reps: int, n: int, out: dict[str, list[Tensor]]) -> None:
    """Append E_q[z] of the first copy of the batch, one row per example (real choices averaged)."""
    if not isinstance(model, BaRAModel):
        return
    choice_mask = batch.get("choice_mask") if batch["input_ids"].dim() == 3 else None
    for name, probs in gate_probabilities(model).items():
        rows = probs[: probs.shape[0] // reps].view(n, -1, probs.shape[-1])
        if choice_mask is None:
            rows = rows.mean(1)
        else:
            weights = choice_mask.to(rows.dtype).unsqueeze(-1)
            rows = (rows * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        out.setdefault(name, []).append(rows.cpu())


@torch.no_grad()
def predict(model: nn.Module, dataset: PredictionDataset, collator: Collate, *, mode: str = "sample", samples: int = 10,
            batch_size: int = 32, max_rows: int = 512, device: str | torch.device = "cpu",
            sample_fn: Callable[[nn.Module], None] | None = None, progress: bool = False,
            longest_first: bool = True) -> Predictions:
    """Predict every example of ``dataset``.

    Args:
        model: a `BaRAModel` (gates set by ``mode``) or any model returning ``.logits``.
        mode: ``sample`` (average over ``samples`` stochastic passes), ``mean`` (one pass with
            expected gates) or any other gate mode of `bara.gate_mode`; for models without
            gates, ``sample`` with ``samples > 1`` requires something stochastic in eval
            (e.g. MC-dropout: pass ``sample_fn`` that switches dropout on).
        samples: S, the number of Monte-Carlo samples in ``sample`` mode.
        max_rows: the most rows (examples × samples) sent through the model at once; batches
            are cut to at most ``max_rows`` examples.
        longest_first: send the examples longest first, so that each batch pads little (the
            results come back in dataset order either way); ``False`` keeps dataset order.

    Example:
        >>> preds = predict(model, eval_set, collator, mode="sample", samples=10)   # doctest: +SKIP
        >>> bool(torch.allclose(preds.probs.sum(-1), torch.ones(len(eval_set))))     # doctest: +SKIP
        True
    """
    model.eval()
    if sample_fn is not None:
        sample_fn(model)
    stochastic = is_stochastic(model, mode)
    s_total = samples if stochastic else 1
    # one batch of examples never exceeds max_rows, so S copies of it fit in chunks of max_rows rows
    loader, restore = length_sorted_loader(dataset, collator, max(1, min(batch_size, max_rows)), longest_first)
    all_samples, all_gates = [], {}
    start = time.perf_counter()
    context = gate_mode(model, mode) if isinstance(model, BaRAModel) else contextlib.nullcontext()
    with context:
        batches = track(loader, description=f"predict ({mode}, S={s_total})") if progress else loader
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            n = batch["input_ids"].shape[0]
            per_chunk = max(1, min(s_total, max_rows // n))
            chunks, done = [], 0
            while done < s_total:
                reps = min(per_chunk, s_total - done)
                logits = model(**_repeat(batch, reps)).logits.float()
                probs = torch.softmax(logits, -1).view(reps, n, -1)
                # batches of multiple-choice examples may have fewer choices than the widest example
                chunks.append(F.pad(probs, (0, dataset.num_classes - probs.shape[-1])))
                if done == 0:
                    _collect_gates(model, batch, reps, n, all_gates)
                done += reps
            all_samples.append(torch.cat(chunks).cpu())
    if sample_fn is not None:
        model.eval()  # switch off what sample_fn switched on (e.g. MC-dropout's dropout layers)
    sample_probs = torch.cat(all_samples, dim=1)[:, restore]
    return Predictions(
        probs=sample_probs.mean(0),
        labels=dataset.labels,
        sample_probs=sample_probs if stochastic else None,
        gate_probs={name: torch.cat(rows)[restore] for name, rows in all_gates.items()},
        domains=dataset.domains,
        seconds=time.perf_counter() - start,
    )
