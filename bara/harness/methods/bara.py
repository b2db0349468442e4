"""``bara``: the full method, and its ablations ``bara-global`` (local gates forced open: a global
Bernoulli rank mask per layer) and ``bara-local`` (global gates forced open)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

from torch import nn

from bara.config import BaRAConfig
from bara.model import BaRAModel, fix_gates, get_bara_model
from bara.layer import GATE_MODES
from bara.predict import Predictions, predict
from bara.harness.methods.base import Method


@dataclasses.dataclass
class BaRA(Method):
    """BaRA with the library's defaults; ``config`` holds any `BaRAConfig` field to override."""

    name: ClassVar[str] = "bara"
    stochastic: ClassVar[bool] = True
    gate_mode: ClassVar[str] = "sample"  # the mode used in training and for sampled prediction
    eval_samples: int = 10
    gate_lr_multiplier: float = 1.0
    config: dict[str, Any] = dataclasses.field(default_factory=dict)

    def bara_config(self, target_modules: list[str], modules_to_save: list[str]) -> BaRAConfig:
        fields = {"target_modules": target_modules, "modules_to_save": modules_to_save or None} | self.config
        return BaRAConfig(**fields)

    def wrap(self, head: nn.Module, target_modules: list[str], modules_to_save: list[str]) -> nn.Module:
        model = get_bara_model(head, self.bara_config(target_modules, modules_to_save))
        model.set_gate_mode(self.gate_mode)
        return model

    def trainer_kwargs(self) -> dict[str, Any]:
        return {"gate_lr_multiplier": self.gate_lr_multiplier}

    def predict(self, model: nn.Module, dataset, collator, *, samples: int | None = None, mode: str | None = None,
                progress: bool = False) -> Predictions:
        mode = mode or self.gate_mode
        if self.gate_mode != "sample" and mode in ("sample", "mean"):  # an ablation keeps its forced-open gates
            mode = self.gate_mode if mode == "sample" else f"{self.gate_mode}_mean"
        samples = samples if samples is not None else self.eval_samples
        if mode == "constant":  # the control: factor dropout at the data-average keep-probabilities
            average = predict(model, dataset, collator, mode=f"{self.gate_mode}_mean" if self.gate_mode != "sample" else "mean",
                              samples=1)
            fix_gates(model, {name: probs.mean(0) for name, probs in average.gate_probs.items()})
        stochastic = GATE_MODES[mode].random
        return predict(model, dataset, collator, mode=mode, samples=samples if stochastic else 1, progress=progress)

    def save(self, model: nn.Module, path: Path) -> None:
        model.save_pretrained(str(path))

    def load(self, head: nn.Module, path: Path, target_modules: list[str], modules_to_save: list[str]) -> nn.Module:
        model = BaRAModel.from_pretrained(head, str(path))
        model.set_gate_mode(self.gate_mode)
        return model


@dataclasses.dataclass
class BaRAGlobal(BaRA):
    """Ablation: local gates forced to 1, only the layer-level Bernoulli rank mask is learned."""

    name: ClassVar[str] = "bara-global"
    gate_mode: ClassVar[str] = "global"


@dataclasses.dataclass
class BaRALocal(BaRA):
    """Ablation: global gates forced to 1, only the context-dependent local gates are learned."""

    name: ClassVar[str] = "bara-local"
    gate_mode: ClassVar[str] = "local"
