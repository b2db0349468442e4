"""The slab: a Gaussian posterior over the factors' input weights A, drawn per instance by Flipout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bara
from bara.layer import BaRALinear, FactorSlab, gaussian_kl
from conftest import padded_batch, tiny_bert


def _layer(slab_std: float | None, seed: int = 0) -> BaRALinear:
    torch.manual_seed(seed)
    layer = BaRALinear(nn.Linear(6, 5), bara.BaRAConfig(r=3, slab_std_init=slab_std))
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    return layer


def test_without_sampling_the_slab_is_its_mean_and_ones_mode_is_lora():
    x = torch.randn(4, 7, 6)
    plain, slab = _layer(None), _layer(0.3)
    slab.load_state_dict(plain.state_dict(), strict=False)  # same M, B and gates; the slab adds log σ
    for layer in (plain, slab):
        layer.eval()
    for mode in ("ones", "mean"):
        plain.mode = slab.mode = mode
        assert torch.equal(slab(x), plain(x))
    slab.mode = "ones"
    lora = slab.base_layer(x) + slab.scaling * slab.lora_B(slab.lora_A(x))
    assert torch.equal(slab(x), lora)


def test_a_vanishing_slab_leaves_the_sampled_layer_as_it_was():
    x = torch.randn(4, 7, 6)
    plain, slab = _layer(None), _layer(1e-9)
    slab.load_state_dict(plain.state_dict(), strict=False)
    for layer in (plain, slab):
        layer.eval().mode = "sample"
    torch.manual_seed(1)
    expected = plain(x)
    torch.manual_seed(1)
    # the slab draws after the gates, so the gates see the same random numbers
    assert torch.allclose(slab(x), expected, atol=1e-6)


def test_a_sampled_layer_varies_with_the_slab_and_not_without_it():
    x = torch.randn(1, 7, 6).expand(64, 7, 6)
    slab = _layer(0.5).eval()
    slab.mode = "constant"  # keep-probability 1: every gate is exactly 1, the slab is the only noise
    out = slab(x)
    assert out.std(0).mean() > 0.1
    slab.slab = None
    assert torch.allclose(slab(x).std(0), torch.zeros(7, 5), atol=1e-6)


def test_flipout_draws_have_the_slabs_marginal():
    torch.manual_seed(0)
    slab = FactorSlab(r=3, in_features=5, std_init=1.0)
    with torch.no_grad():
        slab.log_std.copy_(torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5]] * 3) * torch.tensor([[1.0], [2.0], [0.5]])))
    x = torch.tensor([1.0, -2.0, 0.5, 3.0, -1.0])
    # one ΔA per forward: many forwards, so that the estimate averages over ε as well as the signs
    draws = torch.cat([slab.noise(x.expand(20, 1, 5), choices=1) for _ in range(2000)]).squeeze(1)  # [40000, 3]
    expected_var = (slab.std().detach() ** 2 * x ** 2).sum(-1)
    assert torch.allclose(draws.mean(0), torch.zeros(3), atol=4 * (expected_var / 40000).sqrt().max())
    assert torch.allclose(draws.var(0), expected_var, rtol=0.05)


def test_the_choices_of_one_example_share_their_draw():
    slab = FactorSlab(r=4, in_features=6, std_init=0.5)
    x = torch.randn(3, 1, 2, 6).expand(3, 2, 2, 6).reshape(6, 2, 6)  # 3 examples × 2 identical choices
    noise = slab.noise(x, choices=2).view(3, 2, 2, 4)
    assert torch.equal(noise[:, 0], noise[:, 1])
    assert not torch.equal(noise[0, 0], noise[1, 0])


def test_the_objective_pays_the_slab_kl_once_per_dataset():
    config = bara.BaRAConfig(r=4, target_modules=["0"], slab_std_init=0.05, slab_prior_std=0.3)
    model = bara.get_bara_model(nn.Sequential(nn.Linear(8, 8)), config)
    _ = model.train()(torch.randn(2, 5, 8))
    layer = model.base_model[0]
    terms = bara.kl_terms(model, num_examples=100)
    expected = gaussian_kl(layer.lora_A.weight, layer.slab.std(), 0.3).sum()
    assert torch.isclose(terms.slab_kl, expected)
    assert torch.isclose(terms.total, (terms.global_kl + expected) / 100 + config.beta_local * terms.local_kl)
    terms.total.backward()
    assert layer.slab.log_std.grad is not None and layer.slab.log_std.grad.abs().sum() > 0
    with bara.gate_mode(model, "mean"):  # nothing sampled: no slab in the model, no KL
        _ = model(torch.randn(2, 5, 8))
        assert float(bara.kl_terms(model, num_examples=100).slab_kl) == 0.0


def test_the_slab_is_saved_pruned_and_loaded(tmp_path):
    model = bara.get_bara_model(tiny_bert(), bara.BaRAConfig(r=4, target_modules=["query", "value"], slab_std_init=0.1))
    name, layer = next(iter(model.bara_layers()))
    with torch.no_grad():
        layer.slab.log_std.copy_(torch.randn_like(layer.slab.log_std))
        layer.global_gate.log_a[2] = -12.0  # a dead factor
    expected = layer.slab.log_std.detach()[[0, 1, 3]].clone()
    model.save_pretrained(tmp_path / "adapter")
    loaded = bara.BaRAModel.from_pretrained(tiny_bert(), tmp_path / "adapter")
    assert torch.equal(loaded.base_model.get_submodule(name).slab.log_std.detach(), expected)
    ids, mask = padded_batch([5, 3], total=5, left=False)
    with bara.gate_mode(loaded.eval(), "sample"):
        assert loaded(input_ids=ids, attention_mask=mask).logits.shape[0] == 2


def test_the_slab_rides_with_the_gates_in_the_optimizer():
    from transformers import TrainingArguments

    model = bara.get_bara_model(nn.Sequential(nn.Linear(8, 8)),
                                bara.BaRAConfig(r=4, target_modules=["0"], slab_std_init=0.05))
    args = TrainingArguments("unused", use_cpu=True, report_to=[], learning_rate=1e-3)
    trainer = bara.BaRATrainer(model=model, args=args, num_train_examples=10, gate_lr_multiplier=10.0)
    trainer.create_optimizer()
    slab = model.base_model[0].slab.log_std
    group = next(g for g in trainer.optimizer.param_groups if any(p is slab for p in g["params"]))
    assert group["lr"] == pytest.approx(1e-2) and group["weight_decay"] == 0.0


@pytest.mark.parametrize("value", [0.0, -0.1, float("nan")])
def test_a_bad_slab_std_is_refused(value):
    with pytest.raises(ValueError, match="slab_std_init"):
        bara.BaRAConfig(slab_std_init=value)


def test_the_empirical_bayes_prior_is_the_kl_at_the_best_prior_scale():
    torch.manual_seed(0)
    slab = FactorSlab(r=3, in_features=4, std_init=0.1, prior_std=None)
    with torch.no_grad():
        slab.log_std.add_(0.5 * torch.randn_like(slab.log_std))
    mean = 0.2 * torch.randn(3, 4)
    best = float((slab.std().square() + mean.square()).mean().sqrt())
    assert torch.isclose(slab.kl(mean), gaussian_kl(mean, slab.std(), best).sum(), atol=1e-5)
    for scale in (0.5 * best, 0.9 * best, 1.1 * best, 2 * best):
        assert slab.kl(mean) < gaussian_kl(mean, slab.std(), scale).sum()


# -- mean-preserving gates ----------------------------------------------------------------------
def test_mean_preserving_gates_average_to_the_full_adapter():
    torch.manual_seed(0)
    layer = BaRALinear(nn.Linear(6, 5), bara.BaRAConfig(r=3, mean_preserving=True, local_bias_init=0.0))
    with torch.no_grad():
        layer.lora_B.weight.normal_()
        layer.local_gate.weight.normal_()
    layer.eval()
    x = torch.randn(1, 4, 6)
    full = layer.base_layer(x) + layer.scaling * layer.lora_B(layer.lora_A(x))
    layer.mode = "mean"  # E z / E z = 1: one pass is the whole adapter
    assert torch.allclose(layer(x), full, atol=1e-6)
    layer.mode = "sample"
    draws = torch.stack([layer(x.expand(500, 4, 6)) for _ in range(8)]).flatten(0, 1)
    assert torch.allclose(draws.mean(0), full[0], atol=0.15)
    plain = BaRALinear(nn.Linear(6, 5), bara.BaRAConfig(r=3, local_bias_init=0.0))
    plain.load_state_dict(layer.state_dict())
    plain.eval().mode = "mean"  # without it the mean pass shrinks each factor by its keep-probability
    assert not torch.allclose(plain(x), full, atol=1e-3)


def test_mean_preserving_export_is_the_unfolded_adapter(tmp_path):
    import peft

    model = bara.get_bara_model(tiny_bert(), bara.BaRAConfig(r=4, target_modules=["query", "value"], mean_preserving=True))
    for _, layer in model.bara_layers():
        with torch.no_grad():
            layer.lora_B.weight.normal_()
    ids, mask = padded_batch([5, 3], total=5, left=False)
    with bara.gate_mode(model.eval(), "global_mean"):
        expected = model(input_ids=ids, attention_mask=mask).logits
    bara.export_lora(model, tmp_path / "lora")
    lora = peft.PeftModel.from_pretrained(tiny_bert(), tmp_path / "lora").eval()
    assert torch.allclose(lora(input_ids=ids, attention_mask=mask).logits, expected, atol=1e-5)


def test_while_decoding_the_slab_keeps_the_prompt_passs_draw_as_the_gates_do():
    layer = _layer(0.5).eval()
    layer.mode = "sample"
    prompt, step = torch.randn(3, 7, 6), torch.randn(3, 1, 6)
    layer(prompt)
    layer.context.reuse_gates = True  # what the model sets for an incremental decoding step
    first, second = layer(step), layer(step)
    assert torch.equal(first, second)  # the same gates and the same A for every new token
    layer.context.reuse_gates = False
    assert not torch.allclose(layer(step), first)  # a new input draws anew
