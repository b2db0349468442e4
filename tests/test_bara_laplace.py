"""``bara-laplace``: BaRA's gates with a post-hoc K-FAC Laplace posterior over the factors.

Checks the posterior block restricted to the kept factors against the dense Kronecker product,
the weight-noise softmax, and a tiny-BERT run end to end: the posterior covers the factors (not the
gates), is restricted to what pruning keeps, and survives a safetensors save / load with the same
predictions."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from bara.harness.heads import SequenceClassifier
from bara.harness.methods import get_method
from bara.harness.methods.bara_laplace import BaRALaplace, noisy_softmax
from bara.harness.methods.laplace import POSTERIOR_FILE, KronLayer, KronPosterior
from conftest import tiny_bert, token_dataset

torch.set_num_threads(1)


def _random_psd(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, generator=g, dtype=torch.float64)
    return m @ m.T + 0.1 * torch.eye(n, dtype=torch.float64)


def _layer(a: torch.Tensor, g: torch.Tensor, bias: bool = False) -> KronLayer:
    eig_a, vec_a = torch.linalg.eigh(a)
    eig_g, vec_g = torch.linalg.eigh(g)
    return KronLayer("x", bias, eig_a.float(), vec_a.float(), eig_g.float(), vec_g.float())


def _dense(layer: KronLayer) -> torch.Tensor:
    g = (layer.vec_g.double() * layer.eig_g.double()) @ layer.vec_g.double().T
    a = (layer.vec_a.double() * layer.eig_a.double()) @ layer.vec_a.double().T
    return torch.kron(g, a)


def test_restricted_block_is_the_sub_block_of_the_kronecker_curvature():
    a, g = _random_psd(5, 0), _random_psd(4, 1)
    layer = _layer(a, g)
    outputs, inputs = torch.tensor([0, 2]), torch.tensor([1, 3, 4])
    sub = layer.restricted(outputs=outputs, inputs=inputs)
    assert (sub.eig_g.numel(), sub.eig_a.numel()) == (2, 3)
    rows = (outputs[:, None] * 5 + inputs[None, :]).flatten()  # row-major (output, input) indices of vec(W)
    assert torch.allclose(_dense(sub), _dense(layer)[rows][:, rows], atol=1e-4)
    assert torch.equal(layer.restricted().eig_a, layer.eig_a)  # nothing restricted: the same block
    # with a bias column, restricting the inputs keeps the bias
    biased = _layer(_random_psd(4, 2), g, bias=True).restricted(inputs=torch.tensor([0, 2]))
    assert biased.eig_a.numel() == 3


def test_noisy_softmax_is_the_softmax_without_noise_and_ignores_logit_shifts():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    none = noisy_softmax(logits, torch.zeros(5, 4, 4), 6, torch.Generator().manual_seed(1))
    assert torch.allclose(none, torch.softmax(logits, -1).mean(0))
    cov = torch.stack([_random_psd(4, s) for s in range(5)])
    one = noisy_softmax(logits, cov, 50, torch.Generator().manual_seed(2))
    shifted = noisy_softmax(logits + 7.0, cov, 50, torch.Generator().manual_seed(2))
    assert torch.allclose(one, shifted, atol=1e-10)
    assert torch.allclose(one.sum(-1), torch.ones(5, dtype=torch.float64))
    # weight noise makes the predictive less confident than the gate samples alone
    assert (one.max(-1).values < torch.softmax(logits, -1).mean(0).max(-1).values + 1e-9).float().mean() > 0.5


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from transformers import TrainingArguments

    out = tmp_path_factory.mktemp("bara_laplace_run")
    ds, collator = token_dataset(24, 0)
    method = get_method("bara-laplace", {"config": {"r": 4, "lora_alpha": 8.0}, "eval_samples": 3, "noise_draws": 8})
    torch.manual_seed(5)
    model = method.wrap(SequenceClassifier(tiny_bert(num_labels=2, seed=0)), ["query", "value"], ["classifier"])
    args = TrainingArguments(output_dir=str(out / "checkpoints"), use_cpu=True, report_to=[], remove_unused_columns=False,
                             disable_tqdm=True, max_steps=2, logging_steps=1, save_strategy="no",
                             per_device_train_batch_size=8, learning_rate=1e-2, seed=11, dataloader_num_workers=0)
    method.trainer_class()(model=model, args=args, train_dataset=ds, data_collator=collator,
                           **method.trainer_kwargs()).train()
    # kill factor 3 of one layer, so that pruning drops it (its B column is zeroed too, so dropping it changes nothing)
    name, layer = next(iter(model.bara_layers()))
    with torch.no_grad():
        layer.global_gate.log_a[3] = -12.0
        layer.lora_B.weight[:, 3] = 0.0
    logged = method.after_training(model, ds, collator)
    return method, model, ds, collator, name, logged


def test_posterior_covers_the_factors_and_the_head_not_the_gates_and_saves_only_the_kept_ones(trained, tmp_path):
    method, model, ds, collator, pruned_layer, logged = trained
    post = method.posterior(model)
    names = [layer.name for layer in post.layers]
    assert sum(n.endswith("lora_A") for n in names) == 4 and sum(n.endswith("lora_B") for n in names) == 4
    assert any("classifier" in n for n in names) and not any("gate" in n for n in names)
    assert logged["covered_parameters"] == post.num_params and logged["prior_precision"] == post.prior_precision
    assert post.n_data == len(ds) and method.prior_min < post.prior_precision < method.prior_max
    method.save(model, tmp_path / "adapter")
    saved = KronPosterior.load(tmp_path / "adapter" / POSTERIOR_FILE)
    blocks = {layer.name: layer for layer in saved.layers}
    a_block = next(b for n, b in blocks.items() if n.endswith(pruned_layer + ".lora_A"))
    b_block = next(b for n, b in blocks.items() if n.endswith(pruned_layer + ".lora_B"))
    assert a_block.eig_g.numel() == 3 and b_block.eig_a.numel() == 3  # the dead factor is not in the saved posterior
    assert saved.num_params == post.num_params - 32 - 32 and saved.prior_precision == post.prior_precision


def test_modes_give_distributions_and_weight_noise_widens_the_mean_pass(trained):
    method, model, ds, collator, _, _ = trained
    results = {mode: method.predict(model, ds, collator, mode=mode) for mode in ("sample", "gates", "weights", "mean")}
    for preds in results.values():
        assert preds.probs.shape == (len(ds), 2)
        assert torch.allclose(preds.probs.sum(-1), torch.ones(len(ds)), atol=1e-5)
    # for two classes, Gaussian noise on the logit difference pulls the probabilities towards 1/2
    wide = dataclasses.replace(method, noise_draws=4000).predict(model, ds, collator, mode="weights").probs
    mean = results["mean"].probs
    assert not torch.allclose(wide, mean, atol=1e-4)
    assert (wide[:, 0] - 0.5).abs().mean() < (mean[:, 0] - 0.5).abs().mean()  # averaged over the examples
    again = method.predict(model, ds, collator, mode="sample")
    assert torch.equal(again.probs, results["sample"].probs)  # seeded
    with pytest.raises(ValueError, match="allowed"):
        method.predict(model, ds, collator, mode="probit")


def test_save_load_round_trip_prunes_and_keeps_the_predictive(trained, tmp_path):
    method, model, ds, collator, _, _ = trained
    folder = tmp_path / "adapter"
    method.save(model, folder)
    assert (folder / POSTERIOR_FILE).exists() and not any(p.suffix in (".bin", ".pt", ".pkl") for p in folder.iterdir())
    fresh = get_method("bara-laplace", {"config": {"r": 4, "lora_alpha": 8.0}, "eval_samples": 3, "noise_draws": 8})
    loaded = fresh.load(SequenceClassifier(tiny_bert(num_labels=2, seed=0)), folder, ["query", "value"], ["classifier"])
    assert sum(layer.r for _, layer in loaded.bara_layers()) == 15  # one factor pruned
    for mode in ("weights", "mean"):
        before = method.predict(model, ds, collator, mode=mode).probs
        after = fresh.predict(loaded, ds, collator, mode=mode).probs
        assert torch.allclose(before, after, atol=1e-4), mode
    (folder / POSTERIOR_FILE).unlink()
    with pytest.raises(ValueError, match=POSTERIOR_FILE):
        fresh.load(SequenceClassifier(tiny_bert(num_labels=2, seed=0)), folder, ["query", "value"], ["classifier"])
    plain = fresh.wrap(SequenceClassifier(tiny_bert(num_labels=2, seed=0)), ["query", "value"], ["classifier"])
    with pytest.raises(ValueError, match="no Laplace posterior"):
        fresh.predict(plain, ds, collator)


@pytest.mark.parametrize("options, message", [({"prior_precision": -1.0}, "prior_precision"),
                                              ({"noise_draws": 0}, "noise_draws"),
                                              ({"prior_min": 2.0, "prior_max": 1.0}, "prior_min")])
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        BaRALaplace(**options)
    assert math.isfinite(BaRALaplace().prior_max)
