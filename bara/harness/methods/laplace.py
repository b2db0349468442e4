"""``laplace``: Laplace-LoRA (Yang, Robeyns, Wang & Aitchison, "Bayesian low-rank adaptation for
large language models", ICLR 2024).

LoRA is trained exactly as the ``lora`` method does (maximum likelihood). Afterwards
(`Laplace.after_training`) a Gaussian posterior ``N(θ*, (H + δ I)⁻¹)`` is fitted around the
trained adapter θ*, where

* θ covers every trainable ``nn.Linear`` of the wrapped model: each LoRA ``A`` and ``B`` matrix
  and, for encoder classifiers, the classification head saved with the adapter (its bias is
  folded into the weight as an extra input column). Other trainable tensors, if any, keep their
  point estimate.
* H is the generalised Gauss-Newton matrix of the training cross-entropy, block diagonal over
  layers with each block Kronecker factored (K-FAC): ``H_l ≈ G_l ⊗ A_l``, ``A_l`` the mean of
  ``a aᵀ`` over the real (not padded) tokens of the layer input ``a`` and ``G_l`` the sum over
  examples, tokens and the K columns of ``Λ^{1/2}`` of ``g gᵀ``, ``g`` the gradient of the
  logits (pulled back by ``Λ^{1/2}``, ``Λ = diag(p) − p pᵀ``) with respect to the layer
  output. Using the exact ``Λ^{1/2}`` (K backward passes per batch) rather than sampled labels
  gives the exact GGN for a single example of a layer without weight sharing; over tokens it
  is the "K-FAC expand" approximation (Eschenhagen et al., NeurIPS 2023) Laplace-LoRA uses.
* the prior precision δ (one scalar, prior ``N(0, δ⁻¹ I)``) maximises the Laplace
  approximation of the log marginal likelihood

      log p(D | δ) ≈ log p(D | θ*) − δ/2 ‖θ*‖² + P/2 log δ − ½ log det(H + δ I),

  on a log-spaced grid refined by golden-section search; with the eigendecompositions
  ``A = Q_A diag(α) Q_Aᵀ``, ``G = Q_G diag(γ) Q_Gᵀ`` the log-determinant is
  ``Σ_ij log(γ_i α_j + δ)``, so every evaluation is cheap.

Prediction uses the linearised model (the "GLM predictive" of Immer et al. 2021): the logits are
Gaussian with mean ``f(x; θ*)`` and covariance ``Σ_l J_l (H_l + δ I)⁻¹ J_lᵀ``, the Jacobians
``J_l`` taken per example from the layer inputs and K backward passes. They are turned into
probabilities with the probit approximation ``softmax(μ / sqrt(1 + π/8 · diag Σ))`` (Laplace
Redux, Daxberger et al., NeurIPS 2021), or with ``link="mc"`` by averaging the softmax of
``mc_samples`` logit draws. ``mode="mean"`` gives the MAP (plain LoRA) prediction.

The posterior (eigendecompositions of the factors, prior precision) is saved next to the adapter
as ``laplace_posterior.safetensors``; nothing is pickled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from bara.harness.data import Collator, EncodedDataset
from bara.predict import Predictions, length_sorted_loader, predict
from bara.harness.methods.lora import LoRA

POSTERIOR_FILE = "laplace_posterior.safetensors"
FORMAT = "bara-laplace-kfac-v1"
_ATTRIBUTE = "bara_laplace_posterior"  # where the fitted posterior lives on the model
LINKS = ("probit", "mc")
MODES = ("probit", "mc", "sample", "mean")
_GRID_POINTS_PER_DECADE = 8
_STORAGE = torch.float32  # factors are kept (and saved) in float32, all arithmetic is float64


# ----------------------------------------------------------------------------- the posterior
@dataclasses.dataclass
class KronLayer:
    """The K-FAC posterior block of one ``nn.Linear``: ``(γ ⊗ α + δ)`` in the eigenbases ``Q_G ⊗ Q_A``."""

    name: str
    bias: bool  # the bias is the last input column of the augmented weight [W | b]
    eig_a: Tensor  # [in (+1)]
    vec_a: Tensor  # [in (+1), in (+1)]
    eig_g: Tensor  # [out]
    vec_g: Tensor  # [out, out]

    @property
    def num_params(self) -> int:
        return self.eig_a.numel() * self.eig_g.numel()

    def curvature(self) -> Tensor:
        """The eigenvalues ``γ_i α_j`` of ``G ⊗ A`` as an ``[out, in]`` matrix (float64)."""
        return self.eig_g.double()[:, None] * self.eig_a.double()[None, :]


@dataclasses.dataclass
class KronPosterior:
    """Block-diagonal K-FAC Laplace posterior over the covered layers."""

    layers: list[KronLayer]
    prior_precision: float
    log_likelihood: float  # log p(D | θ*) on the data the curvature was fitted on
    sq_norm: float  # ‖θ*‖² over the covered parameters
    n_data: int

    @property
    def num_params(self) -> int:
        return sum(layer.num_params for layer in self.layers)

    # -- marginal likelihood ----------------------------------------------------------
    def log_marginal_likelihood(self, prior_precision: float | Tensor | None = None) -> Tensor:
        """Laplace's log evidence at prior precision δ (a scalar or a 1-d tensor of them)."""
        delta = torch.as_tensor(self.prior_precision if prior_precision is None else prior_precision, dtype=torch.float64)
        flat = delta.reshape(-1)
        logdet = torch.zeros_like(flat)
        for layer in self.layers:
            curvature = layer.curvature().reshape(-1)
            for i, d in enumerate(flat):
                logdet[i] += torch.log(curvature + d).sum()
        p = self.num_params
        value = self.log_likelihood - 0.5 * flat * self.sq_norm + 0.5 * p * torch.log(flat) - 0.5 * logdet
        return value.reshape(delta.shape)

    def optimise_prior_precision(self, low: float = 1e-4, high: float = 1e6) -> float:
        """The δ in [low, high] that maximises `log_marginal_likelihood`: a log grid, then golden section."""
        if not 0 < low < high:
            raise ValueError(f"prior precision range [{low}, {high}] must satisfy 0 < low < high")
        points = max(3, int(math.ceil(math.log10(high / low) * _GRID_POINTS_PER_DECADE)) + 1)
        grid = torch.logspace(math.log10(low), math.log10(high), points, dtype=torch.float64)
        values = self.log_marginal_likelihood(grid)
        best = int(values.argmax())
        if best in (0, points - 1):
            warnings.warn(f"Laplace: the marginal likelihood is largest at the edge of the prior precision range "
                          f"[{low:g}, {high:g}] (δ = {float(grid[best]):g}); consider widening it", stacklevel=2)
        lo, hi = math.log(grid[max(best - 1, 0)]), math.log(grid[min(best + 1, points - 1)])
        objective = lambda u: float(self.log_marginal_likelihood(math.exp(u)))  # noqa: E731
        ratio = (math.sqrt(5.0) - 1.0) / 2.0
        c, d = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        fc, fd = objective(c), objective(d)
        for _ in range(60):
            if hi - lo < 1e-9:
                break
            if fc >= fd:
                hi, d, fd = d, c, fc
                c = hi - ratio * (hi - lo)
                fc = objective(c)
            else:
                lo, c, fc = c, d, fd
                d = lo + ratio * (hi - lo)
                fd = objective(d)
        candidates = [(float(values[best]), float(grid[best])), (fc, math.exp(c)), (fd, math.exp(d))]
        return max(candidates)[1]

    # -- predictive -------------------------------------------------------------------
    def logit_covariance(self, rotated_jacobians: dict[str, Tensor]) -> Tensor:
        """``Σ_l J_l (G_l ⊗ A_l + δ I)⁻¹ J_lᵀ`` from Jacobians already in the eigenbases ``[n, K, out, in]``."""
        cov = None
        for layer in self.layers:
            jac = rotated_jacobians.get(layer.name)
            if jac is None:
                continue
            inverse = 1.0 / (layer.curvature().to(jac.device) + self.prior_precision)
            term = torch.einsum("nkoi,oi,nloi->nkl", jac, inverse, jac)
            cov = term if cov is None else cov + term
        return cov

    # -- safetensors ------------------------------------------------------------------
    def state_dict(self) -> tuple[dict[str, Tensor], dict[str, str]]:
        tensors = {"prior_precision": torch.tensor([self.prior_precision], dtype=torch.float64),
                   "log_likelihood": torch.tensor([self.log_likelihood], dtype=torch.float64),
                   "sq_norm": torch.tensor([self.sq_norm], dtype=torch.float64),
                   "n_data": torch.tensor([self.n_data], dtype=torch.int64)}
        for i, layer in enumerate(self.layers):
            for key in ("eig_a", "vec_a", "eig_g", "vec_g"):
                tensors[f"layers.{i}.{key}"] = getattr(layer, key).detach().cpu().contiguous()
        metadata = {"format": FORMAT, "layers": json.dumps([{"name": l.name, "bias": l.bias} for l in self.layers])}
        return tensors, metadata

    @classmethod
    def from_state_dict(cls, tensors: dict[str, Tensor], metadata: dict[str, str] | None) -> "KronPosterior":
        if not metadata or metadata.get("format") != FORMAT:
            raise ValueError(f"not a Laplace posterior written by bara (expected format {FORMAT!r})")
        layers = [KronLayer(entry["name"], bool(entry["bias"]),
                            *(tensors[f"layers.{i}.{key}"] for key in ("eig_a", "vec_a", "eig_g", "vec_g")))
                  for i, entry in enumerate(json.loads(metadata["layers"]))]
        return cls(layers, float(tensors["prior_precision"][0]), float(tensors["log_likelihood"][0]),
                   float(tensors["sq_norm"][0]), int(tensors["n_data"][0]))

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        tensors, metadata = self.state_dict()
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: Path) -> "KronPosterior":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
            tensors = {key: f.get_tensor(key) for key in f.keys()}
        return cls.from_state_dict(tensors, metadata)


# ----------------------------------------------------------------------------- tracing layers
def laplace_layers(model: nn.Module) -> dict[str, nn.Linear]:
    """The trainable ``nn.Linear`` modules (LoRA A/B, a saved classifier) the posterior covers."""
    layers = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and m.weight.requires_grad}
    covered = {id(p) for m in layers.values() for p in (m.weight, m.bias) if p is not None and p.requires_grad}
    left = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
    if left:
        warnings.warn(f"Laplace: {len(left)} trainable tensor(s) outside nn.Linear layers keep their point estimate "
                      f"(e.g. {left[0]})", stacklevel=2)
    return layers


def _uses_bias(module: nn.Linear) -> bool:
    return module.bias is not None and module.bias.requires_grad


class _Tracer(contextlib.AbstractContextManager):
    """Forward hooks that keep each covered layer's inputs and (in-graph) outputs of one forward.

    The covered weights are made to require gradients while tracing (a loaded adapter is frozen),
    so their outputs are in the autograd graph; the flags are restored on exit.
    """

    def __init__(self, modules: dict[str, nn.Linear], bias: dict[str, bool]):
        self.modules, self.bias = modules, bias
        self.records: dict[str, list[tuple[Tensor, Tensor]]] = {}

    def __enter__(self) -> "_Tracer":
        self._flags = [(p, p.requires_grad) for name, m in self.modules.items()
                       for p in ([m.weight, m.bias] if self.bias[name] else [m.weight])]
        for p, _ in self._flags:
            p.requires_grad_(True)
        self._handles = [m.register_forward_hook(self._hook(name)) for name, m in self.modules.items()]
        return self

    def _hook(self, name: str):
        def hook(_module, inputs, output):
            self.records.setdefault(name, []).append((inputs[0].detach(), output))
        return hook

    def reset(self) -> None:
        self.records = {}

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        for p, flag in self._flags:
            p.requires_grad_(flag)
        self.records = {}


def _per_example(t: Tensor, n: int) -> Tensor:
    """``[rows..., d]`` → ``[n, S, d]`` in float64 (rows are example-major: one example's tokens/choices together)."""
    if t.shape[0] % n:
        raise ValueError(f"a layer input with leading size {t.shape[0]} does not split into {n} examples")
    return t.to(torch.float64).reshape(n, -1, t.shape[-1])


def _layer_inputs(records: list[tuple[Tensor, Tensor]], n: int, bias: bool) -> Tensor:
    a = torch.cat([_per_example(x, n) for x, _ in records], dim=1)
    return torch.cat([a, a.new_ones(a.shape[:-1] + (1,))], -1) if bias else a


def _layer_grads(records: list[tuple[Tensor, Tensor]], grads: Iterator[Tensor | None], n: int) -> Tensor:
    parts = []
    for _, out in records:
        g = next(grads)
        parts.append(_per_example(torch.zeros_like(out) if g is None else g, n))
    return torch.cat(parts, dim=1)


def _token_weights(inputs: dict[str, Tensor], n: int, s: int, device: torch.device) -> Tensor:
    """``[n, S]``: 1 for real tokens (and real choices), 0 for padding; ones for pooled inputs."""
    mask = inputs.get("attention_mask")
    choices = inputs.get("choice_mask") if inputs["input_ids"].dim() == 3 else None  # multiple choice
    if mask is not None and mask[0].numel() == s:
        mask = mask.to(torch.float64)
        if choices is not None:
            mask = mask * choices.to(torch.float64).unsqueeze(-1)
        return mask.reshape(n, s).to(device)
    if choices is not None and choices.shape[1] == s:
        return choices.to(torch.float64).to(device)
    return torch.ones(n, s, dtype=torch.float64, device=device)


def _split(batch: dict[str, Tensor], device: torch.device) -> tuple[dict[str, Tensor], Tensor | None]:
    inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    return inputs, batch.get("labels")


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


# ----------------------------------------------------------------------------- fitting
def fit_posterior(model: nn.Module, batches: Iterable[dict[str, Tensor]], *, prior_precision: float | None = None,
                  prior_range: tuple[float, float] = (1e-4, 1e6)) -> KronPosterior:
    """Fit the K-FAC GGN of ``model`` on ``batches`` (dicts with ``labels``) and choose δ.

    Args:
        model: any model returning ``.logits [B, K]``; its trainable ``nn.Linear`` layers are covered.
        batches: training batches, as the `Collator` makes them.
        prior_precision: a fixed δ, or ``None`` to maximise the marginal likelihood over ``prior_range``.
    """
    modules = laplace_layers(model)
    if not modules:
        raise ValueError("Laplace: the model has no trainable nn.Linear layer to put a posterior on")
    bias = {name: _uses_bias(m) for name, m in modules.items()}
    device = next(model.parameters()).device
    a_sum = {name: None for name in modules}
    g_sum = {name: None for name in modules}
    count = {name: 0.0 for name in modules}
    log_likelihood, n_data = 0.0, 0
    with _eval_mode(model), torch.enable_grad(), _Tracer(modules, bias) as tracer:
        for batch in batches:
            inputs, labels = _split(batch, device)
            if labels is None:
                raise ValueError("Laplace: the batches used to fit the posterior need labels")
            tracer.reset()
            logits = model(**inputs).logits
            n, k_classes = logits.shape
            log_p = torch.log_softmax(logits.detach().to(torch.float64), -1)
            log_likelihood += float(log_p.gather(1, labels.to(device).view(-1, 1)).sum())
            n_data += n
            p = log_p.exp()
            names = [name for name in modules if name in tracer.records]
            outs = [out for name in names for _, out in tracer.records[name]]
            for name in names:
                a = _layer_inputs(tracer.records[name], n, bias[name])
                w = _token_weights(inputs, n, a.shape[1], a.device)
                flat, weights = a.reshape(-1, a.shape[-1]), w.reshape(-1, 1)
                term = (flat * weights).T @ flat
                a_sum[name] = term if a_sum[name] is None else a_sum[name] + term
                count[name] += float(w.sum())
            eye = torch.eye(k_classes, dtype=torch.float64, device=p.device)
            for k in range(k_classes):
                # the k-th column of Λ^{1/2} = diag(√p) − p √pᵀ, one row per example
                v = p[:, k:k + 1].sqrt() * (eye[k] - p)
                grads = iter(torch.autograd.grad(logits, outs, grad_outputs=v.to(logits.dtype),
                                                 retain_graph=k < k_classes - 1, allow_unused=True))
                for name in names:
                    g = _layer_grads(tracer.records[name], grads, n).reshape(-1, modules[name].out_features)
                    term = g.T @ g
                    g_sum[name] = term if g_sum[name] is None else g_sum[name] + term
            tracer.reset()
    if n_data == 0:
        raise ValueError("Laplace: no training data to fit the posterior on")
    layers, sq_norm = [], 0.0
    for name, module in modules.items():
        d_in = module.in_features + bias[name]
        a = a_sum[name] / max(count[name], 1.0) if a_sum[name] is not None else torch.zeros(d_in, d_in, dtype=torch.float64)
        g = g_sum[name] if g_sum[name] is not None else torch.zeros(module.out_features, module.out_features, dtype=torch.float64)
        eig_a, vec_a = torch.linalg.eigh(a.cpu())
        eig_g, vec_g = torch.linalg.eigh(g.cpu())
        layers.append(KronLayer(name, bias[name], eig_a.clamp(min=0).to(_STORAGE), vec_a.to(_STORAGE),
                                eig_g.clamp(min=0).to(_STORAGE), vec_g.to(_STORAGE)))
        sq_norm += float(module.weight.detach().double().pow(2).sum())
        if bias[name]:
            sq_norm += float(module.bias.detach().double().pow(2).sum())
    posterior = KronPosterior(layers, 1.0, log_likelihood, sq_norm, n_data)
    posterior.prior_precision = float(prior_precision) if prior_precision is not None \
        else posterior.optimise_prior_precision(*prior_range)
    return posterior


# ----------------------------------------------------------------------------- the linearised predictive
def linearised_logits(model: nn.Module, posterior: KronPosterior,
                      batches: Iterable[dict[str, Tensor]]) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(μ [B, K], Σ [B, K, K])`` (float64) of the linearised model's logits, batch by batch."""
    named = dict(model.named_modules())
    modules, bias = {}, {}
    for layer in posterior.layers:
        module = named.get(layer.name)
        if not isinstance(module, nn.Linear):
            raise ValueError(f"Laplace posterior covers {layer.name!r}, which is not an nn.Linear of this model")
        if (module.out_features, module.in_features + layer.bias) != (layer.eig_g.numel(), layer.eig_a.numel()):
            raise ValueError(f"Laplace posterior shape mismatch at {layer.name!r}: the factors are "
                             f"{layer.eig_g.numel()}×{layer.eig_a.numel()}, the layer {module.out_features}×"
                             f"{module.in_features + layer.bias}")
        modules[layer.name], bias[layer.name] = module, layer.bias
    device = next(model.parameters()).device
    bases = {l.name: (l.vec_a.to(device, torch.float64), l.vec_g.to(device, torch.float64)) for l in posterior.layers}
    with _eval_mode(model), torch.enable_grad(), _Tracer(modules, bias) as tracer:
        for batch in batches:
            inputs, _ = _split(batch, device)
            tracer.reset()
            logits = model(**inputs).logits
            n, k_classes = logits.shape
            names = [name for name in modules if name in tracer.records]
            outs = [out for name in names for _, out in tracer.records[name]]
            rotated_inputs = {name: _layer_inputs(tracer.records[name], n, bias[name]) @ bases[name][0] for name in names}
            columns: dict[str, list[Tensor]] = {name: [] for name in names}
            for k in range(k_classes):
                grads = iter(torch.autograd.grad(logits[:, k].sum(), outs, retain_graph=k < k_classes - 1,
                                                 allow_unused=True))
                for name in names:
                    g = _layer_grads(tracer.records[name], grads, n) @ bases[name][1]
                    columns[name].append(torch.einsum("nso,nsi->noi", g, rotated_inputs[name]))
            jacobians = {name: torch.stack(cols, 1) for name, cols in columns.items()}
            cov = posterior.logit_covariance(jacobians)
            mean = logits.detach().to(torch.float64)
            if cov is None:
                cov = mean.new_zeros(n, k_classes, k_classes)
            tracer.reset()
            yield mean, cov


def probit_probs(mean: Tensor, cov: Tensor) -> Tensor:
    """Multi-class probit approximation: ``softmax(μ / sqrt(1 + π/8 · diag Σ))``."""
    variance = torch.diagonal(cov, dim1=-2, dim2=-1).clamp(min=0)
    return torch.softmax(mean / torch.sqrt(1.0 + math.pi / 8.0 * variance), -1)


def mc_probs(mean: Tensor, cov: Tensor, samples: int, generator: torch.Generator | None = None) -> Tensor:
    """The mean softmax of ``samples`` draws of the logits from ``N(μ, Σ)``."""
    eigvals, eigvecs = torch.linalg.eigh(cov)
    root = eigvecs * eigvals.clamp(min=0).sqrt().unsqueeze(-2)  # Σ = root rootᵀ
    noise = torch.randn((samples,) + mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
    draws = mean + torch.einsum("nkj,snj->snk", root, noise)
    return torch.softmax(draws, -1).mean(0)


# ----------------------------------------------------------------------------- the method
@dataclasses.dataclass
class Laplace(LoRA):
    """LoRA (trained as ``lora``) with a post-hoc K-FAC Laplace posterior and the linearised predictive."""

    name: ClassVar[str] = "laplace"
    prior_precision: float | None = None  # None: maximise the marginal likelihood
    prior_min: float = 1e-4  # the search range of the prior precision
    prior_max: float = 1e6
    link: str = "probit"  # probit | mc
    mc_samples: int = 1000  # logit draws per example for link="mc"
    batch_size: int = 8  # examples per pass when fitting and predicting
    seed: int = 0  # of the logit draws for link="mc"

    def __post_init__(self) -> None:
        if self.link not in LINKS:
            raise ValueError(f"method 'laplace': link={self.link!r} is unknown; allowed: {', '.join(LINKS)}")
        if self.prior_precision is not None and not self.prior_precision > 0:
            raise ValueError(f"method 'laplace': prior_precision={self.prior_precision} must be positive (or null)")
        if not 0 < self.prior_min < self.prior_max:
            raise ValueError(f"method 'laplace': need 0 < prior_min < prior_max, got {self.prior_min}, {self.prior_max}")
        for name in ("mc_samples", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"method 'laplace': {name}={getattr(self, name)} must be positive")

    # -- after training: the posterior -------------------------------------------------
    def after_training(self, model: nn.Module, train_set: EncodedDataset, collator: Collator,
                       holdout: EncodedDataset | None = None) -> None:
        loader = DataLoader(train_set, batch_size=self.batch_size, shuffle=False, collate_fn=collator)
        posterior = fit_posterior(model, loader, prior_precision=self.prior_precision,
                                  prior_range=(self.prior_min, self.prior_max))
        setattr(model, _ATTRIBUTE, posterior)

    @staticmethod
    def posterior(model: nn.Module) -> KronPosterior:
        posterior = model.__dict__.get(_ATTRIBUTE)
        if posterior is None:
            raise ValueError("this model has no Laplace posterior: run Laplace.after_training on it or load a saved run")
        return posterior

    # -- prediction --------------------------------------------------------------------
    def predict(self, model: nn.Module, dataset: EncodedDataset, collator: Collator, *, samples: int | None = None,
                mode: str | None = None, progress: bool = False) -> Predictions:
        if mode is not None and mode not in MODES:
            raise ValueError(f"method 'laplace': mode {mode!r} is unknown; allowed: {', '.join(MODES)}")
        if mode == "mean":  # the MAP: plain LoRA
            return predict(model, dataset, collator, mode="mean", samples=1, progress=progress)
        link = "mc" if mode in ("mc", "sample") else (mode or self.link)
        posterior = self.posterior(model)
        generator = torch.Generator().manual_seed(self.seed)
        loader, restore = length_sorted_loader(dataset, collator, self.batch_size)
        start, chunks = time.perf_counter(), []
        for mean, cov in linearised_logits(model, posterior, loader):
            probs = probit_probs(mean, cov) if link == "probit" else \
                mc_probs(mean.cpu(), cov.cpu(), samples or self.mc_samples, generator)
            chunks.append(F.pad(probs.float().cpu(), (0, dataset.num_classes - probs.shape[-1])))
        return Predictions(probs=torch.cat(chunks)[restore], labels=dataset.labels, domains=dataset.domains,
                           seconds=time.perf_counter() - start)

    # -- save / load -------------------------------------------------------------------
    def save(self, model: nn.Module, path: Path) -> None:
        posterior = self.posterior(model)
        super().save(model, path)
        posterior.save(Path(path) / POSTERIOR_FILE)

    def load(self, head: nn.Module, path: Path, target_modules: list[str], modules_to_save: list[str]) -> nn.Module:
        file = Path(path) / POSTERIOR_FILE
        if not file.exists():
            raise ValueError(f"{path}: no {POSTERIOR_FILE} (a Laplace run saves its posterior next to the adapter)")
        model = super().load(head, path, target_modules, modules_to_save)
        posterior = KronPosterior.load(file)
        named = dict(model.named_modules())
        missing = [layer.name for layer in posterior.layers if not isinstance(named.get(layer.name), nn.Linear)]
        if missing:
            raise ValueError(f"{file}: the posterior covers layers this model lacks, e.g. {missing[0]!r}")
        setattr(model, _ATTRIBUTE, posterior)
        return model
