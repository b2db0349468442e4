"""The synthetic context-dependent-rank task of check C6 (DESIGN §5), and a small trainer for it.

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

from .config import BaRAConfig
from .model import BaRAModel, gate_mode, get_bara_model
from .objective import gate_probabilities, kl_divergence, kl_warmup_factor


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
