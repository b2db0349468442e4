"""Classification and uncertainty metrics for (Bayesian) predictive distributions.

Every function takes plain torch tensors:

* ``probs``: ``[N, K]`` floating tensor, the (mean) predictive distribution; each row must
  sum to 1 (tolerance ``1e-3``) and be non-negative.
* ``labels``: ``[N]`` integer tensor with values in ``[0, K)``.
* ``sample_probs``: ``[S, N, K]`` floating tensor of per-sample predictive distributions
  (e.g. ``S`` Monte-Carlo draws of the adapter weights), each row summing to 1.

Multiple-choice tasks with a varying number of choices are supported by zero padding:
padded choices must have probability exactly 0. They then never win the argmax, add
nothing to the entropies (``0 log 0 = 0``) and contribute ``(0 - 0)^2 = 0`` to the Brier
score, so every metric below equals the metric computed on the unpadded rows.

Scalar metrics are returned as Python ``float``; per-example quantities as tensors.
All computations run without autograd on detached copies of the inputs.

Invalid inputs raise :class:`ValueError` with a one-line message naming the problem.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torchmetrics.functional.classification import multiclass_calibration_error

__all__ = [
    "ROW_SUM_TOLERANCE",
    "accuracy",
    "brier_score",
    "classification_report",
    "domain_permutation_test",
    "error_detection_auroc",
    "expected_calibration_error",
    "mutual_information",
    "negative_log_likelihood",
    "paired_bootstrap",
    "predictive_entropy",
    "reliability_bins",
    "separation_auroc",
]

#: Maximum allowed ``|sum_k p_k - 1|`` for a row of a probability tensor.
ROW_SUM_TOLERANCE = 1e-3

# Small negative entries (e.g. from float round-off in ``1 - p``) are tolerated and
# clamped to 0; anything below ``-_NEG_TOLERANCE`` is rejected.
_NEG_TOLERANCE = 1e-6

# Largest float32 strictly below 1. Confidences are capped at this value before binning so
# that a confidence of exactly 1.0 falls into the last bin ``[1 - 1/n_bins, 1]``
# (``torch.bucketize(..., right=True)``, which torchmetrics uses, would otherwise put it
# into an extra bin of its own). The change in ECE is below 6e-8.
_MAX_CONF = 1.0 - 2.0**-24


# --------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------


def _check_probs(probs: Tensor, name: str = "probs") -> Tensor:
    """Validate a ``[..., K]`` probability tensor and return a float64 detached CPU copy."""
    if not isinstance(probs, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(probs).__name__}")
    if not probs.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {probs.dtype}")
    if probs.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(probs.shape)})")
    k = probs.shape[-1]
    if k < 2:
        raise ValueError(f"{name} must have at least 2 classes in its last dimension, got {k}")
    p = probs.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(p).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    min_val = float(p.min())
    if min_val < -_NEG_TOLERANCE:
        raise ValueError(f"{name} contains negative probabilities (min {min_val:.3g})")
    row_err = (p.sum(dim=-1) - 1.0).abs()
    worst = float(row_err.max())
    if worst > ROW_SUM_TOLERANCE:
        raise ValueError(
            f"{name} rows must sum to 1 (tolerance {ROW_SUM_TOLERANCE:g}); "
            f"worst row is off by {worst:.3g}"
        )
    return p.clamp_min(0.0)


def _check_probs_2d(probs: Tensor, name: str = "probs") -> Tensor:
    if isinstance(probs, Tensor) and probs.dim() != 2:
        raise ValueError(f"{name} must have shape [N, K], got {tuple(probs.shape)}")
    return _check_probs(probs, name)


def _check_labels(labels: Tensor, n: int, k: int) -> Tensor:
    """Validate ``[N]`` integer labels in ``[0, K)`` and return a detached CPU int64 copy."""
    if not isinstance(labels, Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if labels.dim() != 1:
        raise ValueError(f"labels must have shape [N], got {tuple(labels.shape)}")
    if labels.shape[0] != n:
        raise ValueError(f"shape mismatch: probs has N={n} rows but labels has {labels.shape[0]}")
    y = labels.detach().to(device="cpu", dtype=torch.int64)
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= k:
        raise ValueError(f"labels out of range: expected values in [0, {k - 1}], got min {lo} and max {hi}")
    return y


def _check_pair(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    p = _check_probs_2d(probs)
    y = _check_labels(labels, p.shape[0], p.shape[1])
    return p, y


def _check_n_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return n_bins


def _check_sample_probs(sample_probs: Tensor) -> Tensor:
    if isinstance(sample_probs, Tensor) and sample_probs.dim() != 3:
        raise ValueError(f"sample_probs must have shape [S, N, K], got {tuple(sample_probs.shape)}")
    return _check_probs(sample_probs, "sample_probs")


def _entropy(p: Tensor) -> Tensor:
    """Shannon entropy (nats) over the last dimension, with ``0 log 0 = 0``."""
    return -torch.special.xlogy(p, p).sum(dim=-1)


# --------------------------------------------------------------------------------------
# scalar metrics
# --------------------------------------------------------------------------------------


def accuracy(probs: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy of the predictive ``probs`` ``[N, K]`` against ``labels`` ``[N]``.

    Ties are broken towards the lowest class index (``torch.argmax``).
    """
    p, y = _check_pair(probs, labels)
    return float((p.argmax(dim=1) == y).double().mean())


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """Top-label expected calibration error (L1), as a fraction in ``[0, 1]``.

    ``ECE = sum_b (|B_b| / N) * |acc(B_b) - conf(B_b)|`` over ``n_bins`` equal-width bins of
    the top-label confidence ``max_k p_k``; computed with torchmetrics'
    ``multiclass_calibration_error`` (``norm="l1"``), which also covers ``K = 2``.
    Bins are ``[lo, hi)`` except the last one, which is closed (a confidence of exactly 1
    belongs to it). The per-bin statistics are available from :func:`reliability_bins`.
    """
    p, y = _check_pair(probs, labels)
    n_bins = _check_n_bins(n_bins)
    # Capping keeps every entry in [0, 1) so torchmetrics never mistakes the input for
    # logits, and puts confidence 1.0 in the last regular bin (see ``_MAX_CONF``).
    p = p.clamp(0.0, _MAX_CONF)
    ece = multiclass_calibration_error(
        p, y, num_classes=p.shape[1], n_bins=n_bins, norm="l1", validate_args=False
    )
    return float(ece)


def negative_log_likelihood(probs: Tensor, labels: Tensor, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood ``-mean_i log p_i[y_i]`` (nats).

    The probability of the true class is clamped below at ``eps`` so that a zero
    probability gives a large finite value (``-log eps``) instead of ``inf``.
    """
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}")
    p, y = _check_pair(probs, labels)
    p_true = p.gather(1, y.unsqueeze(1)).squeeze(1)
    return float(-torch.log(p_true.clamp_min(eps)).mean())


def brier_score(probs: Tensor, labels: Tensor) -> float:
    """Multiclass Brier score: ``mean_i sum_k (p_ik - 1[k = y_i])^2`` (range ``[0, 2]``).

    Zero-padded classes have probability 0 and target 0, so they contribute nothing.
    """
    p, y = _check_pair(probs, labels)
    onehot = torch.nn.functional.one_hot(y, num_classes=p.shape[1]).to(p.dtype)
    return float(((p - onehot) ** 2).sum(dim=1).mean())


# --------------------------------------------------------------------------------------
# uncertainty decomposition
# --------------------------------------------------------------------------------------


def separation_auroc(score: Tensor, positive: Tensor) -> float:
    """AUROC of ``score`` for telling ``positive`` from the other entries: the probability that a random
    positive scores higher than a random negative, ties counting one half (Mann-Whitney U from average
    ranks). NaN when there are no positives or no negatives."""
    positive = positive.bool()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = score.double().argsort()
    _, inverse, counts = torch.unique_consecutive(score.double()[order], return_inverse=True, return_counts=True)
    mean_rank = counts.cumsum(0).double() - (counts.double() - 1) / 2  # tied entries share their mean rank
    ranks = torch.empty(len(score), dtype=torch.float64)
    ranks[order] = mean_rank[inverse]
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def error_detection_auroc(probs: Tensor, labels: Tensor) -> float:
    """How well the top-label confidence separates right from wrong predictions (AUROC, 0.5 = chance).

    The quantity behind selective prediction ("abstain when unsure"): the probability that a random
    correct prediction has higher confidence than a random wrong one, ties counting one half.
    NaN when every prediction is right, or every one wrong.
    """
    p, y = _check_pair(probs, labels)
    conf, pred = p.max(dim=1)
    return separation_auroc(conf, pred == y)


def predictive_entropy(probs: Tensor) -> Tensor:
    """Entropy ``H[p] = -sum_k p_k log p_k`` (nats) of each row of ``probs`` ``[N, K]``.

    Returns a float32 tensor of shape ``[N]``; the uniform distribution over K classes
    gives ``log K`` and zero-padded classes contribute 0.
    """
    p = _check_probs_2d(probs)
    return _entropy(p).clamp_min(0.0).float()


def mutual_information(sample_probs: Tensor) -> Tensor:
    """Epistemic uncertainty ``I = H[mean_s p_s] - mean_s H[p_s]`` per example.

    ``sample_probs`` has shape ``[S, N, K]``. The result (float32, shape ``[N]``, nats) is
    the BALD mutual information between the prediction and the weights; it is
    non-negative by Jensen's inequality and is clamped at 0 to remove round-off.
    It is 0 when all samples agree and grows as they disagree.
    """
    sp = _check_sample_probs(sample_probs)
    total = _entropy(sp.mean(dim=0))
    aleatoric = _entropy(sp).mean(dim=0)
    return (total - aleatoric).clamp_min(0.0).float()


# --------------------------------------------------------------------------------------
# reports and reliability
# --------------------------------------------------------------------------------------


def classification_report(
    probs: Tensor, labels: Tensor, sample_probs: Tensor | None = None, n_bins: int = 15
) -> dict[str, float]:
    """All scalar metrics at once.

    Returns a dict with keys ``accuracy``, ``ece`` (fraction, ``n_bins`` bins), ``nll``,
    ``brier``, ``n_examples`` and ``mean_entropy`` (mean predictive entropy of ``probs``,
    nats). When ``sample_probs`` ``[S, N, K]`` is given, ``mean_mutual_information`` is
    added; its ``N`` and ``K`` must match ``probs``. All values are Python floats.
    """
    p, y = _check_pair(probs, labels)
    report: dict[str, float] = {
        "accuracy": accuracy(p, y),
        "ece": expected_calibration_error(p, y, n_bins=n_bins),
        "nll": negative_log_likelihood(p, y),
        "brier": brier_score(p, y),
        "n_examples": float(p.shape[0]),
        "mean_entropy": float(predictive_entropy(p).double().mean()),
    }
    if sample_probs is not None:
        if isinstance(sample_probs, Tensor) and sample_probs.dim() == 3 and sample_probs.shape[1:] != p.shape:
            raise ValueError(
                f"shape mismatch: sample_probs {tuple(sample_probs.shape)} does not match "
                f"probs [N, K] = {tuple(p.shape)}"
            )
        report["mean_mutual_information"] = float(mutual_information(sample_probs).double().mean())
    return report


def reliability_bins(probs: Tensor, labels: Tensor, n_bins: int = 15) -> dict[str, Tensor]:
    """Per-bin statistics of the top-label confidence, for reliability diagrams.

    Uses the same ``n_bins`` equal-width bins as :func:`expected_calibration_error`
    (``[lo, hi)``, the last bin closed). Returns a dict of ``[n_bins]`` float64 tensors:

    * ``lower`` / ``upper``: bin edges;
    * ``confidence``: mean top-label confidence of the examples in the bin;
    * ``accuracy``: fraction of those examples whose argmax equals the label;
    * ``count``: number of examples in the bin.

    ``confidence`` and ``accuracy`` are NaN for empty bins. Up to float round-off,
    ``sum(count * |accuracy - confidence|) / N`` (over non-empty bins) equals the ECE.
    """
    p, y = _check_pair(probs, labels)
    n_bins = _check_n_bins(n_bins)
    conf, pred = p.max(dim=1)
    correct = (pred == y).double()
    # Assign bins exactly as torchmetrics does (float32 confidences and edges), so that
    # these bins reproduce ``expected_calibration_error``.
    edges32 = torch.linspace(0, 1, n_bins + 1, dtype=torch.float32)
    conf32 = conf.clamp(0.0, _MAX_CONF).float()
    idx = (torch.bucketize(conf32, edges32, right=True) - 1).clamp(0, n_bins - 1)

    count = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, idx, torch.ones_like(conf))
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, idx, conf)
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).scatter_add_(0, idx, correct)
    nonempty = count > 0
    nan = torch.full((n_bins,), math.nan, dtype=torch.float64)
    safe = count.clamp_min(1.0)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    return {
        "lower": edges[:-1].clone(),
        "upper": edges[1:].clone(),
        "confidence": torch.where(nonempty, conf_sum / safe, nan),
        "accuracy": torch.where(nonempty, acc_sum / safe, nan),
        "count": count,
    }


def paired_bootstrap(metric: str, probs_a: Tensor, probs_b: Tensor, labels: Tensor, *, n_boot: int = 1000,
                     seed: int = 0, level: float = 0.95) -> dict[str, float]:
    """Difference ``metric(a) − metric(b)`` of two predictors on the same examples, with a bootstrap interval.

    The examples are resampled with replacement ``n_boot`` times and both predictors are scored on the
    same resample, so the interval reflects only the difference between them (the examples' own
    difficulty cancels). ``metric`` is ``"nll"``, ``"ece"``, ``"brier"``, ``"accuracy"`` or ``"auroc"``
    (:func:`error_detection_auroc`; higher is better, unlike the first three). Returns
    ``diff`` (on all examples), ``low``/``high`` (the central ``level`` interval) and ``frac_below_zero``
    (share of resamples where a scores lower than b).

    Example:
        >>> y = torch.tensor([0, 1, 1, 0])
        >>> a = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.8, 0.2]])
        >>> b = torch.tensor([[0.6, 0.4], [0.4, 0.6], [0.5, 0.5], [0.6, 0.4]])
        >>> paired_bootstrap("nll", a, b, y, n_boot=200)["diff"] < 0
        True
    """
    scorers = {"nll": negative_log_likelihood, "ece": expected_calibration_error, "brier": brier_score, "accuracy": accuracy,
               "auroc": error_detection_auroc}
    if metric not in scorers:
        raise ValueError(f"metric={metric!r}; allowed: {', '.join(scorers)}")
    if not 0 < level < 1 or n_boot < 1:
        raise ValueError(f"need 0 < level < 1 and n_boot ≥ 1, got level={level}, n_boot={n_boot}")
    a, y = _check_pair(probs_a, labels)
    b, _ = _check_pair(probs_b, labels)
    if a.shape != b.shape:
        raise ValueError(f"probs_a {tuple(a.shape)} and probs_b {tuple(b.shape)} must score the same examples")
    score = scorers[metric]
    gen = torch.Generator().manual_seed(seed)
    diffs = []
    for _ in range(n_boot):
        idx = torch.randint(0, y.shape[0], (y.shape[0],), generator=gen)
        diffs.append(score(a[idx], y[idx]) - score(b[idx], y[idx]))
    d = torch.tensor(diffs, dtype=torch.float64)
    tail = (1 - level) / 2
    return {"diff": score(a, y) - score(b, y), "low": float(d.quantile(tail)), "high": float(d.quantile(1 - tail)),
            "frac_below_zero": float((d < 0).double().mean())}


def domain_permutation_test(values: Tensor, domains: list[str], *, rounds: int = 2000, seed: int = 0) -> dict[str, float]:
    """Do per-domain means of ``values`` differ more than chance? (does the rank or the gate pattern follow the domain?).

    ``values`` is ``[N]`` (e.g. the per-instance rank s̄(x)) or ``[N, D]`` (e.g. every layer's gate
    probabilities side by side). The statistic is the example-weighted spread of the domain means
    around the overall mean (summed over the ``D`` columns); its p-value is the share of ``rounds``
    random relabelings of the domains that reach it (with the usual +1 correction, so never 0); domain
    means that agree to float32 resolution (relative 1e-6) count as equal, p = 1.
    Returns ``statistic``, ``p_value`` and ``n_domains``.

    Example:
        >>> v = torch.tensor([1.0, 1.1, 0.9, 1.2, 3.0, 3.1, 2.9, 3.2])
        >>> domain_permutation_test(v, ["a"] * 4 + ["b"] * 4, rounds=500)["p_value"] < 0.05
        True
    """
    x = torch.as_tensor(values, dtype=torch.float64)
    x = x[:, None] if x.dim() == 1 else x
    if x.dim() != 2 or x.shape[0] != len(domains):
        raise ValueError(f"values must be [N] or [N, D] with N = len(domains) = {len(domains)}, got {tuple(x.shape)}")
    names = sorted(set(domains))
    if len(names) < 2:
        raise ValueError(f"need at least two domains, got {names}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    codes = torch.tensor([names.index(d) for d in domains])
    onehot = torch.nn.functional.one_hot(codes, len(names)).double()  # [N, G]
    centred = x - x.mean(0)

    def spread(assign: Tensor) -> Tensor:  # assign: [..., N, G]; sum_g n_g |mean_g|^2
        sums = assign.transpose(-1, -2) @ centred  # [..., G, D]
        counts = assign.sum(-2).clamp_min(1)[..., None]
        return (sums.pow(2) / counts).sum((-1, -2))

    observed = spread(onehot)
    result = {"statistic": float(observed / len(domains)), "p_value": 1.0, "n_domains": float(len(names))}
    # domain means closer than float32 resolution are rounding noise (e.g. constant gates summed in
    # different batches), not a difference: report "no difference" rather than a random p-value
    resolution = 1e-6 * max(1.0, float(x.abs().max()))
    if result["statistic"] <= resolution**2:
        return result
    gen = torch.Generator().manual_seed(seed)
    reached = 0
    for start in range(0, rounds, 100):  # chunks keep memory at 100 × N × G
        perms = torch.stack([onehot[torch.randperm(len(domains), generator=gen)] for _ in range(min(100, rounds - start))])
        reached += int((spread(perms) >= observed * (1 - 1e-12)).sum())
    result["p_value"] = (reached + 1) / (rounds + 1)
    return result


def gate_profile(gate_probs: dict[str, Tensor], domains: list[str], *, certain: float = 0.05) -> dict[str, dict[str, Any]]:
    """How each domain uses the gates: its mean keep-probability, how random its gates are, per layer.

    ``gate_probs`` maps each adapted layer to the expected joint gates ``E_q[z(x)]`` ([N, r], as in
    ``Predictions.gate_probs``). For each domain this returns ``keep`` (mean of ``E_q[z]``), ``entropy``
    (mean Bernoulli entropy of ``E_q[z]`` in nats: how much the Monte-Carlo passes vary which factors
    are on; ln 2 ≈ 0.693 at most), ``certain`` (share of gates within ``certain`` of 0 or 1, i.e.
    nearly deterministic), ``rank`` (mean s̄(x) over layers) and ``keep_by_layer`` / ``entropy_by_layer``
    (one value per layer, in the order of ``gate_probs``).

    Example:
        >>> probs = {"q": torch.tensor([[0.01, 0.02], [0.5, 0.5]])}
        >>> profile = gate_profile(probs, ["a", "b"])
        >>> round(profile["a"]["certain"], 2), round(profile["b"]["entropy"], 3)
        (1.0, 0.693)
    """
    if not gate_probs:
        raise ValueError("gate_probs is empty: the model has no gates")
    stacked = torch.stack([p.to(torch.float64) for p in gate_probs.values()])  # [L, N, r]
    if stacked.shape[1] != len(domains):
        raise ValueError(f"gate_probs have {stacked.shape[1]} rows but {len(domains)} domains were given")
    if not 0 <= certain < 0.5:
        raise ValueError(f"certain must lie in [0, 0.5), got {certain}")
    entropy = _entropy(torch.stack([stacked, 1 - stacked], dim=-1))  # Bernoulli entropy of each gate
    profile = {}
    for name in sorted(set(domains)):
        idx = torch.tensor([i for i, d in enumerate(domains) if d == name])
        keep, ent = stacked[:, idx], entropy[:, idx]
        profile[name] = {
            "n": len(idx),
            "keep": float(keep.mean()),
            "entropy": float(ent.mean()),
            "certain": float(((keep < certain) | (keep > 1 - certain)).double().mean()),
            "rank": float(keep.sum(-1).mean()),
            "keep_by_layer": keep.mean((1, 2)).tolist(),
            "entropy_by_layer": ent.mean((1, 2)).tolist(),
        }
    return profile
