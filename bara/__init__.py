"""BaRA: Bayesian Adaptive Rank Allocation for LoRA.

LoRA whose rank-1 factors are switched on per layer by a Bayesian global gate and per input
by a context-dependent local gate, trained variationally. docs/method.md writes the model down.

Example:
    >>> import bara, torch
    >>> base = torch.nn.Sequential(torch.nn.Linear(8, 8))
    >>> model = bara.get_bara_model(base, bara.BaRAConfig(r=4, target_modules=["0"]))
    >>> with bara.gate_mode(model, "mean"):
    ...     y = model(torch.randn(2, 3, 8))
    >>> y.shape
    torch.Size([2, 3, 8])
"""

from bara.config import BaRAConfig
from bara.io import export_lora, save_adapter
from bara.layer import GATE_MODES, BaRALinear, GateContext, GateStats
from bara.model import BaRAModel, fix_gates, gate_mode, get_bara_model, load_adapter
from bara.objective import (
    KLTerms,
    deterministic_ranks,
    effective_ranks,
    expected_pi,
    gate_probabilities,
    kl_divergence,
    kl_terms,
    kl_warmup_factor,
    rank_summary,
)

__version__ = "0.1.0"

__all__ = [
    "BaRAConfig", "BaRALinear", "BaRAModel", "GATE_MODES", "GateContext", "GateStats", "KLTerms",
    "deterministic_ranks", "effective_ranks", "expected_pi", "export_lora", "fix_gates", "gate_mode",
    "gate_probabilities", "get_bara_model", "kl_divergence", "kl_terms", "kl_warmup_factor",
    "load_adapter", "rank_summary", "save_adapter",
]


def __getattr__(name: str):
    # The trainer pulls in transformers' Trainer; import it only when asked for.
    if name == "BaRATrainer":
        from bara.trainer import BaRATrainer

        return BaRATrainer
    raise AttributeError(f"module 'bara' has no attribute {name!r}")
