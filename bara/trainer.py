"""`BaRATrainer`: a ``transformers.Trainer`` whose only addition is the KL term of the ELBO.

``loss = NLL + β_t · (β_g · KL_global / N + β_l · mean local KL)`` with β_t the linear warm-up.
Everything else — accelerate, gradient accumulation, checkpoints, ``resume_from_checkpoint``,
logging — is Trainer's own. Checkpoints hold the adapter (safetensors) instead of the whole
model. For models without BaRA layers (e.g. a peft LoRA baseline) it is a plain Trainer.
"""

from __future__ import annotations

import os
from collections import defaultdict

import torch
from torch import nn
from transformers import Trainer

from .io import CONFIG_NAME, _adapter_state, copy_adapter_state, read_adapter, save_adapter
from .model import BaRAModel
from .objective import kl_terms, kl_warmup_factor, rank_summary


class BaRATrainer(Trainer):
    """Trainer that adds the BaRA KL terms (with warm-up) and logs the rank statistics.

    Args:
        num_train_examples: N in the global KL's ``1/N``; defaults to ``len(train_dataset)``.
        gate_lr_multiplier: learning rate of the gate parameters relative to the factors'
            (the gates are few and start saturated; a larger rate lets them move).
        Other arguments are ``transformers.Trainer``'s.

    Logged every ``logging_steps``: ``nll``, ``kl_global``, ``kl_local``, ``kl_nll_ratio``,
    ``beta_t``, ``joint_effective_rank`` and ``r_glob``.

    Example:
        >>> trainer = BaRATrainer(model=bara_model, args=TrainingArguments("out", max_steps=100),
        ...                       train_dataset=train_set, data_collator=collator)  # doctest: +SKIP
        >>> trainer.train()                                                          # doctest: +SKIP
    """

    def __init__(self, *args, num_train_examples: int | None = None, gate_lr_multiplier: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        # BaRAModel.forward takes **kwargs, which Trainer would read as "accepts num_items_in_batch";
        # ask the wrapped model instead.
        inner = getattr(self._bara_model(), "base_model", None)
        if inner is not None:
            self.model_accepts_loss_kwargs = getattr(inner, "accepts_loss_kwargs", False)
        self.num_train_examples = num_train_examples or (len(self.train_dataset) if self.train_dataset is not None else None)
        self.gate_lr_multiplier = gate_lr_multiplier
        self._bara_logs: dict[str, list[float]] = defaultdict(list)

    def _bara_model(self) -> BaRAModel | None:
        model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
        return model if isinstance(model, BaRAModel) else None

    def create_optimizer(self, model: nn.Module | None = None):
        bara_model = self._bara_model()
        if self.optimizer is None and bara_model is not None and self.gate_lr_multiplier != 1.0:
            gates = [p for n, p in bara_model.named_parameters() if p.requires_grad and "_gate." in n]
            others = [p for n, p in bara_model.named_parameters() if p.requires_grad and "_gate." not in n]
            lr = self.args.learning_rate
            groups = [{"params": others, "weight_decay": self.args.weight_decay},
                      {"params": gates, "weight_decay": 0.0, "lr": lr * self.gate_lr_multiplier}]
            self.optimizer = torch.optim.AdamW(groups, lr=lr, betas=(self.args.adam_beta1, self.args.adam_beta2),
                                               eps=self.args.adam_epsilon)
            return self.optimizer
        return super().create_optimizer(model) if model is not None else super().create_optimizer()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        bara_model = self._bara_model()
        if bara_model is not None and model.training:
            if not self.num_train_examples:
                raise ValueError("BaRATrainer needs num_train_examples (or a sized train_dataset) for the global KL")
            terms = kl_terms(bara_model, self.num_train_examples)
            beta_t = kl_warmup_factor(self.state.global_step, max(1, self.state.max_steps), bara_model.bara_config.kl_warmup)
            nll = float(loss.detach())
            loss = loss + beta_t * terms.total
            logs = self._bara_logs
            logs["nll"].append(nll)
            logs["kl_global"].append(float(terms.global_kl.detach()))
            logs["kl_local"].append(float(terms.local_kl.detach()))
            logs["kl_nll_ratio"].append(float(terms.total.detach()) / max(nll, 1e-8))
            logs["beta_t"].append(beta_t)
            try:
                summary = rank_summary(bara_model)
                logs["joint_effective_rank"].append(summary["joint_effective_rank"])
                logs["r_glob"].append(summary["r_glob"])
            except ValueError:  # a mode without gate statistics (e.g. "ones")
                pass
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._bara_logs and "loss" in logs:
            for key, values in self._bara_logs.items():
                logs[key] = round(sum(values) / len(values), 5)
            self._bara_logs.clear()
        super().log(logs, start_time)

    # -- checkpoints hold the adapter only ---------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        bara_model = self._bara_model()
        if bara_model is None:
            return super()._save(output_dir, state_dict)
        output_dir = output_dir or self.args.output_dir
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            save_adapter(bara_model, output_dir, prune=False)  # keep every factor to resume exactly

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        bara_model = self._bara_model()
        if bara_model is None or not os.path.exists(os.path.join(resume_from_checkpoint, CONFIG_NAME)):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        _, tensors = read_adapter(resume_from_checkpoint)
        copy_adapter_state(_adapter_state(bara_model), tensors, resume_from_checkpoint)
