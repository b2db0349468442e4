"""Every method the library trains, by name: BaRA, its ablations and the baselines."""

from __future__ import annotations

from .bara import BaRA, BaRAGlobal, BaRALocal
from .base import Method
from .lora import LoRA

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (LoRA, BaRA, BaRAGlobal, BaRALocal)}


def get_method(name: str, options: dict | None = None) -> Method:
    """Instantiate method ``name`` with ``options`` (its hyperparameters)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[name].from_options(options)


__all__ = ["METHODS", "Method", "get_method"]
