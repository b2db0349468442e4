"""The model wrapper: inject BaRA layers, route the attention mask to them, switch gate modes.

`get_bara_model` works on any ``nn.Module``. Linear layers never see the attention mask, so a
model-level forward pre-hook copies it (minus the tokens a causal-LM loss predicts) into a
`GateContext` shared by all BaRA layers; without a mask the layers pool over all positions.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from bara.config import BaRAConfig
from bara.io import _adapter_state, copy_adapter_state, read_adapter, save_adapter
from bara.layer import GATE_MODES, BaRALinear, GateContext


# -- target matching ---------------------------------------------------------------------
def _matches(name: str, targets: list[str] | str) -> bool:
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def linear_layer_names(model: nn.Module) -> list[str]:
    """Full names of every ``nn.Linear`` in ``model``."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def _linear_suffixes(model: nn.Module) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name in linear_layer_names(model)})


def infer_target_modules(model: nn.Module) -> list[str]:
    """Default targets: the attention query/value projections (``q_proj``/``v_proj`` or
    ``query``/``value``), as in the LoRA papers."""
    suffixes = set(_linear_suffixes(model))
    for pair in (["q_proj", "v_proj"], ["query", "value"]):
        if set(pair) <= suffixes:
            return pair
    raise ValueError(
        "BaRAConfig.target_modules is not set and no query/value projections were found; "
        f"choose among the Linear layer names: {_linear_suffixes(model)}"
    )


def find_targets(model: nn.Module, targets: list[str] | str) -> list[str]:
    """Names of the modules ``targets`` selects; every one must be an ``nn.Linear``."""
    chosen = []
    for name, module in model.named_modules():
        if not name or isinstance(module, BaRALinear) or ".base_layer" in name or not _matches(name, targets):
            continue
        if not isinstance(module, nn.Linear):
            raise ValueError(
                f"target_modules {targets!r} selects '{name}' of type {type(module).__name__}; "
                "BaRA adapts nn.Linear layers only"
            )
        chosen.append(name)
    if not chosen:
        raise ValueError(
            f"target_modules {targets!r} matches no module; the Linear layers are named: {_linear_suffixes(model)}"
        )
    return chosen


# -- the wrapper -------------------------------------------------------------------------
class AdapterModel(nn.Module):
    """What every adapter wrapper shares: the frozen ``base_model`` with new layers on its
    targeted Linear layers, calls and unknown attributes forwarded to it, and
    ``modules_to_save`` (e.g. a new classifier head) left trainable."""

    def _inject(self, model: nn.Module, names: list[str], make_layer, modules_to_save: list[str] | None) -> None:
        """Freeze ``model``, replace each named Linear by ``make_layer(name, linear)``."""
        for param in model.parameters():
            param.requires_grad_(False)
        for name in names:
            parent, child = _parent_of(model, name)
            setattr(parent, child, make_layer(name, getattr(parent, child)))
        self.saved_modules = [_find_module(model, name) for name in modules_to_save or []]
        for name in self.saved_modules:
            for param in model.get_submodule(name).parameters():
                param.requires_grad_(True)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)


def _is_causal_lm(model: nn.Module) -> bool:
    """Whether ``model`` generates text (a transformers causal LM): then labels of -100 mark its prompt."""
    can_generate = getattr(model, "can_generate", None)
    return bool(callable(can_generate) and can_generate())


def _token_layout(bound: dict) -> Tensor | None:
    """The forward's input ids, or its embeddings without the feature axis: a tensor shaped [..., T]."""
    ids, embeds = bound.get("input_ids"), bound.get("inputs_embeds")
    return ids if isinstance(ids, Tensor) else embeds[..., 0] if isinstance(embeds, Tensor) else None


def _choice_rows(tokens: Tensor | None, choice_mask: Any) -> Tensor | None:
    """``[examples, choices]`` weights of a multiple-choice forward (1: a real choice), or None."""
    if tokens is None or tokens.dim() != 3:
        return None
    if isinstance(choice_mask, Tensor) and choice_mask.shape == tokens.shape[:2]:
        return choice_mask.float()
    return torch.ones(tokens.shape[:2], device=tokens.device)


class BaRAModel(AdapterModel):
    """A base model with BaRA layers injected into its targeted Linear layers.

    The base model is frozen; only the factors, the gates and ``modules_to_save`` train.
    Calls are forwarded to the base model, and unknown attributes are looked up on it.

    Example:
        >>> base = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> model = get_bara_model(base, BaRAConfig(r=2, target_modules=["0"]))
        >>> model(torch.randn(4, 8)).shape
        torch.Size([4, 2])
    """

    def __init__(self, model: nn.Module, config: BaRAConfig):
        super().__init__()
        if config.target_modules is None:
            config.target_modules = infer_target_modules(model)
        self.base_model = model
        self.bara_config = config
        self.context = GateContext()
        names = find_targets(model, config.target_modules)
        unknown = sorted(set(config.rank_pattern) - set(names))
        if unknown:
            raise ValueError(f"BaRAConfig.rank_pattern names layers that are not targeted: {unknown}")
        self._inject(model, names, lambda name, linear: BaRALinear(
            linear, config, r=config.rank_pattern.get(name, config.r), context=self.context), config.modules_to_save)
        self._forward_signature = _signature(model)
        # a causal LM's token labels mark its answer (pooled out of the gates); a token classifier's do not
        self._causal_lm = _is_causal_lm(model)
        self._hook = model.register_forward_pre_hook(self._capture_mask, with_kwargs=True)
        self._end_hook = model.register_forward_hook(self._end_forward)

    # -- mask routing --------------------------------------------------------------------
    def _capture_mask(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook: set the pooling mask of this forward from the attention mask."""
        bound = _bind(self._forward_signature, args, kwargs)
        mask = bound.get("attention_mask")
        tokens = _token_layout(bound)
        ctx = self.context
        ctx.reuse_gates = False
        ctx.forward = (ctx.forward or 0) + 1
        ctx.active = True
        ctx.choice_rows = _choice_rows(tokens, bound.get("choice_mask"))
        if not isinstance(mask, Tensor):
            ctx.pool_mask = None
            return
        if tokens is not None:  # [..., T]: the layout of a per-token padding mask
            if mask.dim() != tokens.dim():  # e.g. a 4-D [B, 1, T, T] attention mask: no padding mask to read
                warnings.warn(f"BaRA: an attention_mask of shape {tuple(mask.shape)} for inputs of shape "
                              f"{tuple(tokens.shape)} is not a per-token padding mask; the local gates pool every "
                              "token, padding included", stacklevel=2)
                ctx.pool_mask = None
                return
            if tokens.shape[-1] < mask.shape[-1]:  # incremental decoding: keep the prompt's gates
                ctx.reuse_gates = True
                return
        mask = mask.reshape(-1, mask.shape[-1]).bool()
        labels = bound.get("labels")
        if self._causal_lm and isinstance(labels, Tensor) and labels.numel() == mask.numel() and labels.dim() >= 2:
            prompt = mask & (labels.reshape(mask.shape) == -100)
            has_prompt = prompt.any(dim=-1, keepdim=True)
            mask = torch.where(has_prompt, prompt, mask)  # causal LM: pool the prompt only, never the answer
        ctx.pool_mask = mask

    def _end_forward(self, module: nn.Module, args: tuple, output: Any) -> None:
        """Forward hook: the forward is over; later calls of a layer (activation checkpointing
        recomputing it inside backward) do not change its statistics."""
        self.context.active = False

    # -- gate statistics and layers ------------------------------------------------------
    def bara_layers(self) -> Iterator[tuple[str, BaRALinear]]:
        """``(name, layer)`` for every BaRA layer, names relative to the base model."""
        for name, module in self.base_model.named_modules():
            if isinstance(module, BaRALinear):
                yield name, module

    def set_gate_mode(self, mode: str) -> None:
        """Set the gate mode of every layer (see `gate_mode`)."""
        if mode not in GATE_MODES:
            raise ValueError(f"gate mode {mode!r} is unknown; allowed: {', '.join(GATE_MODES)}")
        for _, layer in self.bara_layers():
            layer.mode = mode

    @property
    def gate_mode(self) -> str:
        modes = {layer.mode for _, layer in self.bara_layers()}
        return modes.pop() if len(modes) == 1 else "mixed"

    def save_pretrained(self, path: str, prune: bool = True) -> dict[str, int]:
        """Write ``bara_config.json`` and ``adapter_model.safetensors`` (see `bara.io`)."""
        return save_adapter(self, path, prune=prune)

    @classmethod
    def from_pretrained(cls, base_model: nn.Module, path: str) -> "BaRAModel":
        """Rebuild a saved adapter on ``base_model`` (see `bara.io`)."""
        return load_adapter(base_model, path)

    def trainable_parameter_count(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def get_bara_model(model: nn.Module, config: BaRAConfig) -> BaRAModel:
    """Freeze ``model`` and inject BaRA layers as ``config`` says.

    Example:
        >>> base = nn.Sequential(nn.Linear(8, 8))
        >>> model = get_bara_model(base, BaRAConfig(r=4, target_modules=["0"]))
        >>> sorted(n for n, _ in model.bara_layers())
        ['0']
    """
    if isinstance(model, BaRAModel):
        raise ValueError("model already carries BaRA layers")
    return BaRAModel(model, config)


@contextlib.contextmanager
def gate_mode(model: BaRAModel, mode: str) -> Iterator[BaRAModel]:
    """Temporarily set how the gates behave.

    Modes: ``sample`` (relaxed gates in training, hard Bernoulli draws in eval), ``mean``
    (``z = E_q[π] ⊙ σ(ℓ(x))``), ``ones`` (all gates 1: plain LoRA), ``global`` (local gates
    forced to 1), ``global_mean``, ``local`` (global gates forced to 1), ``local_mean``, and
    ``constant`` (input-independent dropout at the keep-probabilities set by `fix_gates`).

    Example:
        >>> with gate_mode(model, "ones"):        # doctest: +SKIP
        ...     lora_logits = model(**batch).logits
    """
    if not isinstance(model, BaRAModel):
        raise TypeError("gate_mode expects a BaRAModel (from get_bara_model)")
    previous = {name: layer.mode for name, layer in model.bara_layers()}
    model.set_gate_mode(mode)
    try:
        yield model
    finally:
        for name, layer in model.bara_layers():
            layer.mode = previous[name]


def fix_gates(model: BaRAModel, keep: dict[str, Tensor]) -> None:
    """Set the per-layer keep-probabilities ``[r]`` used by gate mode ``constant``.

    Typically ``keep[layer] = E_x E_q[z_k(x)]``: the same average rank as the trained gates, but
    without any dependence on the input.

    Example:
        >>> import bara, torch
        >>> model = bara.get_bara_model(torch.nn.Sequential(torch.nn.Linear(8, 8)),
        ...                             bara.BaRAConfig(r=4, target_modules=["0"]))
        >>> bara.fix_gates(model, {"0": torch.tensor([1.0, 1.0, 0.0, 0.0])})
        >>> with bara.gate_mode(model.eval(), "constant"):
        ...     _ = model(torch.randn(2, 8))
        >>> bara.gate_probabilities(model)["0"][0]
        tensor([1., 1., 0., 0.])
    """
    layers = dict(model.bara_layers())
    unknown = sorted(set(keep) - set(layers))
    if unknown:
        raise ValueError(f"fix_gates: unknown layers {unknown[:3]}")
    for name, probs in keep.items():
        if probs.shape != (layers[name].r,):
            raise ValueError(f"fix_gates: layer {name} needs {layers[name].r} keep-probabilities, got shape {tuple(probs.shape)}")
        layers[name].constant_keep.copy_(probs.clamp(0.0, 1.0))


def load_adapter(base_model: nn.Module, path: str | os.PathLike) -> BaRAModel:
    """Build a `BaRAModel` on ``base_model`` from a saved adapter; shapes are checked per layer.

    Example:
        >>> import tempfile
        >>> import bara, torch
        >>> model = bara.get_bara_model(torch.nn.Sequential(torch.nn.Linear(8, 8)),
        ...                             bara.BaRAConfig(r=4, target_modules=["0"]))
        >>> folder = tempfile.mkdtemp()
        >>> _ = model.save_pretrained(folder)
        >>> loaded = bara.load_adapter(torch.nn.Sequential(torch.nn.Linear(8, 8)), folder)
        >>> [name for name, _ in loaded.bara_layers()]
        ['0']
    """
    config, tensors = read_adapter(path)
    model = BaRAModel(base_model, config)
    copy_adapter_state(_adapter_state(model), tensors, path)
    return model


# -- helpers -----------------------------------------------------------------------------
def _parent_of(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def _find_module(model: nn.Module, name: str) -> str:
    """Full name of the one module called ``name`` or ending in ``.name`` (as peft matches)."""
    found = [n for n, _ in model.named_modules() if n == name or n.endswith("." + name)]
    if len(found) != 1:
        problem = "not found" if not found else f"is ambiguous ({found[:4]})"
        children = [n for n, _ in model.named_children()]
        raise ValueError(f"BaRAConfig.modules_to_save: module '{name}' {problem}; top-level modules are {children}")
    return found[0]


def _signature(model: nn.Module) -> inspect.Signature | None:
    try:
        return inspect.signature(model.forward)
    except (TypeError, ValueError):
        return None


def _bind(signature: inspect.Signature | None, args: tuple, kwargs: dict) -> dict[str, Any]:
    if signature is None:
        return dict(kwargs)
    try:
        return dict(signature.bind_partial(*args, **kwargs).arguments) | kwargs
    except TypeError:
        warnings.warn("BaRA could not bind the model's forward arguments; pooling over all positions", stacklevel=3)
        return dict(kwargs)
