"""``blob``: Bayesian LoRA by backpropagation (BLoB; Wang, Shi, Han, Metaxas & Wang, NeurIPS 2024,
arXiv:2406.11675; reference code github.com/Wang-ML-Lab/bayesian-peft, ``modelwrappers/blob.py``).

What is implemented (and where it departs from the reference code):

* **Asymmetric Bayesianisation** (BLoB §3): on every targeted ``nn.Linear`` a LoRA update
  ``ΔW = s · B A`` (``s = lora_alpha / r``; r = 8, α = 16 → s = 2) with ``B`` deterministic
  (init 0, so the model starts as the base model) and a mean-field Gaussian posterior on ``A``:
  ``q(A) = N(M, Ω²)`` element-wise. ``M`` is initialised like LoRA's ``A`` (Kaiming-uniform,
  a = √5).
* **Parameterisation of the std** (BLoB §3, "Ω = G ∘ G"; reference code: ``A_sigma = lora_A_rho ** 2``):
  ``Ω = G²`` with ``G`` initialised ``U(ε/√2, ε)``, ε = 0.05 (so Ω starts in [0.00125, 0.0025]).
  The reference code switches to ``Ω = softplus(ρ)`` only for ε < 0; we implement the square
  form, which all its scripts use (``--bayes-eps 0.05``).
* **Prior** ``p(A) = N(0, β²)`` with β = 0.2 (``--bayes-beta 0.2``) and the closed-form KL
  ``Σ [log(β/Ω) + (Ω² + M²)/(2β²) − 1/2]`` (reference ``div_posterior_prior``, without its 1e-6
  stabilisers).
* **Noise** (BLoB §3, Flipout of Wen et al., ICLR 2018): one ``ΔA = Ω ⊙ E`` (``E ~ N(0, I)``)
  per forward, decorrelated across examples with random sign vectors ``r_n ∈ {±1}^in``,
  ``s_n ∈ {±1}^r``: ``h_n = M x_n + s_n ⊙ (ΔA (r_n ⊙ x_n))``. Example n thus uses the weight
  ``A_n = M + diag(s_n) ΔA diag(r_n)``, which is distributed exactly as ``q(A)``. The reference
  code draws the signs per *token*; we draw them per *example row* (all tokens of a sequence —
  and all choices of a multiple-choice example — share one ``A_n``), so a row is one posterior
  sample and `bara.predict.predict`'s S repeated copies of a batch are S different samples.
  ``noise="flipout_token"`` reproduces the reference code's per-token signs, and
  ``noise="independent"`` draws an independent ``E_n`` per row (exact, more memory).
* **Objective**: ``loss = NLL + w_t · KL`` added by `BLoBTrainer.compute_loss` (one optimizer).
  ``kl_weight`` chooses ``w_t``:

  - ``"elbo"`` (default): ``w_t = β_t / N``, the per-example ELBO (Blundell et al., ICML 2015,
    Eq. 8 with uniform minibatch weights π_i = 1/M and a mean NLL), with β_t the linear warm-up
    0 → 1 over the first ``kl_warmup`` of training (as BaRA's, `bara.objective.kl_warmup_factor`).
  - ``"blob"``: the reference code's KL re-weighting (``--bayes-klreweighting``, used in all its
    scripts): ``π_i = 2^i / (2^(M+1) − 1)`` for the i-th minibatch (i = 1..M, then again), a
    weight that grows within each cycle of ``M = ⌊100 · N^(π/γ) / batch⌋`` minibatches
    (γ = ``kl_gamma`` = 8) and sums to ≈ 1 per cycle (Blundell et al. §3.4 weight 2^(M−i)/(2^M−1),
    reversed). Caveat: the reference code applies the KL gradient with a *separate SGD optimizer*
    (``--bayes-kllr`` 0.01 for LLaMA, 0.002 for RoBERTa); here it goes through the Trainer's AdamW
    with the NLL, where its end-of-cycle spikes dominate Adam's second moments. That is why
    ``"elbo"`` is the default.
  - a number: a constant ``w``.

* **Prediction**: ``sample`` mode averages ``eval_samples = 10`` stochastic passes
  (``--bayes-eval-n-samples-final 10``); ``mean`` mode uses ``A = M`` (BLoB's "N = 0" rows).

Adapters are saved as ``blob_config.json`` + ``adapter_model.safetensors`` (never pickle); the
classification head (``modules_to_save``) is trained fully and saved with them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bara.config import dataclass_from_dict
from bara.io import WEIGHTS_NAME, atomic_write, copy_adapter_state, read_adapter_files
from bara.model import AdapterModel, find_targets
from bara.objective import kl_warmup_factor
from bara.predict import Predictions, predict
from bara.trainer import BaRATrainer
from bara.harness.methods.base import Method

CONFIG_NAME = "blob_config.json"
NOISES = ("flipout", "flipout_token", "independent")
KL_WEIGHTS = ("elbo", "blob")
LAYER_TENSORS = ("lora_A_mean", "lora_A_g", "lora_B")


# -- the closed-form KL and the KL weights ---------------------------------------------------
def gaussian_kl(mean: Tensor, std: Tensor, prior_std: float) -> Tensor:
    """Element-wise ``KL(N(mean, std²) ‖ N(0, prior_std²))`` (same shape as ``mean``)."""
    mean, std = mean.float(), std.float()
    return (math.log(prior_std) - torch.log(std) + (std.square() + mean.square()) / (2.0 * prior_std ** 2) - 0.5)


def blob_cycle_length(num_examples: int, batch_size: int, gamma: float = 8.0) -> int:
    """M of BLoB's KL re-weighting: ``⌊100 · N^(π/γ) / batch⌋`` minibatches (reference code)."""
    return max(1, int(100 * num_examples ** (math.pi / gamma) / max(1, batch_size)))


def blob_kl_weight(step: int, cycle: int) -> float:
    """π_i = 2^i / (2^(M+1) − 1) with i = (step mod M) + 1 (``step`` counts from 0).

    Written as ``2^(i−M−1) / (1 − 2^−(M+1))`` so that large M underflows to 0 instead of
    overflowing.
    """
    i = step % cycle + 1
    return 2.0 ** (i - cycle - 1) / (1.0 - 2.0 ** (-(cycle + 1)))


# -- configuration -------------------------------------------------------------------------
@dataclasses.dataclass
class BLoBConfig:
    """What a BLoB adapter is made of (saved as ``blob_config.json``)."""

    target_modules: list[str] | str
    r: int = 8
    lora_alpha: float = 16.0
    prior_std: float = 0.2
    init_eps: float = 0.05
    noise: str = "flipout"
    modules_to_save: list[str] | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.r, int) and self.r > 0):
            raise ValueError(f"BLoB r={self.r!r} must be a positive integer")
        if not self.lora_alpha > 0:
            raise ValueError(f"BLoB lora_alpha={self.lora_alpha!r} must be positive")
        if not self.prior_std > 0:
            raise ValueError(f"BLoB prior_std={self.prior_std!r} must be positive")
        if not self.init_eps > 0:
            raise ValueError(f"BLoB init_eps={self.init_eps!r} must be positive (std = G², G ~ U(ε/√2, ε))")
        if self.noise not in NOISES:
            raise ValueError(f"BLoB noise={self.noise!r} is unknown; allowed: {', '.join(NOISES)}")

    @property
    def scaling(self) -> float:
        return self.lora_alpha / self.r

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BLoBConfig":
        return dataclass_from_dict(cls, data)


class _RowContext:
    """Shared by a model's BLoB layers: how many examples the current forward holds."""

    examples: int | None = None


# -- the layer -----------------------------------------------------------------------------
class BLoBLinear(nn.Module):
    """``y = W₀x + s · B (A x)`` with ``A ~ N(M, (G²)²)`` sampled per example row (Flipout).

    ``sample`` switches between a posterior sample (training, ``sample`` prediction) and the
    posterior mean ``A = M``. Adapter tensors are float32 whatever the base layer's dtype.
    """

    def __init__(self, base_layer: nn.Linear, config: BLoBConfig, context: _RowContext | None = None):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"BLoBLinear wraps nn.Linear, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.r = config.r
        self.scaling = config.scaling
        self.prior_std = config.prior_std
        self.init_eps = config.init_eps
        self.noise = config.noise
        self.sample = True
        self.context = context or _RowContext()
        factory = {"device": base_layer.weight.device, "dtype": torch.float32}
        self.lora_A_mean = nn.Parameter(torch.empty(self.r, self.in_features, **factory))
        self.lora_A_g = nn.Parameter(torch.empty(self.r, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, self.r, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.lora_A_mean, a=math.sqrt(5))  # as LoRA's A (peft)
            nn.init.uniform_(self.lora_A_g, self.init_eps / math.sqrt(2), self.init_eps)  # BLoB: G ~ U(ε/√2, ε)
            nn.init.zeros_(self.lora_B)  # ΔW = 0 at start

    @property
    def weight(self) -> Tensor:  # code that inspects ``layer.weight`` (dtype, device) sees the base weight
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base_layer.bias

    def std(self) -> Tensor:
        """Ω = G ∘ G, the posterior standard deviation of A (BLoB's parameterisation)."""
        return self.lora_A_g.square()

    def kl(self) -> Tensor:
        """``KL(q(A) ‖ p(A))`` summed over the layer's r × in entries."""
        return gaussian_kl(self.lora_A_mean, self.std(), self.prior_std).sum()

    def _rows(self, x: Tensor) -> tuple[int, int]:
        """(rows, group): the leading axis holds ``rows``; ``group`` consecutive rows are one example."""
        rows = x.shape[0] if x.dim() >= 2 else 1
        examples = self.context.examples
        group = rows // examples if examples and rows % examples == 0 else 1
        return rows, group

    def _signs(self, rows: int, group: int, size: int, x: Tensor) -> Tensor:
        """±1 of shape broadcastable to ``[..., size]``: one vector per example, repeated over its group."""
        if self.noise == "flipout_token":  # reference code: a sign vector per token
            shape = x.shape[:-1] + (size,)
            return torch.empty(shape, device=x.device, dtype=x.dtype).bernoulli_(0.5).mul_(2).sub_(1)
        signs = torch.empty(rows // group, size, device=x.device, dtype=x.dtype).bernoulli_(0.5).mul_(2).sub_(1)
        signs = signs.repeat_interleave(group, dim=0)
        return signs.view(rows, *([1] * max(0, x.dim() - 2)), size) if x.dim() >= 2 else signs.view(size)

    def _noise(self, x: Tensor) -> Tensor:
        """``(A_n − M) x_n`` for every row n (shape ``[..., r]``)."""
        std = self.std()
        rows, group = self._rows(x)
        if self.noise == "independent":
            eps = torch.randn(rows // group, self.r, self.in_features, device=x.device, dtype=std.dtype)
            delta = (std * eps).repeat_interleave(group, dim=0)  # [rows, r, in]
            flat = x.reshape(rows, -1, self.in_features)
            return torch.bmm(flat, delta.transpose(1, 2)).reshape(*x.shape[:-1], self.r)
        delta = std * torch.randn_like(std)  # one ΔA per forward, decorrelated by the signs
        sign_in = self._signs(rows, group, self.in_features, x)
        sign_out = self._signs(rows, group, self.r, x)
        return F.linear(x * sign_in, delta) * sign_out

    def forward(self, x: Tensor) -> Tensor:
        out = self.base_layer(x)
        xa = x.to(self.lora_A_mean.dtype)
        h = F.linear(xa, self.lora_A_mean)
        if self.sample:
            h = h + self._noise(xa)
        return out + (F.linear(h, self.lora_B) * self.scaling).to(out.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.r}, scaling={self.scaling}, noise={self.noise}"


# -- the model wrapper ---------------------------------------------------------------------
class BLoBModel(AdapterModel):
    """A frozen base model with `BLoBLinear` layers on its targeted Linear layers.

    Calls go to the base model and unknown attributes are looked up on it. Only the adapter
    tensors and ``modules_to_save`` train.

    Example:
        >>> base = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> model = BLoBModel(base, BLoBConfig(target_modules=["0"], r=2))
        >>> model(torch.randn(4, 8)).shape
        torch.Size([4, 2])
    """

    def __init__(self, model: nn.Module, config: BLoBConfig):
        super().__init__()
        if any(isinstance(m, BLoBLinear) for m in model.modules()):
            raise ValueError("model already carries BLoB layers")
        self.base_model = model
        self.blob_config = config
        self.context = _RowContext()
        names = find_targets(model, config.target_modules)
        self._inject(model, names, lambda name, linear: BLoBLinear(linear, config, self.context), config.modules_to_save)
        model.register_forward_pre_hook(self._count_examples, with_kwargs=True)

    @property
    def accepts_loss_kwargs(self) -> bool:
        """Trainer must not pass ``num_items_in_batch`` to heads that do not take it."""
        return bool(getattr(self.base_model, "accepts_loss_kwargs", False))

    def _count_examples(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Pre-hook: the number of examples (first axis of the inputs) of this forward."""
        inputs = kwargs.get("input_ids", kwargs.get("inputs_embeds"))
        if inputs is None:
            inputs = next((a for a in args if isinstance(a, Tensor)), None)
        self.context.examples = inputs.shape[0] if isinstance(inputs, Tensor) and inputs.dim() >= 2 else None

    def blob_layers(self) -> Iterator[tuple[str, BLoBLinear]]:
        """``(name, layer)`` for every BLoB layer, names relative to the base model."""
        for name, module in self.base_model.named_modules():
            if isinstance(module, BLoBLinear):
                yield name, module

    def set_sample(self, sample: bool) -> None:
        for _, layer in self.blob_layers():
            layer.sample = bool(sample)

    def kl_divergence(self) -> Tensor:
        """``Σ_layers KL(q(A) ‖ N(0, β²))`` (nats)."""
        return torch.stack([layer.kl() for _, layer in self.blob_layers()]).sum()

    def adapter_state(self) -> dict[str, Tensor]:
        """Live tensors of everything an adapter file holds, keyed as in the file."""
        state: dict[str, Tensor] = {}
        for name, layer in self.blob_layers():
            for key in LAYER_TENSORS:
                state[f"{name}.{key}"] = getattr(layer, key)
        for module_name in self.saved_modules:
            for key, value in self.base_model.get_submodule(module_name).state_dict(keep_vars=True).items():
                state[f"{module_name}.{key}"] = value
        return state

    def save_pretrained(self, path: str | os.PathLike) -> None:
        save_blob(self, path)

    @classmethod
    def from_pretrained(cls, base_model: nn.Module, path: str | os.PathLike) -> "BLoBModel":
        return load_blob(base_model, path)


@contextlib.contextmanager
def sampling(model: nn.Module, sample: bool) -> Iterator[nn.Module]:
    """Temporarily draw A (``True``) or use its mean (``False``) in every BLoB layer."""
    layers = [m for m in model.modules() if isinstance(m, BLoBLinear)]
    previous = [layer.sample for layer in layers]
    for layer in layers:
        layer.sample = sample
    try:
        yield model
    finally:
        for layer, flag in zip(layers, previous):
            layer.sample = flag


# -- files (safetensors + JSON only) -------------------------------------------------------
def save_blob(model: BLoBModel, path: str | os.PathLike) -> None:
    """Write ``blob_config.json`` and ``adapter_model.safetensors`` into ``path``."""
    from safetensors.torch import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.detach().cpu().contiguous() for key, value in model.adapter_state().items()}
    config = json.dumps(model.blob_config.to_dict(), indent=2, sort_keys=True) + "\n"
    atomic_write(out / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "blob"}))
    atomic_write(out / CONFIG_NAME, lambda tmp: Path(tmp).write_text(config))


def read_blob(path: str | os.PathLike) -> tuple[BLoBConfig, dict[str, Tensor]]:
    """Config and tensors of a saved adapter; pickle files are refused, never opened."""
    config, tensors = read_adapter_files(path, CONFIG_NAME)
    return BLoBConfig.from_dict(config), tensors


def load_blob(base_model: nn.Module, path: str | os.PathLike) -> BLoBModel:
    """Rebuild a saved BLoB adapter on ``base_model`` (shapes checked per tensor)."""
    config, tensors = read_blob(path)
    model = BLoBModel(base_model, config)
    copy_adapter_state(model.adapter_state(), tensors, path)
    return model


# -- training ------------------------------------------------------------------------------
class BLoBTrainer(BaRATrainer):
    """`BaRATrainer` whose loss is ``NLL + w_t · KL(q(A) ‖ p(A))`` for a `BLoBModel`.

    Args:
        kl_weight: ``"elbo"`` (``β_t / N``), ``"blob"`` (the reference code's cyclic
            ``2^i / (2^(M+1) − 1)``) or a constant (see the module docstring).
        kl_warmup: fraction of training over which β_t of ``"elbo"`` rises 0 → 1.
        kl_gamma: γ in BLoB's cycle length ``M = ⌊100 · N^(π/γ) / batch⌋``.
        Other arguments are `BaRATrainer`'s (``num_train_examples`` is N).

    Logged every ``logging_steps``: ``nll``, ``kl_blob`` (the KL in nats), ``kl_weight`` and
    ``blob_std`` (the mean posterior std of A). Checkpoints hold the adapter only.
    """

    def __init__(self, *args, kl_weight: str | float = "elbo", kl_warmup: float = 0.1, kl_gamma: float = 8.0,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.kl_weight = _check_kl_weight(kl_weight)
        self.kl_warmup = kl_warmup
        self.kl_gamma = kl_gamma

    def _blob_model(self) -> BLoBModel | None:
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        return model if isinstance(model, BLoBModel) else None

    def kl_weight_at(self, step: int) -> float:
        """w_t at optimizer step ``step`` (0-based)."""
        if not isinstance(self.kl_weight, str):
            return float(self.kl_weight)
        if not self.num_train_examples:
            raise ValueError("BLoBTrainer needs num_train_examples (or a sized train_dataset) for the KL weight")
        if self.kl_weight == "elbo":
            return kl_warmup_factor(step, max(1, self.state.max_steps), self.kl_warmup) / self.num_train_examples
        batch = self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps * max(1, self.args.world_size)
        return blob_kl_weight(step, blob_cycle_length(self.num_train_examples, batch, self.kl_gamma))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        blob = self._blob_model()
        if blob is not None and model.training:
            kl = blob.kl_divergence()
            weight = self.kl_weight_at(self.state.global_step)
            logs = self._bara_logs
            logs["nll"].append(float(loss.detach()))
            logs["kl_blob"].append(float(kl.detach()))
            logs["kl_weight"].append(weight)
            with torch.no_grad():
                stds = [layer.std() for _, layer in blob.blob_layers()]
                logs["blob_std"].append(float(sum(s.sum() for s in stds) / sum(s.numel() for s in stds)))
            loss = loss + weight * kl.to(loss.dtype)
        return (loss, outputs) if return_outputs else loss

    # -- checkpoints hold the adapter only ---------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        blob = self._blob_model()
        if blob is None:
            return super()._save(output_dir, state_dict)
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            save_blob(blob, output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        blob = self._blob_model()
        if blob is None or not os.path.exists(os.path.join(resume_from_checkpoint, CONFIG_NAME)):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        _, tensors = read_blob(resume_from_checkpoint)
        copy_adapter_state(blob.adapter_state(), tensors, resume_from_checkpoint)


def _check_kl_weight(value: str | float) -> str | float:
    if isinstance(value, str):
        if value not in KL_WEIGHTS:
            raise ValueError(f"BLoB kl_weight={value!r} is unknown; allowed: {', '.join(KL_WEIGHTS)} or a number ≥ 0")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"BLoB kl_weight={value!r} must be {', '.join(KL_WEIGHTS)} or a finite number ≥ 0")
    return float(value)


# -- the method ----------------------------------------------------------------------------
@dataclasses.dataclass
class BLoB(Method):
    """BLoB with the paper's / reference code's defaults (see the module docstring)."""

    name: ClassVar[str] = "blob"
    stochastic: ClassVar[bool] = True
    eval_samples: int = 10  # --bayes-eval-n-samples-final 10
    r: int = 8  # --lora-r 8
    lora_alpha: float = 16.0  # --lora-alpha 16 (LLaMA scripts): scaling 2
    prior_std: float = 0.2  # β, --bayes-beta 0.2
    init_eps: float = 0.05  # ε, --bayes-eps 0.05: G ~ U(ε/√2, ε), std = G²
    noise: str = "flipout"  # per-example Flipout (BLoB §3); "flipout_token" = reference code; "independent"
    kl_weight: str | float = "elbo"  # "elbo" (β_t / N), "blob" (2^i / (2^(M+1) − 1)) or a constant
    kl_warmup: float = 0.1  # warm-up fraction of "elbo" (as BaRA's default)
    kl_gamma: float = 8.0  # γ of the "blob" cycle length, --bayes-gamma 8

    def __post_init__(self) -> None:
        if not (isinstance(self.eval_samples, int) and self.eval_samples > 0):
            raise ValueError(f"BLoB eval_samples={self.eval_samples!r} must be a positive integer")
        self.kl_weight = _check_kl_weight(self.kl_weight)
        if not (isinstance(self.kl_warmup, (int, float)) and 0.0 <= self.kl_warmup <= 1.0):
            raise ValueError(f"BLoB kl_warmup={self.kl_warmup!r} must be a fraction of training in [0, 1]")
        if not self.kl_gamma > 0:
            raise ValueError(f"BLoB kl_gamma={self.kl_gamma!r} must be positive")
        self.blob_config([])  # validates r, lora_alpha, prior_std, init_eps, noise

    def blob_config(self, target_modules: list[str] | str, modules_to_save: list[str] | None = None) -> BLoBConfig:
        return BLoBConfig(target_modules=target_modules, r=self.r, lora_alpha=self.lora_alpha, prior_std=self.prior_std,
                          init_eps=self.init_eps, noise=self.noise, modules_to_save=modules_to_save or None)

    def wrap(self, head: nn.Module, target_modules: list[str], modules_to_save: list[str]) -> nn.Module:
        return BLoBModel(head, self.blob_config(target_modules, modules_to_save))

    def trainer_class(self) -> type[BaRATrainer]:
        return BLoBTrainer

    def trainer_kwargs(self) -> dict[str, Any]:
        return {"kl_weight": self.kl_weight, "kl_warmup": self.kl_warmup, "kl_gamma": self.kl_gamma}

    def before_training(self, model: nn.Module) -> None:
        for module in model.modules():  # BLoB trains on sampled A
            if isinstance(module, BLoBLinear):
                module.sample = True

    def predict(self, model: nn.Module, dataset, collator, *, samples: int | None = None, mode: str | None = None,
                progress: bool = False) -> Predictions:
        mode = mode or "sample"
        if mode not in ("sample", "mean"):
            raise ValueError(f"BLoB prediction mode {mode!r} is unknown; allowed: sample, mean")
        samples = samples if samples is not None else self.eval_samples
        with sampling(model, mode == "sample"):
            return predict(model, dataset, collator, mode=mode, samples=samples if mode == "sample" else 1,
                           progress=progress)

    def save(self, model: nn.Module, path: Path) -> None:
        if not isinstance(model, BLoBModel):
            raise TypeError(f"BLoB.save expects a BLoBModel, got {type(model).__name__}")
        save_blob(model, path)

    def load(self, head: nn.Module, path: Path, target_modules: list[str], modules_to_save: list[str]) -> nn.Module:
        return load_blob(head, path)
