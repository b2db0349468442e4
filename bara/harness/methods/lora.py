"""``lora``: plain LoRA (maximum likelihood) through Hugging Face peft (Hu et al., ICLR 2022)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import ClassVar

from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from bara.harness.methods.base import Method


@dataclasses.dataclass
class LoRA(Method):
    """LoRA with r = 8, α = 16 on the attention query/value projections (BLoB's setting)."""

    name: ClassVar[str] = "lora"
    r: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0

    def wrap(self, head: nn.Module, target_modules: list[str], modules_to_save: list[str]) -> nn.Module:
        config = LoraConfig(r=self.r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                            target_modules=target_modules, modules_to_save=modules_to_save or None)
        return get_peft_model(head, config)

    def save(self, model: nn.Module, path: Path) -> None:
        model.save_pretrained(str(path))

    def load(self, head: nn.Module, path: Path, target_modules: list[str], modules_to_save: list[str]) -> nn.Module:
        if not (Path(path) / "adapter_model.safetensors").exists():
            raise ValueError(f"{path}: no adapter_model.safetensors (LoRA adapters are loaded from safetensors only)")
        return PeftModel.from_pretrained(head, str(path))
