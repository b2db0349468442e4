"""Rank allocation: the global gates learn which factors a task needs and the rest die."""

from __future__ import annotations

import torch

import bara
from bara.experimental.synthetic import make_cluster_task, train_synthetic


def _usage(local_prior: str, seed: int = 0) -> torch.Tensor:
    """E π of the 16 factors after training on a task whose update has rank 2."""
    task = make_cluster_task([2], d=16, seed=seed)
    config = bara.BaRAConfig(r=16, target_modules=["proj"], prior="ibp", alpha0=0.5, kuma_a_init=None,
                             local_prior=local_prior, beta_local=1.0)
    result = train_synthetic(task, config, steps=1500, lr=1e-2, n_train=2048, seed=seed)
    (_, layer), = result.model.bara_layers()
    assert result.excess_mse < 0.05  # the two factors that live fit the map
    return layer.global_gate.expected_pi().detach()


def test_the_hierarchical_prior_keeps_the_two_needed_factors_and_prunes_the_rest():
    """With the local gates' prior at the layer's usage, a factor the inputs do not use pulls its π down,
    and the stick-breaking order decides which factors are spare: 2 of 16 survive."""
    pi = _usage("global")
    assert pi[:2].min() > 0.5, pi
    assert pi[2:].max() < 0.05, pi
    assert (pi >= 0.05).sum() == 2


def test_with_a_fixed_local_prior_the_spare_factors_stay_alive():
    """The control: the same model with each input's gates pulled to a fixed Bern(ρ0) keeps most factors
    (the data spreads the rank-2 map over them and nothing prices that)."""
    pi = _usage("fixed")
    assert (pi >= 0.05).sum() > 4, pi


def test_expected_pi_right_after_trainer_train_reports_the_trained_gates(tmp_path):
    """Read straight after ``BaRATrainer.train()`` (the model still in training mode), E π is the trained
    value, not the one a no-grad read cached before the optimizer moved the gates."""
    from torch.utils.data import Dataset
    from transformers import TrainingArguments

    class Toy(Dataset):
        def __len__(self):
            return 32

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return {"x": torch.randn(3, 8, generator=g), "labels": torch.randn(3, 8, generator=g)}

    class Regressor(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(8, 8)

        def forward(self, x, labels=None):
            out = self.proj(x)
            return {"loss": ((out - labels) ** 2).mean(), "logits": out}

    torch.manual_seed(0)
    model = bara.get_bara_model(Regressor(), bara.BaRAConfig(r=4, target_modules=["proj"]))
    start = {name: pi.clone() for name, pi in bara.expected_pi(model).items()}
    args = TrainingArguments(str(tmp_path), max_steps=8, per_device_train_batch_size=8, learning_rate=1e-3,
                             logging_steps=1, report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="no",
                             remove_unused_columns=False)
    trainer = bara.BaRATrainer(model=model, args=args, train_dataset=Toy(), gate_lr_multiplier=100.0)
    trainer.train()
    reported = bara.expected_pi(model)
    for name, layer in model.bara_layers():
        truth = bara.gates.kumaraswamy_mean(layer.global_gate.a, layer.global_gate.b).detach()
        torch.testing.assert_close(reported[name], truth)
        assert (reported[name] - start[name]).abs().max() > 1e-3  # the gates did move
