"""Every method the library trains, by name: BaRA, its ablations and the baselines."""

from __future__ import annotations

from .bara import BaRA, BaRAGlobal, BaRALocal
from .base import Method
from .blob import BLoB
from .ensemble import Ensemble
from .laplace import Laplace
from .lora import LoRA
from .map import MAP
from .mcdropout import MCDropout

METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (LoRA, MAP, MCDropout, Ensemble, BLoB, Laplace, BaRAGlobal, BaRALocal, BaRA)
}


def get_method(name: str, options: dict | None = None) -> Method:
    """Instantiate method ``name`` with ``options`` (its hyperparameters)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[name].from_options(options)


__all__ = ["METHODS", "Method", "get_method"]
