"""``bara-laplace`` (a candidate under test, not a default): BaRA's gates with a post-hoc Laplace
posterior over its factors.

BaRA's variational posterior covers only the gates: the factors ``A`` and ``B`` are point
estimates. This method adds uncertainty inside the factors without asking the training objective
to pay for it:

1. train BaRA exactly as ``bara`` does (same options, same objective);
2. after training, with every gate at its expectation (gate mode ``mean``), fit the K-FAC
   Laplace posterior ``N(θ*, (H + δ I)⁻¹)`` of `bara.harness.methods.laplace` over the factors
   (every ``lora_A`` / ``lora_B``) and the saved classification head, with the prior precision
   δ chosen by the Laplace marginal likelihood. The gates keep their variational posterior;
3. predict by sampling both: S gate draws (``sample`` mode, as ``bara`` predicts), and for each
   of them ``noise_draws`` draws of the linearised weight noise, ``f_s(x) + ε``,
   ``ε ~ N(0, J Σ Jᵀ)`` with the logit covariance computed once per input at the mean gates:

       p(y | x) ≈ 1/(S·M) Σ_s Σ_m softmax(f_s(x) + ε_m)

   This costs S forward passes plus one forward and K backward passes per batch.

Modes: the default (``sample``) is the combined predictive above; ``gates`` is BaRA's own
(gate sampling only), ``weights`` the Laplace predictive alone at the mean gates, ``mean`` one
pass with expected gates and ``constant`` the combined predictive with input-independent gates
(the learned-vs-constant control). The posterior is saved next to the adapter as
``laplace_posterior.safetensors`` (nothing is pickled).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from bara.harness.data import Collator, EncodedDataset
from bara.harness.methods.bara import BaRA
from bara.harness.methods.laplace import POSTERIOR_FILE, KronLayer, KronPosterior, fit_posterior, linearised_logits
from bara.io import kept_factors
from bara.model import BaRAModel, gate_mode
from bara.predict import Predictions, length_sorted_loader, predict

MODES = ("sample", "gates", "weights", "mean", "constant")
_POSTERIOR = "bara_laplace_posterior"  # where the fitted posterior lives on the model


def noisy_softmax(logits: Tensor, cov: Tensor, draws: int, generator: torch.Generator) -> Tensor:
    """``mean_{s,m} softmax(logits[s] + ε_m)``, ``ε_m ~ N(0, cov)``: logits ``[S, n, K]``, cov ``[n, K, K]``.

    Adding the same zero-mean noise to every logit vector keeps the result independent of any
    shift of ``logits`` along the all-ones direction, as a softmax should.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> p = noisy_softmax(torch.zeros(2, 3, 4), torch.eye(4).expand(3, 4, 4), 8, g)
        >>> tuple(p.shape), bool(torch.allclose(p.sum(-1), torch.ones(3)))
        ((3, 4), True)
    """
    values, vectors = torch.linalg.eigh(cov.double())
    root = vectors * values.clamp(min=0).sqrt().unsqueeze(-2)  # cov = root rootᵀ
    s, n, k = logits.shape
    noise = torch.randn((s, draws, n, k), generator=generator, dtype=torch.float64)
    eps = torch.einsum("nkj,smnj->smnk", root.cpu(), noise)
    return torch.softmax(logits.double().cpu().unsqueeze(1) + eps, -1).mean((0, 1))


@dataclasses.dataclass
class BaRALaplace(BaRA):
    """BaRA trained as usual, then a K-FAC Laplace posterior over its factors; both are sampled at prediction."""

    name: ClassVar[str] = "bara-laplace"
    prior_precision: float | None = None  # None: maximise the Laplace marginal likelihood
    prior_min: float = 1e-4
    prior_max: float = 1e6
    noise_draws: int = 32  # weight-noise draws per gate draw
    laplace_batch_size: int = 8  # examples per pass when fitting and predicting
    seed: int = 0  # of the gate and weight-noise draws at prediction

    def __post_init__(self) -> None:
        if self.prior_precision is not None and not self.prior_precision > 0:
            raise ValueError(f"method 'bara-laplace': prior_precision={self.prior_precision} must be positive (or null)")
        if not 0 < self.prior_min < self.prior_max:
            raise ValueError(f"method 'bara-laplace': need 0 < prior_min < prior_max, got {self.prior_min}, {self.prior_max}")
        for name in ("noise_draws", "laplace_batch_size", "eval_samples"):
            if getattr(self, name) <= 0:
                raise ValueError(f"method 'bara-laplace': {name}={getattr(self, name)} must be positive")

    # -- after training: the posterior over the factors -------------------------------------
    def fit_laplace(self, model: BaRAModel, train_set: EncodedDataset, collator: Collator) -> KronPosterior:
        """Fit the factors' posterior on ``train_set`` at the mean gates and attach it to ``model``."""
        loader = DataLoader(train_set, batch_size=self.laplace_batch_size, shuffle=False, collate_fn=collator)
        with gate_mode(model, "mean"), warnings.catch_warnings():
            # the gates' own parameters keep their variational posterior, not a Laplace one
            warnings.filterwarnings("ignore", message="Laplace: .* trainable tensor")
            posterior = fit_posterior(model, loader, prior_precision=self.prior_precision,
                                      prior_range=(self.prior_min, self.prior_max))
        model.__dict__[_POSTERIOR] = posterior
        return posterior

    @staticmethod
    def _kept_blocks(model: BaRAModel, posterior: KronPosterior) -> list[KronLayer]:
        """The posterior over the factors the saved (pruned) adapter keeps: each layer's block restricted
        to the factors that survive pruning, the pruned ones held at zero (they are removed)."""
        blocks = {layer.name: layer for layer in posterior.layers}
        for name, layer in model.bara_layers():
            keep = kept_factors(layer, model.bara_config.prune_threshold)
            for suffix, axis in ((".lora_A", "outputs"), (".lora_B", "inputs")):
                key = next((k for k in blocks if k.endswith(name + suffix)), None)
                if key is None:
                    continue
                if len(keep) == 0:
                    del blocks[key]
                elif len(keep) < layer.r:
                    blocks[key] = blocks[key].restricted(**{axis: keep})
        return list(blocks.values())

    def after_training(self, model: nn.Module, train_set: EncodedDataset, collator: Collator,
                       holdout: EncodedDataset | None = None) -> dict[str, Any]:
        posterior = self.fit_laplace(model, train_set, collator)
        return {"prior_precision": posterior.prior_precision, "covered_parameters": posterior.num_params}

    @staticmethod
    def posterior(model: nn.Module) -> KronPosterior:
        posterior = model.__dict__.get(_POSTERIOR)
        if posterior is None:
            raise ValueError("this model has no Laplace posterior over its factors: run BaRALaplace.fit_laplace on it "
                             "or load a saved bara-laplace run")
        return posterior

    # -- prediction ---------------------------------------------------------------------------
    def predict(self, model: nn.Module, dataset: EncodedDataset, collator: Collator, *, samples: int | None = None,
                mode: str | None = None, progress: bool = False) -> Predictions:
        mode = mode or "sample"
        if mode not in MODES:
            raise ValueError(f"method 'bara-laplace': mode {mode!r} is unknown; allowed: {', '.join(MODES)}")
        if mode in ("gates", "mean"):
            return super().predict(model, dataset, collator, samples=samples, mode="sample" if mode == "gates" else "mean",
                                   progress=progress)
        if mode == "constant":
            self.fix_constant_gates(model, dataset, collator)
        draw_mode = {"sample": "sample", "constant": "constant", "weights": "mean"}[mode]
        samples = 1 if mode == "weights" else (samples if samples is not None else self.eval_samples)
        return self._predict_with_noise(model, dataset, collator, draw_mode, samples)

    def _predict_with_noise(self, model: BaRAModel, dataset: EncodedDataset, collator: Collator, draw_mode: str,
                            samples: int) -> Predictions:
        posterior = self.posterior(model)
        generator = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)  # the gate draws
        loader, restore = length_sorted_loader(dataset, collator, self.laplace_batch_size)
        start, chunks = time.perf_counter(), []
        model.eval()
        for batch in loader:
            with gate_mode(model, "mean"):
                _, cov = next(linearised_logits(model, posterior, [batch]))
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            with gate_mode(model, draw_mode), torch.no_grad():
                logits = torch.stack([model(**inputs).logits.double() for _ in range(samples)])
            probs = noisy_softmax(logits, cov, self.noise_draws, generator)
            chunks.append(F.pad(probs.float(), (0, dataset.num_classes - probs.shape[-1])))
        return Predictions(probs=torch.cat(chunks)[restore], labels=dataset.labels, domains=dataset.domains,
                           seconds=time.perf_counter() - start,
                           gate_probs=predict(model, dataset, collator, mode="mean", samples=1).gate_probs
                           if draw_mode == "sample" else {})

    # -- save / load --------------------------------------------------------------------------
    def save(self, model: nn.Module, path: Path) -> None:
        posterior = self.posterior(model)
        super().save(model, path)
        dataclasses.replace(posterior, layers=self._kept_blocks(model, posterior)).save(Path(path) / POSTERIOR_FILE)

    def load(self, head: nn.Module, path: Path, target_modules: list[str], modules_to_save: list[str]) -> nn.Module:
        file = Path(path) / POSTERIOR_FILE
        if not file.exists():
            raise ValueError(f"{path}: no {POSTERIOR_FILE} (a bara-laplace run saves its posterior next to the adapter)")
        model = super().load(head, path, target_modules, modules_to_save)
        posterior = KronPosterior.load(file)
        named = dict(model.named_modules())
        missing = [layer.name for layer in posterior.layers if not isinstance(named.get(layer.name), nn.Linear)]
        if missing:
            raise ValueError(f"{file}: the posterior covers layers this model lacks, e.g. {missing[0]!r}")
        model.__dict__[_POSTERIOR] = posterior
        return model
