"""``ensemble``: M independently seeded LoRA adapters, probabilities averaged
(deep ensembles, Lakshminarayanan et al., NeurIPS 2017; M = 3 as in the BLoB tables)."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from bara.predict import Predictions, predict
from bara.harness.methods.base import Method, TrainRun
from bara.harness.methods.lora import LoRA

MEMBERS_FILE = "ensemble.json"


@dataclasses.dataclass
class Ensemble(Method):
    """Three LoRA adapters trained on the same examples from different seeds (head init and data order)."""

    name: ClassVar[str] = "ensemble"
    stochastic: ClassVar[bool] = True
    members: int = 3
    r: int = 8
    lora_alpha: float = 16.0
    eval_samples: int = 3  # one pass per member

    def member(self) -> LoRA:
        return LoRA(r=self.r, lora_alpha=self.lora_alpha)

    def fit(self, spec: Any, out: Path, resume: bool, train: TrainRun) -> dict[str, Any]:
        """Train each member as a LoRA run in ``out/members/<i>`` with seed ``spec.seed + 1000 i`` (its head
        init and data order) on the training examples of ``spec`` (the same subsample for every member),
        each by ``train`` (the pipeline's own training of one run)."""
        logs = []
        for i in range(self.members):
            member_spec = dataclasses.replace(spec, method="lora", method_options={"r": self.r, "lora_alpha": self.lora_alpha},
                                              seed=spec.seed + 1000 * i, data_seed=spec.subsample_seed)
            logs.append(train(member_spec, out / "members" / str(i), resume=resume))
        adapter = out / "adapter"
        adapter.mkdir(parents=True, exist_ok=True)
        (adapter / MEMBERS_FILE).write_text(json.dumps({"members": [f"../members/{i}/adapter" for i in range(self.members)]}))
        seconds = [log["train_seconds"] for log in logs]
        return {"train_seconds": None if None in seconds else sum(seconds), "steps": logs[0]["steps"],
                "trainable_parameters": sum(log["trainable_parameters"] for log in logs), "members": logs,
                "num_labels": logs[0]["num_labels"]}

    def load(self, head: nn.Module, path: Path, target_modules: list[str], modules_to_save: list[str]) -> nn.Module:
        listing = Path(path) / MEMBERS_FILE
        if not listing.exists():
            raise ValueError(f"{path}: no {MEMBERS_FILE}; not an ensemble adapter")
        paths = [Path(path) / p for p in json.loads(listing.read_text())["members"]]
        return nn.ModuleList([self.member().load(copy.deepcopy(head), p, target_modules, modules_to_save) for p in paths])

    def predict(self, model, dataset, collator, *, samples=None, mode=None, progress=False) -> Predictions:
        runs = [predict(member, dataset, collator, mode="mean", samples=1, progress=progress) for member in model]
        sample_probs = torch.stack([run.probs for run in runs])
        return Predictions(probs=sample_probs.mean(0), labels=runs[0].labels, sample_probs=sample_probs,
                           domains=runs[0].domains, seconds=sum(run.seconds for run in runs))
