"""BLoB (`bara.harness.methods.blob`): the KL, the layer's two modes and its per-row Flipout noise, a short
training run with `BLoBTrainer`, prediction, and the safetensors-only save / load round trip."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from bara.harness.heads import SequenceClassifier
from bara.harness.methods.blob import (BLoB, BLoBConfig, BLoBLinear, BLoBModel, BLoBTrainer, blob_cycle_length, blob_kl_weight,
                               gaussian_kl, load_blob, sampling)
from conftest import token_dataset, tiny_bert

torch.set_num_threads(1)

BETA = 0.2


def toy(seed: int = 0, r: int = 2, **config) -> BLoBModel:
    torch.manual_seed(seed)
    base = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    return BLoBModel(base, BLoBConfig(target_modules=["0", "2"], r=r, prior_std=BETA, **config))


def randomise(model: BLoBModel, seed: int = 1) -> None:
    """Non-zero B and spread-out means / stds, so that every term matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in model.blob_layers():
            layer.lora_A_mean.copy_(torch.randn(layer.lora_A_mean.shape, generator=g) * 0.3)
            layer.lora_A_g.copy_(0.1 + 0.4 * torch.rand(layer.lora_A_g.shape, generator=g))
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g))


# ----------------------------------------------------------------------------- the KL
def test_kl_matches_the_hand_formula_on_a_two_layer_toy():
    model = toy()
    randomise(model)
    expected = 0.0
    for _, layer in model.blob_layers():
        for mu, g in zip(layer.lora_A_mean.flatten().tolist(), layer.lora_A_g.flatten().tolist()):
            sigma = g * g  # BLoB: Ω = G ∘ G
            expected += math.log(BETA / sigma) + (sigma ** 2 + mu ** 2) / (2 * BETA ** 2) - 0.5
    assert sum(1 for _ in model.blob_layers()) == 2
    assert model.kl_divergence().item() == pytest.approx(expected, rel=1e-5)


def test_closed_form_kl_agrees_with_monte_carlo():
    mean = torch.tensor([0.3, -0.1, 0.05])
    std = torch.tensor([0.05, 0.15, 0.3])
    g = torch.Generator().manual_seed(0)
    a = mean + std * torch.randn(400_000, 3, generator=g, dtype=torch.float64)
    log_q = torch.distributions.Normal(mean.double(), std.double()).log_prob(a)
    log_p = torch.distributions.Normal(0.0, BETA).log_prob(a)
    mc = (log_q - log_p).mean(0)
    assert torch.allclose(gaussian_kl(mean, std, BETA).double(), mc, atol=0.01)


def test_kl_weight_schedules():
    m = blob_cycle_length(1000, 16, gamma=8.0)
    assert m == int(100 * 1000 ** (math.pi / 8) / 16)
    weights = [blob_kl_weight(step, m) for step in range(m)]
    assert all(b > a for a, b in zip(weights, weights[1:]))  # grows within a cycle ...
    assert sum(weights) == pytest.approx(1.0, abs=1e-12)  # ... and sums to ≈ 1 per cycle
    assert blob_kl_weight(m, m) == weights[0]  # then starts again
    assert blob_kl_weight(10_000, 5_000) == pytest.approx(2.0 ** -4_999)  # large M underflows, no overflow


# ----------------------------------------------------------------------------- the layer
def test_zero_b_gives_the_base_model_in_both_modes():
    model = toy()
    x = torch.randn(6, 4)
    with torch.no_grad():
        expected = nn.Sequential(model.base_model[0].base_layer, nn.ReLU(), model.base_model[2].base_layer)(x)
        for flag in (True, False):
            with sampling(model, flag):
                assert torch.equal(model(x), expected)

    bert = tiny_bert(num_labels=2)
    ids = torch.randint(1, 64, (3, 7))
    with torch.no_grad():
        expected = bert(input_ids=ids).logits
        wrapped = BLoB().wrap(SequenceClassifier(bert), ["query", "value"], ["classifier"])
        for flag in (True, False):
            with sampling(wrapped, flag):
                assert torch.equal(wrapped(input_ids=ids).logits, expected)


def test_mean_mode_is_deterministic_and_sample_mode_varies_across_repeated_rows():
    model = toy()
    randomise(model)
    x = torch.randn(1, 4).repeat(8, 1)
    with torch.no_grad(), sampling(model, False):
        mean_out = model(x)
        assert torch.equal(mean_out, model(x))
        assert torch.equal(mean_out, mean_out[:1].expand_as(mean_out))
    for noise in ("flipout", "flipout_token", "independent"):
        model = toy(noise=noise)
        randomise(model)
        with torch.no_grad(), sampling(model, True):
            out = model(x)
        assert len({tuple(row) for row in out.tolist()}) == 8, noise
        assert not torch.allclose(out, mean_out)


@pytest.mark.parametrize("noise", ["flipout", "independent"])
def test_per_row_noise_has_the_posterior_moments(noise):
    """Each row's h = A_n x with A_n ~ N(M, Ω²): mean M x, variance Σ_i Ω_ki² x_i²."""
    torch.manual_seed(0)
    layer = BLoBLinear(nn.Linear(4, 3), BLoBConfig(target_modules=["x"], r=2, noise=noise))
    with torch.no_grad():
        layer.lora_A_g.copy_(torch.tensor([[0.5, 0.3, 0.6, 0.4], [0.2, 0.7, 0.5, 0.3]]))
        x = torch.tensor([[1.0, -2.0, 0.5, 1.5]])
        draws = torch.cat([layer._noise(x.repeat(10, 1)) for _ in range(2000)])  # 20 000 rows, 2 000 draws of ΔA
    variance = (layer.std().square() * x.square()).sum(-1)
    assert torch.allclose(draws.mean(0), torch.zeros(2), atol=4 * variance.sqrt().max().item() / math.sqrt(2000))
    assert torch.allclose(draws.var(0), variance, rtol=0.1)


def test_all_rows_of_one_example_share_a_sample():
    """A head that flattens [examples, choices, d] to rows: the choices of an example share A_n."""

    class Flatten(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 3)

        def forward(self, x):
            return self.proj(x.reshape(-1, x.shape[-1])).view(*x.shape[:-1], 3)

    torch.manual_seed(0)
    model = BLoBModel(Flatten(), BLoBConfig(target_modules=["proj"], r=2))
    randomise(model)
    with torch.no_grad():
        out = model(torch.ones(5, 3, 4))  # 5 examples × 3 identical choices
    assert torch.equal(out, out[:, :1].expand_as(out))
    assert len({tuple(row) for row in out[:, 0].tolist()}) == 5


def test_gradients_reach_mean_std_and_b_and_the_base_is_frozen():
    model = toy()
    randomise(model)
    (model(torch.randn(8, 4)).square().sum() + model.kl_divergence()).backward()
    for _, layer in model.blob_layers():
        for param in (layer.lora_A_mean, layer.lora_A_g, layer.lora_B):
            assert param.grad is not None and param.grad.abs().sum() > 0
        assert not layer.base_layer.weight.requires_grad and layer.base_layer.weight.grad is None


def test_options_are_validated():
    with pytest.raises(ValueError, match="unknown option"):
        BLoB.from_options({"rank": 4})
    with pytest.raises(ValueError, match="kl_weight"):
        BLoB(kl_weight="linear")
    with pytest.raises(ValueError, match="noise"):
        BLoB(noise="gaussian")
    assert BLoB.from_options({"kl_weight": 1e-3}).kl_weight == 1e-3
    assert BLoB().blob_config(["query"]).scaling == 2.0


# ----------------------------------------------------------------------------- training, prediction, files
def _dataset(n: int = 16, seed: int = 3):
    return token_dataset(n, seed)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from transformers import TrainingArguments

    out = tmp_path_factory.mktemp("blob_run")
    ds, collator = _dataset()
    method = BLoB()
    torch.manual_seed(5)
    model = method.wrap(SequenceClassifier(tiny_bert(num_labels=2, seed=0)), ["query", "value"], ["classifier"])
    method.before_training(model)
    before = {k: v.detach().clone() for k, v in model.adapter_state().items()}
    args = TrainingArguments(output_dir=str(out / "checkpoints"), use_cpu=True, report_to=[], remove_unused_columns=False,
                             disable_tqdm=True, max_steps=2, logging_steps=1, save_strategy="no",
                             per_device_train_batch_size=8, learning_rate=1e-2, seed=11, dataloader_num_workers=0)
    trainer = method.trainer_class()(model=model, args=args, train_dataset=ds, data_collator=collator,
                                     **method.trainer_kwargs())
    trainer.train()
    return method, model, trainer, before, ds, collator, out


def test_training_logs_the_kl_and_moves_the_adapter(trained):
    method, model, trainer, before, *_ = trained
    assert isinstance(trainer, BLoBTrainer) and not trainer.model_accepts_loss_kwargs
    logged = [h for h in trainer.state.log_history if "kl_blob" in h]
    assert len(logged) == 2
    assert all(h["kl_blob"] > 0 and h["nll"] > 0 and "blob_std" in h for h in logged)
    assert logged[0]["kl_weight"] == 0.0  # "elbo": β_0 = 0, then β_t / N
    assert logged[1]["kl_weight"] == pytest.approx(trainer.kl_weight_at(1)) and logged[1]["kl_weight"] > 0
    after = model.adapter_state()
    for key in before:
        if key.endswith(("lora_A_mean", "lora_A_g", "lora_B")) or "classifier" in key:
            assert not torch.equal(before[key], after[key].detach()), key
    assert all(not p.requires_grad for n, p in model.named_parameters() if "base_layer" in n)


def test_kl_is_added_to_the_loss_in_training_only(trained):
    _, model, trainer, _, ds, collator, _ = trained
    batch = collator([ds[i] for i in range(4)])
    trainer.kl_weight, weight = 0.5, 0.5
    try:
        with sampling(model, False):
            model.train()
            nll = model(**batch).loss
            loss = trainer.compute_loss(model, batch)
            assert loss.item() == pytest.approx(nll.item() + weight * model.kl_divergence().item(), rel=1e-5)
            model.eval()
            assert trainer.compute_loss(model, batch).item() == pytest.approx(nll.item(), rel=1e-5)
    finally:
        trainer.kl_weight = "elbo"
        model.eval()


def test_predict_sample_and_mean(trained):
    method, model, _, _, ds, collator, _ = trained
    sampled = method.predict(model, ds, collator, samples=4)
    mean = method.predict(model, ds, collator, mode="mean")
    assert sampled.sample_probs.shape == (4, len(ds), 2) and mean.sample_probs is None
    for preds in (sampled, mean):
        assert torch.allclose(preds.probs.sum(-1), torch.ones(len(ds)), atol=1e-5)
    assert not torch.equal(sampled.sample_probs[0], sampled.sample_probs[1])  # the S copies differ (slightly: σ is small)
    assert torch.equal(mean.probs, method.predict(model, ds, collator, mode="mean").probs)
    assert all(layer.sample for _, layer in model.blob_layers())  # the mode is restored
    with pytest.raises(ValueError, match="allowed: sample, mean"):
        method.predict(model, ds, collator, mode="global")


def test_save_load_round_trip_is_exact_and_pickle_free(trained, tmp_path):
    method, model, trainer, _, ds, collator, _ = trained
    folder = tmp_path / "adapter"
    method.save(model, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_model.safetensors", "blob_config.json"]
    loaded = method.load(SequenceClassifier(tiny_bert(num_labels=2, seed=0)), folder, ["ignored"], [])
    batch = {k: v for k, v in collator([ds[i] for i in range(len(ds))]).items() if k != "labels"}
    with torch.no_grad(), sampling(model, False), sampling(loaded, False):
        assert torch.equal(model(**batch).logits, loaded.eval()(**batch).logits)
    assert torch.equal(method.predict(model, ds, collator, mode="mean").probs,
                       method.predict(loaded, ds, collator, mode="mean").probs)

    # Trainer checkpoints hold the same two files and resume them exactly
    checkpoint = tmp_path / "checkpoint"
    trainer._save(str(checkpoint))
    assert sorted(p.name for p in checkpoint.iterdir()) == ["adapter_model.safetensors", "blob_config.json"]
    saved = {k: v.detach().clone() for k, v in model.adapter_state().items()}
    with torch.no_grad():
        for value in model.adapter_state().values():
            value.add_(1.0)
    trainer._load_from_checkpoint(str(checkpoint))
    assert all(torch.equal(saved[k], v) for k, v in model.adapter_state().items())


def test_loading_refuses_pickles_and_foreign_adapters(trained, tmp_path):
    method, model, *_ = trained
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "adapter_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(ValueError, match="never unpickled"):
        load_blob(tiny_bert(num_labels=2), tmp_path / "pickled")
    with pytest.raises(ValueError, match="pickle file"):
        load_blob(tiny_bert(num_labels=2), tmp_path / "pickled" / "adapter_model.bin")
    method.save(model, tmp_path / "adapter")
    with pytest.raises(ValueError, match="shape mismatch"):
        load_blob(SequenceClassifier(tiny_bert(num_labels=3)), tmp_path / "adapter")
