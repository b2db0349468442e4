"""The synthetic context-dependent-rank task (clusters that each need their own low-rank update), and a small trainer for it.

K clusters; cluster c owns ``ΔW_c = U_c V_cᵀ`` (orthonormal, mutually orthogonal columns across
clusters). An instance is a sequence of tokens ``x_t = m_c + σx ε`` around its cluster mean
(‖m_c‖ = 3) and its target is ``(W0 + ΔW_c) x_t + noise``. No single ΔW fits all clusters, so
a good adapter must switch factors on per instance: the right answer is "cluster c uses its
own rank(ΔW_c) factors".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from bara.config import BaRAConfig
from bara.model import BaRAModel, fix_gates, gate_mode, get_bara_model
from bara.objective import gate_probabilities, kl_divergence, kl_warmup_factor


@dataclass
class ClusterTask:
    """Ground truth of one synthetic task."""

    w0: Tensor  # [d, d] frozen base map
    deltas: list[Tensor]  # ΔW_c, [d, d] each
    means: Tensor  # [K, d] cluster means
    ranks: list[int]
    seq_len: int = 16
    sigma_x: float = 1.0
    noise: float = 0.1

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(x [n,T,d], y [n,T,d], y_clean [n,T,d], cluster [n])``."""
        k, d = self.means.shape
        cluster = torch.randint(k, (n,), generator=generator)
        x = self.means[cluster].unsqueeze(1) + self.sigma_x * torch.randn(n, self.seq_len, d, generator=generator)
        maps = self.w0.unsqueeze(0) + torch.stack(self.deltas)[cluster]  # [n, d, d]
        clean = torch.einsum("nij,ntj->nti", maps, x)
        return x, clean + self.noise * torch.randn(clean.shape, generator=generator), clean, cluster


def make_cluster_task(ranks: list[int], d: int = 32, mean_norm: float = 3.0, seed: int = 0) -> ClusterTask:
    """Cluster c gets ``ΔW_c = U_c V_cᵀ`` of rank ``ranks[c]``; all U (and all V) columns orthonormal."""
    if sum(ranks) > d:
        raise ValueError(f"sum of ranks {sum(ranks)} exceeds the dimension d={d}")
    g = torch.Generator().manual_seed(seed)
    u_all = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    v_all = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    deltas, start = [], 0
    for rank in ranks:
        u, v = u_all[:, start:start + rank], v_all[:, start:start + rank]
        deltas.append(u @ v.T)
        start += rank
    means = torch.randn(len(ranks), d, generator=g)
    means = mean_norm * means / means.norm(dim=1, keepdim=True)
    w0 = torch.randn(d, d, generator=g) / d**0.5
    return ClusterTask(w0=w0, deltas=deltas, means=means, ranks=list(ranks))


class LinearStack(nn.Module):
    """The model adapted in the synthetic task: one frozen linear map ``proj`` = W0."""

    def __init__(self, w0: Tensor):
        super().__init__()
        self.proj = nn.Linear(w0.shape[1], w0.shape[0], bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(w0)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


@dataclass
class SyntheticResult:
    excess_mse: float  # mean over tokens of ‖ŷ − y_clean‖², in the evaluation mode
    cluster_ranks: list[float]  # mean s̄(x) per cluster
    ari: float  # adjusted Rand index of deterministic gate patterns vs clusters
    model: BaRAModel


def train_synthetic(task: ClusterTask, config: BaRAConfig, *, steps: int = 1500, batch_size: int = 64,
                    lr: float = 1e-2, n_train: int = 4096, seed: int = 0, lora_only: bool = False,
                    eval_mode: str = "mean", model: BaRAModel | None = None) -> SyntheticResult:
    """Train BaRA (or, with ``lora_only``, the same adapter in ``ones`` mode = LoRA) with Adam.

    The likelihood term is the per-token squared error summed over output dimensions (a
    Gaussian NLL up to constants); the KL enters with the linear warm-up of ``config``.
    ``model`` may be a prepared `BaRAModel` (e.g. with some gate parameters frozen).
    """
    torch.manual_seed(seed)
    data_gen = torch.Generator().manual_seed(10_000 + seed)
    x_train, y_train, _, _ = task.sample(n_train, data_gen)
    model = model if model is not None else get_bara_model(LinearStack(task.w0), config)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    model.set_gate_mode("ones" if lora_only else "sample")
    for step in range(steps):
        idx = torch.randint(n_train, (batch_size,))
        pred = model(x_train[idx])
        loss = ((pred - y_train[idx]) ** 2).sum(-1).mean()
        if not lora_only:
            loss = loss + kl_warmup_factor(step, steps, config.kl_warmup) * kl_divergence(model, n_train)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return evaluate_synthetic(task, model, seed=seed, mode="ones" if lora_only else eval_mode)


@torch.no_grad()
def evaluate_synthetic(task: ClusterTask, model: BaRAModel, *, seed: int = 0, n_eval: int = 1024,
                       mode: str = "mean") -> SyntheticResult:
    """Excess MSE, per-cluster mean effective rank and gate-pattern ARI on fresh data."""
    x, _, clean, cluster = task.sample(n_eval, torch.Generator().manual_seed(20_000 + seed))
    model.eval()
    with gate_mode(model, mode):
        excess = float(((model(x) - clean) ** 2).sum(-1).mean())
    with gate_mode(model, "mean"):
        model(x)
        probs = next(iter(gate_probabilities(model).values()))
    ranks = probs.sum(-1)
    cluster_ranks = [float(ranks[cluster == c].mean()) for c in range(len(task.ranks))]
    patterns = (probs > 0.5).long()
    pattern_ids = torch.unique(patterns, dim=0, return_inverse=True)[1]
    return SyntheticResult(excess, cluster_ranks, adjusted_rand_index(pattern_ids.numpy(), cluster.numpy()), model)


def adjusted_rand_index(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labelings (Hubert & Arabie, 1985)."""
    _, a_idx = np.unique(a, return_inverse=True)
    _, b_idx = np.unique(b, return_inverse=True)
    table = np.zeros((a_idx.max() + 1, b_idx.max() + 1), dtype=np.int64)
    np.add.at(table, (a_idx, b_idx), 1)

    def pairs(counts: np.ndarray) -> float:
        return float((counts * (counts - 1) // 2).sum())

    index, rows, cols = pairs(table), pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / pairs(np.array([len(a)]))
    maximum = (rows + cols) / 2
    return 1.0 if maximum == expected else (index - expected) / (maximum - expected)


# -- the calibration version (learned vs constant gates on a task with a known answer) ------------
@dataclass
class TokenClassificationTask:
    """The cluster task with categorical labels, so that learned and constant gates can be scored on calibration.

    Token t of an instance from cluster c has the label ``y_t ~ softmax(κ · H (W0 + ΔW_c) x_t)``
    with a fixed readout ``H`` [C, d]. The instance's tokens share the cluster, so the pooled
    context says which ΔW_c applies; the labels are drawn (not argmax), so the Bayes-optimal
    model has a known NLL and a perfectly calibrated answer exists. A good adapter switches on
    the factors of ΔW_c for cluster c only: with input-independent (constant) gates the factors
    of the other clusters leak in.
    """

    clusters: ClusterTask
    head: Tensor  # [C, d] frozen readout H
    scale: float = 1.0  # κ: larger means cleaner labels

    def true_probs(self, x: Tensor, cluster: Tensor) -> Tensor:
        """Bayes-optimal class probabilities ``[n, T, C]``."""
        maps = self.clusters.w0.unsqueeze(0) + torch.stack(self.clusters.deltas)[cluster]
        hidden = torch.einsum("nij,ntj->nti", maps, x)
        return torch.softmax(self.scale * hidden @ self.head.T, dim=-1)

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(x [n,T,d], labels [n,T], true probabilities [n,T,C], cluster [n])``."""
        x, _, _, cluster = self.clusters.sample(n, generator)
        probs = self.true_probs(x, cluster)
        labels = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).view(probs.shape[:2])
        return x, labels, probs, cluster


def make_token_classification_task(ranks: list[int], *, n_classes: int = 4, scale: float = 1.0, gain: float = 2.0,
                                   shared: bool = False, mean_norm: float = 3.0, d: int = 32,
                                   seed: int = 0) -> TokenClassificationTask:
    """A `TokenClassificationTask` on `make_cluster_task`'s clusters.

    ``gain`` multiplies every ΔW_c, so that adapting matters: at the defaults (d = 32, 4 classes,
    ranks [2, 2, 2, 2], seeds 0–4) the Bayes-optimal NLL is 0.45–0.57, the base model's (W0
    alone) 0.71–0.96, and the one map W0 + Σ_c ΔW_c's 1.08–1.88 — the cost of letting every
    cluster's factors leak into the others.
    ``shared=True`` is the control: every cluster uses cluster 0's ΔW, so one map suffices and
    input-dependent gates have nothing to add. The readout ``H`` has orthonormal rows scaled by
    √(d / C), so that the logits move about as much as the hidden vector.

    Example:
        >>> task = make_token_classification_task([2, 2], n_classes=3, d=8)
        >>> x, y, p, c = task.sample(5, torch.Generator().manual_seed(0))
        >>> tuple(y.shape), tuple(p.shape)
        ((5, 16), (5, 16, 3))
    """
    if n_classes < 2 or n_classes > d:
        raise ValueError(f"n_classes must be in [2, d={d}], got {n_classes}")
    clusters = make_cluster_task(ranks, d=d, mean_norm=mean_norm, seed=seed)
    deltas = [clusters.deltas[0]] * len(ranks) if shared else clusters.deltas
    clusters = ClusterTask(w0=clusters.w0, deltas=[gain * delta for delta in deltas], means=clusters.means,
                           ranks=[ranks[0]] * len(ranks) if shared else list(ranks))
    g = torch.Generator().manual_seed(seed + 7919)
    head = torch.linalg.qr(torch.randn(d, n_classes, generator=g))[0].T * d**0.5 / n_classes**0.5
    return TokenClassificationTask(clusters=clusters, head=head, scale=scale)


class TokenClassifier(nn.Module):
    """The model adapted in the calibration task: the frozen map ``proj`` = W0, then the frozen readout H."""

    def __init__(self, w0: Tensor, head: Tensor, scale: float):
        super().__init__()
        self.proj = nn.Linear(w0.shape[1], w0.shape[0], bias=False)
        self.head = nn.Linear(head.shape[1], head.shape[0], bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(w0)
            self.head.weight.copy_(scale * head)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.proj(x))


CLASSIFIER_METHODS = ("lora", "bara", "dropout")


def train_token_classifier(task: TokenClassificationTask, config: BaRAConfig, *, method: str = "bara", steps: int = 1500,
                           batch_size: int = 64, lr: float = 1e-2, n_train: int = 256, keep: float = 0.5,
                           labelled_tokens: int | None = None, seed: int = 0) -> BaRAModel:
    """Fit the adapter of a `TokenClassifier` to ``n_train`` sampled instances with Adam.

    ``method``: ``lora`` (gates all 1), ``bara`` (the ELBO: the instance's summed token NLL plus
    the KL / N with ``config``'s warm-up) or ``dropout`` — factor dropout trained as such: the
    same factors, each kept with probability ``keep`` independently of the input (gate mode
    ``constant``), no KL. The last is the strongest form of the "plain dropout" control.
    ``labelled_tokens=k`` trains on the labels of the first k tokens of each instance only (all
    tokens still form the context): ``1`` gives one label per instance, as in sequence
    classification, where an instance's likelihood is much weaker against its gate KL.
    """
    if method not in CLASSIFIER_METHODS:
        raise ValueError(f"method must be one of {CLASSIFIER_METHODS}, got {method!r}")
    seq_len = task.clusters.seq_len
    labelled = seq_len if labelled_tokens is None else labelled_tokens
    if not 1 <= labelled <= seq_len:
        raise ValueError(f"labelled_tokens must be in [1, {seq_len}], got {labelled_tokens}")
    torch.manual_seed(seed)
    x_train, y_train, _, _ = task.sample(n_train, torch.Generator().manual_seed(10_000 + seed))
    model = get_bara_model(TokenClassifier(task.clusters.w0, task.head, task.scale), config)
    if method == "dropout":
        fix_gates(model, {name: torch.full((layer.r,), keep) for name, layer in model.bara_layers()})
    model.set_gate_mode({"lora": "ones", "bara": "sample", "dropout": "constant"}[method])
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for step in range(steps):
        idx = torch.randint(n_train, (batch_size,))
        logits = model(x_train[idx])
        loss = nn.functional.cross_entropy(logits[:, :labelled].flatten(0, 1), y_train[idx, :labelled].flatten(),
                                           reduction="sum") / batch_size
        if method == "bara":
            loss = loss + kl_warmup_factor(step, steps, config.kl_warmup) * kl_divergence(model, n_train)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    return model


@torch.no_grad()
def predict_token_classifier(task: TokenClassificationTask, model: BaRAModel, *, mode: str, samples: int = 10,
                             n_eval: int = 1024, seed: int = 0) -> dict[str, Tensor]:
    """Predictive probabilities on fresh instances: ``probs`` [n, T, C] (the average of ``samples``
    draws in the stochastic modes ``sample`` and ``constant``), with ``labels``, ``true_probs``,
    ``cluster`` and the mean-mode gate probabilities ``gate_probs`` [n, r].

    Mode ``constant`` uses the keep-probabilities the model holds (`bara.model.fix_gates`)."""
    x, labels, true_probs, cluster = task.sample(n_eval, torch.Generator().manual_seed(20_000 + seed))
    model.eval()
    draws = samples if mode in ("sample", "constant") else 1
    with gate_mode(model, mode):
        probs = torch.stack([torch.softmax(model(x), -1) for _ in range(draws)]).mean(0)
    with gate_mode(model, "mean"):
        model(x)
        gate_probs = next(iter(gate_probabilities(model).values()))
    return {"probs": probs, "labels": labels, "true_probs": true_probs, "cluster": cluster, "gate_probs": gate_probs}
