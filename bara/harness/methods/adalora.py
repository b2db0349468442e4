"""``adalora``: AdaLoRA (Zhang et al., "Adaptive Budget Allocation for Parameter-Efficient
Fine-Tuning", ICLR 2023, arXiv:2303.10512) through Hugging Face peft (``AdaLoraConfig``).

What it is: on every targeted layer an SVD-shaped update ``ΔW = (α / init_r) · P Λ Q`` with
``init_r`` triplets (left vector, singular value, right vector). During training a budget
schedule prunes the least important triplets (importance = smoothed |w · ∂L/∂w| times its
uncertainty, EMA factors ``beta1``/``beta2``) across all layers, from ``init_r`` per layer down
to an average of ``target_r`` per layer; a pruned triplet keeps its vectors but its singular
value is set to 0. The final per-layer ranks differ between layers: that allocation is what the
method is about, and it is what `final_ranks` / ``plots.layer_ranks`` show.

How it is wired here (peft's AdaLoRA does not train itself; two pieces are the caller's job):

* ``update_and_allocate(step)`` is called by `AdaLoRATrainer` (through `AdaLoRABudgetCallback`)
  once per optimizer step, in ``on_optimizer_step`` — transformers 5.x runs that hook after
  ``optimizer.step()`` and before ``model.zero_grad()``, so the importance scores see the
  step's (clipped) gradients, as peft's docstring and the reference code require.
* **The schedule comes from the run's length.** ``tinit`` and ``tfinal`` are *fractions* of the
  run's optimizer steps (peft wants step counts and ``total_step`` when the config is built,
  which is before the pipeline knows the step count): the trainer writes
  ``total_step = max_steps``, ``tinit = ⌊tinit · T⌉`` and ``tfinal = ⌊tfinal · T⌉`` (at least 1
  when ``tfinal > 0``, so the final allocation — exactly ``target_r`` per layer on average —
  happens at a step the run reaches) into the adapter's config at ``on_train_begin``.
* **The orthogonal regulariser** ``orth_reg_weight · mean‖PᵀP − I‖_F`` is added to the loss by
  `AdaLoRATrainer.compute_loss`. peft adds it only in ``AdaLoraModel.forward``, which a plain
  ``PeftModel`` (no ``task_type``, as here: our heads take their own arguments) bypasses — it
  calls the head directly — so without this the regulariser would silently be missing.

Defaults (see `AdaLoRA`): ``init_r = 12``, ``target_r = 8`` (peft's defaults; the paper starts
from 1.5× the final budget, and an average final rank of 8 matches the ``lora`` baseline's
r = 8), ``lora_alpha = 16`` (the reference scripts' α and our LoRA's), ``tinit = 0.1``,
``tfinal = 0.4`` (the reference GLUE SST-2 script prunes from step 6000 to 50.5k − 22000 of
~50.5k steps: fractions 0.12 and 0.44), ``deltaT = 10`` steps between reallocations (peft's
docs example; the reference scripts use 1-100 on runs of 10³-10⁵ steps), ``orth_reg_weight =
0.1`` (the reference scripts' ``reg_orth_coef`` on most GLUE tasks; peft's default is 0.5),
``beta1 = beta2 = 0.85`` (both). For an r-sweep pass ``init_r = r, target_r = r // 2``.

Prediction is one deterministic pass, as LoRA's. Adapters are saved with peft's
``save_pretrained`` (``adapter_config.json`` holding ``rank_pattern`` + safetensors pruned to
the final ranks) plus ``adalora_ranks.json`` (the final rank of every layer); they load with
``PeftModel.from_pretrained``, which shrinks every layer to its final rank. Nothing is pickled.
Trainer checkpoints hold the full (unpruned) adapter, the allocator's importance statistics and
the rank pattern (``adalora_state.json`` + ``adalora_checkpoint.safetensors``), so a resumed
run continues the schedule where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, ClassVar

import torch
from peft import AdaLoraConfig, PeftModel, get_peft_model
from peft.tuners.adalora import AdaLoraLayer, AdaLoraModel
from torch import Tensor, nn
from transformers import TrainerCallback

from bara.io import atomic_write
from bara.trainer import BaRATrainer
from bara.harness.methods.base import Method

RANKS_FILE = "adalora_ranks.json"  # in a saved adapter: the final rank of every layer
STATE_FILE = "adalora_state.json"  # in a Trainer checkpoint: rank pattern and schedule
CHECKPOINT_TENSORS = "adalora_checkpoint.safetensors"  # in a Trainer checkpoint: full adapter + allocator
_ALLOCATOR_STATS = ("ipt", "exp_avg_ipt", "exp_avg_unc")


# -- helpers on a peft AdaLoRA model -------------------------------------------------------------
def adalora_model(model: nn.Module) -> AdaLoraModel | None:
    """The ``AdaLoraModel`` inside ``model`` (a ``PeftModel`` or the tuner itself), else ``None``."""
    inner = model.base_model if isinstance(model, PeftModel) else model
    return inner if isinstance(inner, AdaLoraModel) else None


def _adapter_name(model: AdaLoraModel) -> str:
    name = getattr(model, "trainable_adapter_name", None)
    if name is None:
        active = model.active_adapter
        name = active[0] if isinstance(active, (list, tuple)) else active
    return name


def _layers(model: AdaLoraModel, adapter: str) -> list[tuple[str, AdaLoraLayer]]:
    """``(name, layer)`` for every AdaLoRA layer holding ``adapter``, names relative to the wrapped model."""
    return [(n, m) for n, m in model.model.named_modules() if isinstance(m, AdaLoraLayer) and adapter in m.lora_E]


def schedule_steps(total_steps: int, tinit: float, tfinal: float) -> tuple[int, int, int]:
    """``(total_step, tinit, tfinal)`` in steps for a run of ``total_steps`` optimizer steps.

    ``tinit``/``tfinal`` are fractions of the run, rounded half up. ``tfinal`` is at least one step
    when the fraction is positive: the final allocation (exactly the target budget) runs at the step
    with index ``total_step − tfinal``, which a run of ``total_step`` steps (indices ``0 … T−1``)
    reaches only if ``tfinal ≥ 1``. Both shrink, the longer first, until a budgeting phase is left
    (peft requires ``tinit < total_step − tfinal``).

    Example:
        >>> schedule_steps(1000, 0.1, 0.4)
        (1000, 100, 400)
        >>> schedule_steps(6, 0.1, 0.4)
        (6, 1, 2)
        >>> schedule_steps(1, 0.1, 0.4)
        (1, 0, 0)
    """
    total = max(1, int(total_steps))
    ti = int(math.floor(tinit * total + 0.5))
    tf = int(math.floor(tfinal * total + 0.5))
    if tfinal > 0:
        tf = max(1, tf)
    while ti >= total - tf and (ti > 0 or tf > 0):
        if tf >= ti and tf > 0:
            tf -= 1
        else:
            ti -= 1
    return total, ti, tf


def set_schedule(model: nn.Module, total_steps: int, tinit: float, tfinal: float) -> tuple[int, int, int]:
    """Write the schedule of a ``total_steps`` run into the trainable adapter's config (which peft's
    ``RankAllocator`` reads at every step); returns ``(total_step, tinit, tfinal)`` in steps."""
    ada = adalora_model(model)
    if ada is None:
        raise TypeError(f"set_schedule expects a peft AdaLoRA model, got {type(model).__name__}")
    total, ti, tf = schedule_steps(total_steps, tinit, tfinal)
    config = ada.peft_config[_adapter_name(ada)]
    config.total_step, config.tinit, config.tfinal = total, ti, tf
    return total, ti, tf


def orthogonal_regularizer(model: nn.Module) -> Tensor:
    """``mean over P and Q of ‖PᵀP − I‖_F`` (``QQᵀ`` for the right vectors), exactly peft's
    ``AdaLoraModel.forward`` term, over the trainable adapter (without its weight)."""
    ada = adalora_model(model)
    if ada is None:
        raise TypeError(f"orthogonal_regularizer expects a peft AdaLoRA model, got {type(model).__name__}")
    adapter = _adapter_name(ada)
    terms = []
    for _, layer in _layers(ada, adapter):
        a, b = layer.lora_A[adapter], layer.lora_B[adapter]
        for cov in (a @ a.T, b.T @ b):
            eye = torch.eye(*cov.shape, dtype=cov.dtype, device=cov.device)
            terms.append(torch.norm(cov - eye, p="fro"))
    if not terms:
        raise ValueError("the model has no AdaLoRA layers")
    return torch.stack(terms).mean()


def final_ranks(model: nn.Module) -> dict[str, int]:
    """The rank of every AdaLoRA layer: the triplets the budget kept (``rank_pattern``), or every
    triplet (``init_r``) before the first allocation. Names are the layers' module paths."""
    ada = adalora_model(model)
    if ada is None:
        raise TypeError(f"final_ranks expects a peft AdaLoRA model, got {type(model).__name__}")
    adapter = _adapter_name(ada)
    ranks = {name: int(layer.r[adapter]) for name, layer in _layers(ada, adapter)}
    for key, mask in (ada.peft_config[adapter].rank_pattern or {}).items():
        layer = key.removesuffix(f".{adapter}").removesuffix(".lora_E")
        ranks[layer] = int(torch.as_tensor(mask).bool().sum())
    return ranks


def rank_report(model: nn.Module) -> dict[str, Any]:
    """What ``adalora_ranks.json`` holds: the per-layer ranks, their mean and the schedule."""
    ada = adalora_model(model)
    config = ada.peft_config[_adapter_name(ada)]
    ranks = final_ranks(model)
    return {"ranks": ranks, "mean_rank": sum(ranks.values()) / max(1, len(ranks)), "total_rank": sum(ranks.values()),
            "init_r": config.init_r, "target_r": config.target_r, "allocated": config.rank_pattern is not None,
            "schedule": {"total_step": config.total_step, "tinit": config.tinit, "tfinal": config.tfinal,
                         "deltaT": config.deltaT}}


# -- checkpoints: the full adapter, the allocator's statistics and the rank pattern -------------
def save_checkpoint(model: nn.Module, folder: str | os.PathLike) -> None:
    """Write what resuming needs into ``folder`` (safetensors + JSON)."""
    from safetensors.torch import save_file

    ada = adalora_model(model)
    config = ada.peft_config[_adapter_name(ada)]
    tensors = {f"param::{n}": p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    allocator = getattr(ada, "rankallocator", None)
    if allocator is not None:
        for stat in _ALLOCATOR_STATS:
            for n, t in getattr(allocator, stat).items():
                tensors[f"{stat}::{n}"] = t.detach().cpu().contiguous()
    pattern = {k: [bool(v) for v in torch.as_tensor(m).reshape(-1).tolist()] for k, m in (config.rank_pattern or {}).items()}
    state = {"rank_pattern": pattern if config.rank_pattern is not None else None,
             "schedule": {"total_step": config.total_step, "tinit": config.tinit, "tfinal": config.tfinal}}
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / CHECKPOINT_TENSORS, lambda tmp: save_file(tensors, tmp, metadata={"format": "adalora"}))
    atomic_write(out / STATE_FILE, lambda tmp: Path(tmp).write_text(json.dumps(state, indent=2) + "\n"))


def load_checkpoint(model: nn.Module, folder: str | os.PathLike) -> None:
    """Copy a `save_checkpoint` folder back into ``model`` (in place: the optimizer keeps its parameters)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    ada = adalora_model(model)
    adapter = _adapter_name(ada)
    tensors = load_file(str(folder / CHECKPOINT_TENSORS))
    state = json.loads((folder / STATE_FILE).read_text())
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    saved = {k.partition("::")[2]: v for k, v in tensors.items() if k.startswith("param::")}
    if saved.keys() != params.keys():
        missing, extra = sorted(params.keys() - saved.keys()), sorted(saved.keys() - params.keys())
        raise ValueError(f"{folder}: the AdaLoRA checkpoint does not fit this model (missing {missing[:3]}, "
                         f"unexpected {extra[:3]})")
    with torch.no_grad():
        for n, p in params.items():
            if tuple(saved[n].shape) != tuple(p.shape):
                raise ValueError(f"{folder}: {n} has shape {tuple(saved[n].shape)} in the checkpoint, "
                                 f"{tuple(p.shape)} in the model")
            p.copy_(saved[n].to(device=p.device, dtype=p.dtype))
    allocator = getattr(ada, "rankallocator", None)
    if allocator is not None:  # keyed by parameter names relative to the wrapped model
        device = {n: p.device for n, p in ada.model.named_parameters()}
        for stat in _ALLOCATOR_STATS:
            values = {k.partition("::")[2]: v for k, v in tensors.items() if k.startswith(f"{stat}::")}
            setattr(allocator, stat, {n: v.to(device.get(n, v.device)) for n, v in values.items()})
    ada.peft_config[adapter].rank_pattern = state["rank_pattern"]


# -- training ------------------------------------------------------------------------------------
class AdaLoRABudgetCallback(TrainerCallback):
    """Sets the schedule from the run's ``max_steps`` and runs peft's ``update_and_allocate`` after
    every optimizer step (before the gradients are zeroed)."""

    def __init__(self, trainer: "AdaLoRATrainer"):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer.set_schedule(state.max_steps)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.allocate(state.global_step)  # 0-based index of the step just taken


class AdaLoRATrainer(BaRATrainer):
    """`BaRATrainer` for a peft AdaLoRA model: budget allocation after each optimizer step and the
    orthogonal regulariser in the loss (see the module docstring).

    Args:
        tinit: fraction of the run's steps before the first pruning (peft's ``tinit``).
        tfinal: fraction of the run's steps trained at the final ranks (peft's ``tfinal``).
        Other arguments are `BaRATrainer`'s.

    Logged every ``logging_steps``: ``nll``, ``orth_reg`` (the unweighted regulariser) and
    ``adalora_rank`` (the mean rank per layer after each step's allocation).
    """

    def __init__(self, *args, tinit: float = 0.1, tfinal: float = 0.4, **kwargs):
        super().__init__(*args, **kwargs)
        _check_fractions(tinit, tfinal)
        self.tinit_fraction, self.tfinal_fraction = float(tinit), float(tfinal)
        self.allocations = 0  # update_and_allocate calls in this session
        self.add_callback(AdaLoRABudgetCallback(self))

    def _peft_model(self) -> nn.Module | None:
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        return model if adalora_model(model) is not None else None

    def set_schedule(self, total_steps: int) -> tuple[int, int, int] | None:
        model = self._peft_model()
        return None if model is None else set_schedule(model, total_steps, self.tinit_fraction, self.tfinal_fraction)

    def allocate(self, step: int) -> None:
        model = self._peft_model()
        if model is None:
            return
        model.base_model.update_and_allocate(step)
        self.allocations += 1
        ranks = final_ranks(model)
        self._bara_logs["adalora_rank"].append(sum(ranks.values()) / max(1, len(ranks)))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        peft_model = self._peft_model()
        # a PeftModel subclass with a task type runs AdaLoraModel.forward, which has added the term already
        if peft_model is not None and model.training and type(peft_model).forward is PeftModel.forward:
            ada = peft_model.base_model
            weight = ada.peft_config[_adapter_name(ada)].orth_reg_weight
            self._bara_logs["nll"].append(float(loss.detach()))
            if weight > 0:
                reg = orthogonal_regularizer(peft_model)
                self._bara_logs["orth_reg"].append(float(reg.detach()))
                term = weight * reg
                if self._loss_is_scaled_for_ga(num_items_in_batch):  # added once per optimizer step
                    term = term / max(1, getattr(self, "current_gradient_accumulation_steps", 1) or 1)
                loss = loss + term.to(loss.dtype)
        return (loss, outputs) if return_outputs else loss

    # -- checkpoints hold the full adapter, the allocator statistics and the rank pattern -------
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        model = self._peft_model()
        if model is None:
            return super()._save(output_dir, state_dict)
        if self.args.should_save:
            save_checkpoint(model, output_dir or self.args.output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        peft_model = self._peft_model()
        if peft_model is None or not os.path.exists(os.path.join(resume_from_checkpoint, STATE_FILE)):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        load_checkpoint(peft_model, resume_from_checkpoint)


def _check_fractions(tinit: float, tfinal: float) -> None:
    for key, value in (("tinit", tinit), ("tfinal", tfinal)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise ValueError(f"AdaLoRA {key}={value!r} must be a fraction of the run's steps in [0, 1)")
    if tinit + tfinal >= 1.0:
        raise ValueError(f"AdaLoRA tinit + tfinal = {tinit + tfinal:g} leaves no budgeting phase; it must be < 1")


# -- the method ----------------------------------------------------------------------------------
@dataclasses.dataclass
class AdaLoRA(Method):
    """AdaLoRA (peft): SVD-shaped LoRA whose ranks are pruned from init_r to an average target_r per layer.

    Defaults and their sources are in the module docstring.
    """

    name: ClassVar[str] = "adalora"
    init_r: int = 12  # triplets per layer at the start (peft's default; 1.5 × target_r as in the paper)
    target_r: int = 8  # average rank per layer at the end (= the lora baseline's r)
    lora_alpha: float = 16.0  # ΔW scaled by α / init_r (reference scripts' α 16)
    lora_dropout: float = 0.0
    tinit: float = 0.1  # fraction of steps before pruning starts (reference SST-2: 6000 of ~50.5k)
    tfinal: float = 0.4  # fraction of steps at the final ranks (reference SST-2: 22000 of ~50.5k)
    deltaT: int = 10  # steps between two reallocations during the budgeting phase
    orth_reg_weight: float = 0.1  # γ of ‖PᵀP − I‖ + ‖QQᵀ − I‖ (reference reg_orth_coef 0.1)
    beta1: float = 0.85  # EMA of the sensitivity
    beta2: float = 0.85  # EMA of its uncertainty

    def __post_init__(self) -> None:
        if isinstance(self.init_r, bool) or not (isinstance(self.init_r, int) and self.init_r > 0):
            raise ValueError(f"AdaLoRA init_r={self.init_r!r} must be a positive integer")
        if isinstance(self.target_r, bool) or not (isinstance(self.target_r, int) and 0 < self.target_r <= self.init_r):
            raise ValueError(f"AdaLoRA target_r={self.target_r!r} must be an integer in [1, init_r={self.init_r}]")
        if not (isinstance(self.lora_alpha, (int, float)) and self.lora_alpha > 0):
            raise ValueError(f"AdaLoRA lora_alpha={self.lora_alpha!r} must be positive")
        if not (isinstance(self.lora_dropout, (int, float)) and 0.0 <= self.lora_dropout < 1.0):
            raise ValueError(f"AdaLoRA lora_dropout={self.lora_dropout!r} must be in [0, 1)")
        _check_fractions(self.tinit, self.tfinal)
        if isinstance(self.deltaT, bool) or not (isinstance(self.deltaT, int) and self.deltaT > 0):
            raise ValueError(f"AdaLoRA deltaT={self.deltaT!r} must be a positive number of steps")
        if not (isinstance(self.orth_reg_weight, (int, float)) and self.orth_reg_weight >= 0):
            raise ValueError(f"AdaLoRA orth_reg_weight={self.orth_reg_weight!r} must be ≥ 0")
        for key in ("beta1", "beta2"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and 0.0 < value < 1.0):
                raise ValueError(f"AdaLoRA {key}={value!r} must be in (0, 1)")

    def adalora_config(self, target_modules: list[str], modules_to_save: list[str] | None = None) -> AdaLoraConfig:
        """peft's config; the schedule in steps is a placeholder until `AdaLoRATrainer` sets it from the run."""
        return AdaLoraConfig(init_r=self.init_r, target_r=self.target_r, lora_alpha=self.lora_alpha,
                             lora_dropout=self.lora_dropout, target_modules=list(target_modules),
                             modules_to_save=modules_to_save or None, tinit=0, tfinal=0, total_step=1,
                             deltaT=self.deltaT, beta1=self.beta1, beta2=self.beta2,
                             orth_reg_weight=self.orth_reg_weight)

    def wrap(self, head: nn.Module, target_modules: list[str], modules_to_save: list[str]) -> nn.Module:
        return get_peft_model(head, self.adalora_config(target_modules, modules_to_save))

    def trainer_class(self) -> type[BaRATrainer]:
        return AdaLoRATrainer

    def trainer_kwargs(self) -> dict[str, Any]:
        return {"tinit": self.tinit, "tfinal": self.tfinal}

    def save(self, model: nn.Module, path: Path) -> None:
        if adalora_model(model) is None:
            raise TypeError(f"AdaLoRA.save expects a peft AdaLoRA model, got {type(model).__name__}")
        report = rank_report(model)  # before save_pretrained, which rewrites the rank pattern's keys
        # A layer that AdaLoRA pruned to rank 0 saves factors of shape (0, d); peft warns that they look like
        # shards a distributed save forgot to gather. Here they are the allocation's result, so that warning is dropped.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LoRA tensor\\(s\\) have invalid shape")
            model.save_pretrained(str(path))
        Path(path, RANKS_FILE).write_text(json.dumps(report, indent=2) + "\n")

    def load(self, head: nn.Module, path: Path, target_modules: list[str], modules_to_save: list[str]) -> nn.Module:
        path = Path(path)
        if not (path / "adapter_model.safetensors").exists():
            raise ValueError(f"{path}: no adapter_model.safetensors (AdaLoRA adapters are loaded from safetensors only)")
        config = json.loads((path / "adapter_config.json").read_text()) if (path / "adapter_config.json").exists() else {}
        if config.get("peft_type") != "ADALORA":
            raise ValueError(f"{path}: not an AdaLoRA adapter (peft_type {config.get('peft_type')!r})")
        with warnings.catch_warnings():  # peft reads AdaLoRA's rank_pattern as LoRA's per-module ranks, and warns
            warnings.filterwarnings("ignore", message="The following rank_pattern keys did not match")
            return PeftModel.from_pretrained(head, str(path))
