"""Every method the library trains, by name: BaRA, its ablations and the baselines."""

from __future__ import annotations

from bara.harness.methods.adalora import AdaLoRA
from bara.harness.methods.bara import BaRA, BaRAGlobal, BaRALocal
from bara.harness.methods.base import Method
from bara.harness.methods.blob import BLoB
from bara.harness.methods.ensemble import Ensemble
from bara.harness.methods.laplace import Laplace
from bara.harness.methods.lora import LoRA
from bara.harness.methods.map import MAP
from bara.harness.methods.mcdropout import MCDropout

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (LoRA, MAP, MCDropout, Ensemble, BLoB, Laplace, AdaLoRA, BaRAGlobal, BaRALocal, BaRA)
}


def get_method(name: str, options: dict | None = None) -> Method:
    """Instantiate method ``name`` with ``options`` (its hyperparameters)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[name].from_options(options)


__all__ = ["METHODS", "Method", "get_method"]
