"""Adapter files: save / load BaRA adapters and export the global part as a peft LoRA adapter.

A BaRA adapter directory holds ``bara_config.json`` and ``adapter_model.safetensors``; nothing
is ever pickled, and pickle files handed to the loader are refused, never opened.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from typing import TYPE_CHECKING

from bara.config import BaRAConfig
from bara.layer import BaRALinear

if TYPE_CHECKING:  # the model imports this module, not the reverse
    from bara.model import BaRAModel

CONFIG_NAME = "bara_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: no half-written file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# the tensors of one layer that an adapter file holds; every one has a factor axis (B's second, the others' first)
LAYER_KEYS = ("lora_A.weight", "lora_B.weight", "global_gate.log_a", "global_gate.log_b", "local_gate.weight",
              "local_gate.bias")


def kept_factors(layer: BaRALinear, threshold: float) -> torch.Tensor:
    """Indices of the factors whose ``E_q[π_k] ≥ threshold`` (the others are dead)."""
    with torch.no_grad():
        return torch.nonzero(layer.global_gate.expected_pi() >= threshold).flatten()


def _layer_state(layer: BaRALinear, keep: torch.Tensor) -> dict[str, torch.Tensor]:
    """The layer's adapter tensors restricted to the ``keep`` factors.

    Dropping a factor leaves the others exactly as trained: each factor's gates read only the
    layer's input and its own parameters (with the stick-breaking prior, a dead factor's later
    factors are dead too, since their usage is a product that includes it)."""
    return {key: layer.get_parameter(key)[:, keep] if key == "lora_B.weight" else layer.get_parameter(key)[keep]
            for key in LAYER_KEYS}


def save_adapter(model: BaRAModel, path: str | os.PathLike, prune: bool = True) -> dict[str, int]:
    """Save config + weights of ``model``; returns how many factors were pruned per layer.

    With ``prune`` the factors with ``E_q[π] < config.prune_threshold`` are left out and the
    per-layer ranks go to ``rank_pattern``.

    Example:
        >>> import tempfile
        >>> import bara, torch
        >>> model = bara.get_bara_model(torch.nn.Sequential(torch.nn.Linear(8, 8)),
        ...                             bara.BaRAConfig(r=4, target_modules=["0"]))
        >>> with torch.no_grad():
        ...     model.base_model[0].global_gate.log_a[2:] = -12.0   # two dead factors: E π ≈ 0
        >>> bara.save_adapter(model, tempfile.mkdtemp())
        bara: pruned 2 dead factor(s) (E π < 0.05) across 1 layer(s)
        {'0': 2}
    """
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    config = BaRAConfig.from_dict(model.bara_config.to_dict())
    tensors: dict[str, torch.Tensor] = {}
    pruned: dict[str, int] = {}
    threshold = config.prune_threshold if prune else 0.0
    for name, layer in model.bara_layers():
        keep = kept_factors(layer, threshold) if prune else torch.arange(layer.r)
        pruned[name] = layer.r - len(keep)
        config.rank_pattern[name] = len(keep)
        for key, value in _layer_state(layer, keep).items():
            tensors[f"{name}.{key}"] = value.detach().cpu().contiguous()
    for module_name in model.saved_modules:
        for key, value in model.base_model.get_submodule(module_name).state_dict().items():
            tensors[f"{module_name}.{key}"] = value.detach().cpu().contiguous()
    config.rank_pattern = {k: v for k, v in config.rank_pattern.items() if v != config.r}
    atomic_write(out / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "bara"}))
    atomic_write(out / CONFIG_NAME, lambda tmp: config.save(tmp))
    total = sum(pruned.values())
    if total:
        print(f"bara: pruned {total} dead factor(s) (E π < {config.prune_threshold}) across {sum(1 for v in pruned.values() if v)} layer(s)")
    return pruned


def read_adapter_files(path: str | os.PathLike, config_name: str = CONFIG_NAME) -> tuple[dict, dict[str, torch.Tensor]]:
    """The JSON config and the tensors of an adapter directory, with one-line errors.

    Pickle files are refused, never opened: a ``.bin``/``.pt``/``.pkl`` path, or a folder
    holding only such files, is an error.
    """
    folder = Path(path)
    if folder.is_file():
        kind = "a pickle file, which is never unpickled" if folder.suffix in PICKLE_SUFFIXES else "a file"
        raise ValueError(f"{folder}: refusing to load {kind}; an adapter is a directory with {config_name} and {WEIGHTS_NAME}")
    if not folder.is_dir():
        raise ValueError(f"{folder}: adapter directory not found")
    weights = folder / WEIGHTS_NAME
    if not weights.exists():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        hint = f"; found pickle file(s) {pickles}, which are never unpickled" if pickles else ""
        raise ValueError(f"{folder}: no {WEIGHTS_NAME}{hint}")
    if not (folder / config_name).exists():
        raise ValueError(f"{folder}: no {config_name}")
    try:
        config = json.loads((folder / config_name).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{folder / config_name}: invalid JSON at line {err.lineno}: {err.msg}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{folder / config_name}: expected a JSON object of configuration fields")
    try:
        tensors = load_file(weights)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{weights}: corrupted or truncated safetensors file ({err})") from None
    return config, tensors


def read_adapter(path: str | os.PathLike) -> tuple[BaRAConfig, dict[str, torch.Tensor]]:
    """Read and check a BaRA adapter directory without touching any model."""
    config, tensors = read_adapter_files(path)
    return BaRAConfig.from_saved(config), _upgrade(tensors)


def _upgrade(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Earlier versions stored the Kumaraswamy parameters as ``softplus⁻¹(a)``; this one stores
    ``log a``. The conversion is exact."""
    upgraded = {}
    for key, value in tensors.items():
        for old, new in (("global_gate.a_raw", "global_gate.log_a"), ("global_gate.b_raw", "global_gate.log_b")):
            if key.endswith(old):
                key, value = key[: -len(old)] + new, torch.log(torch.nn.functional.softplus(value.float())).to(value.dtype)
        upgraded[key] = value
    return upgraded


def copy_adapter_state(own: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], source: object) -> None:
    """Copy saved ``tensors`` into the live ``own`` tensors; names and shapes must match exactly."""
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise ValueError(f"{source}: adapter does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    mismatched = [f"{k}: saved {tuple(tensors[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items()
                  if tuple(tensors[k].shape) != tuple(v.shape)]
    if mismatched:
        raise ValueError(f"{source}: adapter was saved for a different base model; shape mismatch in {'; '.join(mismatched[:5])}")
    with torch.no_grad():
        for key, param in own.items():
            param.copy_(tensors[key].to(device=param.device, dtype=param.dtype))


def _adapter_state(model: BaRAModel) -> dict[str, torch.Tensor]:
    """Live tensors of everything an adapter file holds, keyed as in the file."""
    state: dict[str, torch.Tensor] = {}
    for name, layer in model.bara_layers():
        for key in LAYER_KEYS:
            state[f"{name}.{key}"] = layer.get_parameter(key)
    for module_name in model.saved_modules:
        for key, value in model.base_model.get_submodule(module_name).state_dict(keep_vars=True).items():
            state[f"{module_name}.{key}"] = value
    return state


def export_lora(model: BaRAModel, path: str | os.PathLike) -> Path:
    """Write the ``global_mean`` part of ``model`` as a plain peft LoRA adapter.

    Each layer's update becomes ``c · B diag(E_q[π]) A`` (the mean global gate folded into B).
    The local gate depends on the input and cannot be folded: the export equals the model in
    ``global_mean`` mode. Load it with ``peft.PeftModel.from_pretrained(base, path)``.

    Example:
        >>> import tempfile
        >>> import bara, torch
        >>> model = bara.get_bara_model(torch.nn.Sequential(torch.nn.Linear(8, 8)),
        ...                             bara.BaRAConfig(r=4, target_modules=["0"]))
        >>> folder = bara.export_lora(model, tempfile.mkdtemp())
        >>> sorted(p.name for p in folder.iterdir())
        ['README.md', 'adapter_config.json', 'adapter_model.safetensors']
    """
    from peft import LoraConfig

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    config = model.bara_config
    tensors, rank_pattern, alpha_pattern, names = {}, {}, {}, []
    for name, layer in model.bara_layers():
        if layer.r == 0:  # every factor pruned: the layer is the base layer
            continue
        with torch.no_grad():
            b_folded = layer.lora_B.weight * layer.global_gate.expected_pi().to(layer.lora_B.weight.dtype)
        prefix = f"base_model.model.{name}"
        tensors[f"{prefix}.lora_A.weight"] = layer.lora_A.weight.detach().cpu().contiguous()
        tensors[f"{prefix}.lora_B.weight"] = b_folded.detach().cpu().contiguous()
        names.append(name)
        if layer.r != config.r:  # peft scales by alpha / r_layer: keep c = lora_alpha / r
            rank_pattern[name] = layer.r
            alpha_pattern[name] = config.scaling * layer.r
    for module_name in model.saved_modules:
        for key, value in model.base_model.get_submodule(module_name).state_dict().items():
            tensors[f"base_model.model.{module_name}.{key}"] = value.detach().cpu().contiguous()
    lora_config = LoraConfig(
        r=config.r, lora_alpha=config.lora_alpha, target_modules=names, lora_dropout=0.0,
        rank_pattern=rank_pattern, alpha_pattern=alpha_pattern, modules_to_save=config.modules_to_save,
    )
    lora_config.save_pretrained(str(out))
    atomic_write(out / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    (out / "README.md").write_text(
        "Plain LoRA export of a BaRA adapter: the mean global gate E_q[pi] is folded into lora_B; the\n"
        "input-dependent local gates cannot be folded and are dropped (equals BaRA's `global_mean` mode).\n")
    return out
