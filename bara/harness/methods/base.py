"""The common interface every method implements: wrap a backbone head → train → predict → save/load.

A method is a small object built from its hyperparameters (one YAML mapping or the defaults
of its dataclass). The pipeline (`bara.harness.pipeline`) never branches on the method's name: it
asks the method.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from collections.abc import Callable
from typing import Any, ClassVar

from torch import nn

from bara.harness.data import Collator, EncodedDataset
from bara.predict import Predictions, predict
from bara.trainer import BaRATrainer

# the pipeline's training of one run: (spec, out folder, resume=...) -> its training log
TrainRun = Callable[..., dict[str, Any]]


@dataclasses.dataclass
class Method:
    """Base class. Subclasses are dataclasses whose fields are the method's hyperparameters."""

    name: ClassVar[str] = ""
    stochastic: ClassVar[bool] = False  # does prediction average several samples?
    eval_samples: int = 1

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_options(cls, options: dict[str, Any] | None) -> "Method":
        """Build from a mapping (e.g. YAML); unknown keys are an error naming the allowed ones."""
        options = dict(options or {})
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ValueError(f"method {cls.name!r}: unknown option(s) {unknown}; allowed: {sorted(allowed)}")
        return cls(**options)

    def options(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # -- the four steps ---------------------------------------------------------------
    def fit(self, spec: Any, out: Path, resume: bool, train: TrainRun) -> dict[str, Any] | None:
        """Train a method that is not one model (e.g. an ensemble, whose members each ``train``s as a
        run of its own); ``None`` = the standard loop."""
        return None

    def wrap(self, head: nn.Module, target_modules: list[str], modules_to_save: list[str]) -> nn.Module:
        """Freeze the backbone and add this method's trainable adapter."""
        raise NotImplementedError

    def trainer_class(self) -> type[BaRATrainer]:
        return BaRATrainer

    def training_overrides(self) -> dict[str, Any]:
        """Extra ``TrainingArguments`` (e.g. weight decay for MAP)."""
        return {}

    def trainer_kwargs(self) -> dict[str, Any]:
        return {}

    def before_training(self, model: nn.Module) -> None:
        """Hook run once before training (e.g. set BaRA's gate mode)."""

    def split_train(self, train_set: EncodedDataset, seed: int) -> tuple[EncodedDataset, EncodedDataset | None]:
        """The examples to train on and those to hold out for `after_training` (default: none held out)."""
        return train_set, None

    def after_training(self, model: nn.Module, train_set: EncodedDataset, collator: Collator,
                       holdout: EncodedDataset | None = None) -> dict[str, Any] | None:
        """Hook run once after training, before saving (e.g. fit a post-hoc Laplace posterior); what it
        returns is logged in ``train_log.json`` under ``after_training``."""
        return None

    def predict(self, model: nn.Module, dataset: EncodedDataset, collator: Collator, *, samples: int | None = None,
                mode: str | None = None, progress: bool = False) -> Predictions:
        """Predictive probabilities on ``dataset``."""
        return predict(model, dataset, collator, mode="mean", samples=1, progress=progress)

    def save(self, model: nn.Module, path: Path) -> None:
        raise NotImplementedError

    def load(self, head: nn.Module, path: Path, target_modules: list[str], modules_to_save: list[str]) -> nn.Module:
        raise NotImplementedError
