"""``bara``: the full method, and its ablations ``bara-global`` (local gates forced open: a global
Bernoulli rank mask, DALorRA-like) and ``bara-local`` (global gates forced open)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from bara.config import BaRAConfig
from bara.harness.data import Collator, EncodedDataset
from bara.model import BaRAModel, fix_gates, get_bara_model
from bara.predict import Predictions, enable_dropout, predict
from bara.experimental.refit import SCOPES, refit_local_gates, split_holdout
from bara.harness.methods.base import Method


@dataclasses.dataclass
class BaRA(Method):
    """BaRA with the DESIGN §2 defaults; ``config`` holds any `BaRAConfig` field to override."""

    name: ClassVar[str] = "bara"
    stochastic: ClassVar[bool] = True
    gate_mode: ClassVar[str] = "sample"  # the mode used in training and for sampled prediction
    eval_samples: int = 10
    gate_lr_multiplier: float = 1.0
    # evaluation only: keep the backbone's dropout on in sampled predictions (gates and MC-dropout together;
    # check C7 asks whether the gates add anything on top of the dropout the backbone already trained with)
    eval_dropout: bool = False
    # research option for check C7 (`bara.experimental.refit`): train the adapter on 1 − gate_holdout of the training
    # set, then refit the local gates on the held-out rest by the predictive likelihood (0: off);
    # refit_scope "affine" refits each layer's gate biases and one scale of its gate weights, "full" all of them;
    # refit_epochs=0 holds the data out without refitting (the ablation that separates the two effects)
    gate_holdout: float = 0.0
    refit_scope: str = "affine"
    refit_epochs: float = 10.0
    refit_lr: float = 0.05
    refit_samples: int = 4
    config: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (0.0 <= self.gate_holdout < 1.0):
            raise ValueError(f"method {self.name!r}: gate_holdout={self.gate_holdout} must lie in [0, 1) (0: no refit)")
        if self.gate_holdout and self.gate_mode != "sample":
            raise ValueError(f"method {self.name!r}: gate_holdout refits the local gates, which this ablation forces open")
        if self.refit_scope not in SCOPES:
            raise ValueError(f"method {self.name!r}: refit_scope={self.refit_scope!r} is unknown; allowed: {', '.join(SCOPES)}")
        if not self.refit_epochs >= 0:
            raise ValueError(f"method {self.name!r}: refit_epochs={self.refit_epochs} must be >= 0 (0: hold out, do not refit)")
        if not isinstance(self.eval_dropout, bool):
            raise ValueError(f"method {self.name!r}: eval_dropout={self.eval_dropout!r} must be true or false")
        for name in ("refit_lr", "refit_samples"):
            if not getattr(self, name) > 0:
                raise ValueError(f"method {self.name!r}: {name}={getattr(self, name)} must be positive")

    def bara_config(self, target_modules: list[str], modules_to_save: list[str]) -> BaRAConfig:
        fields = {"target_modules": target_modules, "modules_to_save": modules_to_save or None} | self.config
        return BaRAConfig(**fields)

    def wrap(self, head: nn.Module, target_modules: list[str], modules_to_save: list[str]) -> nn.Module:
        model = get_bara_model(head, self.bara_config(target_modules, modules_to_save))
        model.set_gate_mode(self.gate_mode)
        return model

    def trainer_kwargs(self) -> dict[str, Any]:
        return {"gate_lr_multiplier": self.gate_lr_multiplier}

    def split_train(self, train_set: EncodedDataset, seed: int) -> tuple[EncodedDataset, EncodedDataset | None]:
        if not self.gate_holdout:
            return train_set, None
        return split_holdout(train_set, self.gate_holdout, seed)

    def after_training(self, model: nn.Module, train_set: EncodedDataset, collator: Collator,
                       holdout: EncodedDataset | None = None) -> dict[str, Any] | None:
        if holdout is None or not self.refit_epochs:  # refit_epochs=0: the ablation that only holds data out
            return None
        return {"gate_refit": refit_local_gates(model, holdout, collator, epochs=self.refit_epochs, lr=self.refit_lr,
                                                samples=self.refit_samples, scope=self.refit_scope,
                                                seed=torch.initial_seed())}

    def predict(self, model: nn.Module, dataset, collator, *, samples: int | None = None, mode: str | None = None,
                progress: bool = False) -> Predictions:
        mode = mode or self.gate_mode
        if self.gate_mode != "sample" and mode in ("sample", "mean"):  # an ablation keeps its forced-open gates
            mode = self.gate_mode if mode == "sample" else f"{self.gate_mode}_mean"
        samples = samples if samples is not None else self.eval_samples
        if mode == "constant":  # C7 control: factor dropout at the data-average keep-probabilities
            average = predict(model, dataset, collator, mode=f"{self.gate_mode}_mean" if self.gate_mode != "sample" else "mean",
                              samples=1)
            fix_gates(model, {name: probs.mean(0) for name, probs in average.gate_probs.items()})
        stochastic = mode in ("sample", "global", "local", "constant")
        return predict(model, dataset, collator, mode=mode, samples=samples if stochastic else 1, progress=progress,
                       sample_fn=enable_dropout if self.eval_dropout and stochastic else None)

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
