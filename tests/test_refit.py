"""The held-out refit of the local gates (`bara.experimental.refit`) and BaRA's ``gate_holdout`` option."""

from __future__ import annotations

import pytest
import torch

from bara.config import BaRAConfig
from bara.harness.heads import SequenceClassifier
from bara.harness.methods import get_method
from bara.model import get_bara_model
from bara.experimental.refit import predictive_nll, refit_local_gates, split_holdout

from conftest import tiny_bert, token_dataset


def test_split_holdout_is_a_seeded_partition():
    data, _ = token_dataset(20)
    train, held = split_holdout(data, 0.25, seed=3)
    assert (len(train), len(held)) == (15, 5)
    ids = lambda ds: sorted(id(item) for item in ds.items)
    assert sorted(ids(train) + ids(held)) == ids(data)  # disjoint and complete
    again_train, again_held = split_holdout(data, 0.25, seed=3)
    assert ids(again_held) == ids(held) and ids(again_train) == ids(train)
    assert ids(split_holdout(data, 0.25, seed=4)[1]) != ids(held)


@pytest.mark.parametrize("fraction,message", [(0.0, "strictly between 0 and 1"), (1.0, "strictly between 0 and 1"),
                                              (0.01, "leaves no example"), (0.99, "leaves no example")])
def test_split_holdout_refuses_fractions_that_leave_a_side_empty(fraction, message):
    data, _ = token_dataset(20)
    with pytest.raises(ValueError, match=message):
        split_holdout(data, fraction, seed=1)


def _misled_model(data, collator, seed: int = 0):
    """A BaRA classifier whose adapter was trained on flipped labels: on the true labels the
    held-out likelihood is best served by gates that drop its factors."""
    from bara.harness.data import EncodedDataset, EncodedExample

    torch.manual_seed(seed)
    head = SequenceClassifier(tiny_bert(num_labels=2, seed=seed))
    model = get_bara_model(head, BaRAConfig(r=4, target_modules=["query", "value"], modules_to_save=["classifier"]))
    with torch.no_grad():  # an input dependence for the affine refit to rescale (W_g starts at 0)
        for _, layer in model.bara_layers():
            layer.local_gate.weight.normal_(0.0, 0.3)
    flipped = EncodedDataset([EncodedExample(it.input_ids, 1 - it.label, 2, None) for it in data.items], data.head, 2)
    batch = collator(flipped.items)
    optimizer = torch.optim.Adam([p for n, p in model.named_parameters() if p.requires_grad and "_gate." not in n], lr=0.02)
    model.train()
    for _ in range(40):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    return model


@pytest.mark.parametrize("scope", ["affine", "full"])
def test_refit_lowers_the_held_out_predictive_nll_and_moves_only_the_local_gates(scope):
    data, collator = token_dataset(24)
    model = _misled_model(data, collator)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if ".local_gate." not in n}
    gates_before = {n: p.detach().clone() for n, p in model.named_parameters() if ".local_gate." in n}
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    model.train()

    log = refit_local_gates(model, data, collator, epochs=15, lr=0.05, samples=8, batch_size=8, seed=2, scope=scope)

    assert log["steps"] == 45 and log["holdout_size"] == 24 and log["scope"] == scope
    assert log["holdout_nll_after"] < log["holdout_nll_before"] - 0.05
    after = dict(model.named_parameters())
    assert set(after) == set(trainable)  # same tensors as before (the affine parametrization is folded away)
    for name, value in frozen_before.items():
        assert torch.equal(after[name], value), name
    assert any(not torch.equal(after[n], v) for n, v in gates_before.items())
    if scope == "affine":  # each layer's gate weight only rescaled (a negative scale reverses it), never turned
        for name, value in gates_before.items():
            if name.endswith("weight"):
                cosine = torch.nn.functional.cosine_similarity(after[name].detach().flatten(), value.flatten(), dim=0)
                assert abs(float(cosine)) == pytest.approx(1.0, abs=1e-5), name
    # the log says how far each layer moved: bias shifts and (affine) the weight scales, layer by layer
    weights = [n for n in gates_before if n.endswith("weight")]
    assert len(log["bias_shifts"]) == len(weights) == 4
    for name, shift in zip(weights, log["bias_shifts"]):
        bias = name[: -len("weight")] + "bias"
        assert shift == pytest.approx(float((after[bias] - gates_before[bias]).mean()), abs=1e-6)
    if scope == "affine":
        for name, scale in zip(weights, log["scales"]):
            assert torch.allclose(after[name].detach(), scale * gates_before[name], atol=1e-6), name
    else:
        assert "scales" not in log
    assert {n: p.requires_grad for n, p in model.named_parameters()} == trainable  # restored
    assert model.training  # the caller's mode is restored too
    assert all(not layer.straight_through for _, layer in model.bara_layers())


def test_refit_rejects_an_unknown_scope():
    data, collator = token_dataset(8)
    model = _misled_model(data, collator)
    with pytest.raises(ValueError, match="refit scope 'everything' is unknown; allowed: affine, full"):
        refit_local_gates(model, data, collator, scope="everything")


def test_predictive_nll_is_the_log_of_the_averaged_likelihood():
    data, collator = token_dataset(6)
    model = _misled_model(data, collator, seed=1)
    batch = collator(data.items)
    model.eval()
    with torch.no_grad():
        # mean mode: every sample is the same, so the predictive NLL is the plain NLL
        from bara.model import gate_mode

        with gate_mode(model, "mean"):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            plain = torch.nn.functional.cross_entropy(logits, batch["labels"])
            assert torch.allclose(predictive_nll(model, batch, samples=5), plain, atol=1e-5)


def test_bara_gate_holdout_option_splits_and_validates():
    method = get_method("bara", {"gate_holdout": 0.25})
    data, _ = token_dataset(20)
    train, held = method.split_train(data, seed=1)
    assert (len(train), len(held)) == (15, 5)
    assert get_method("bara").split_train(data, seed=1) == (data, None)
    with pytest.raises(ValueError, match="gate_holdout=1.0 must lie in"):
        get_method("bara", {"gate_holdout": 1.0})
    with pytest.raises(ValueError, match="forces open"):
        get_method("bara-global", {"gate_holdout": 0.2})
    with pytest.raises(ValueError, match="refit_scope='half' is unknown"):
        get_method("bara", {"gate_holdout": 0.2, "refit_scope": "half"})
    with pytest.raises(ValueError, match="refit_epochs=-1 must be >= 0"):
        get_method("bara", {"gate_holdout": 0.2, "refit_epochs": -1})
    assert get_method("bara", {"gate_holdout": 0.2, "refit_epochs": 0}).after_training(None, data, None, holdout=held) is None
    with pytest.raises(ValueError, match="refit_samples=0 must be positive"):
        get_method("bara", {"gate_holdout": 0.2, "refit_samples": 0})


@pytest.mark.parametrize("scope", ["affine", "full"])
def test_refit_learning_rate_defaults_to_the_scope_s_own(scope):
    """A direct API call without ``lr`` uses the scope's own rate, the one `bara[gate_holdout=...]` uses."""
    from bara.harness.methods.bara import BaRA
    from bara.experimental.refit import REFIT_LR

    data, collator = token_dataset(8)
    log = refit_local_gates(_misled_model(data, collator), data, collator, epochs=1, batch_size=8, scope=scope)
    assert log["lr"] == REFIT_LR[scope] == {"affine": 0.05, "full": 5e-3}[scope]
    assert BaRA().refit_lr == REFIT_LR[BaRA().refit_scope]
