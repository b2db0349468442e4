"""``map``: LoRA with weight decay on the adapter — the MAP row of the Bayesian-LoRA tables
(BLoB, Wang et al. NeurIPS 2024, use weight decay 1e-5)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from bara.harness.methods.lora import LoRA


@dataclasses.dataclass
class MAP(LoRA):
    """LoRA trained with decoupled weight decay (a Gaussian prior on the adapter weights).

    At BLoB's weight decay 1e-5 and learning rates up to ~3e-3, AdamW's per-step factor 1 − lr·wd
    rounds to exactly 1 in float32, so this trains bit for bit as LoRA (training warns; see
    ``bara.harness.pipeline.warn_if_weight_decay_vanishes``). Pass e.g. ``weight_decay=0.01`` for a decay that acts.
    """

    name: ClassVar[str] = "map"
    weight_decay: float = 1e-5  # BLoB's MAP baseline

    def training_overrides(self) -> dict[str, Any]:
        return {"weight_decay": self.weight_decay}
