"""Adapter files: safetensors round trip, pruning, peft export, and refusing pickles."""

from __future__ import annotations


import peft
import pytest
import torch

import bara
from conftest import padded_batch, tiny_bert


def _trained_looking(model):
    torch.manual_seed(3)
    for _, layer in model.bara_layers():
        for param in (layer.lora_B.weight, layer.local_gate.weight, layer.global_gate.log_a, layer.global_gate.log_b):
            with torch.no_grad():
                param.add_(0.3 * torch.randn_like(param))
    with torch.no_grad():
        model.base_model.classifier.weight.mul_(2.0)
    return model


def _config(**kw):
    return bara.BaRAConfig(r=4, target_modules=["query", "value"], modules_to_save=["classifier"], **kw)


def test_round_trip_is_bit_exact_in_mean_mode_and_writes_no_pickle(tmp_path):
    ids, mask = padded_batch([6, 3], total=6, left=False)
    model = _trained_looking(bara.get_bara_model(tiny_bert(), _config())).eval()
    with bara.gate_mode(model, "mean"):
        expected = model(input_ids=ids, attention_mask=mask).logits
    pruned = model.save_pretrained(tmp_path / "adapter")
    assert sum(pruned.values()) == 0
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter_model.safetensors", "bara_config.json"]
    loaded = bara.BaRAModel.from_pretrained(tiny_bert(), tmp_path / "adapter").eval()
    with bara.gate_mode(loaded, "mean"):
        assert torch.equal(loaded(input_ids=ids, attention_mask=mask).logits, expected)


def test_an_adapter_of_an_earlier_version_loads_exactly_or_is_refused_by_name(tmp_path):
    """Earlier versions stored softplus⁻¹(a) as ``a_raw`` and had options since retired: such an adapter
    loads with the same gates, unless it used a retired option at a value this version lacks."""
    import json

    from safetensors.torch import load_file, save_file

    ids, mask = padded_batch([6, 3], total=6, left=False)
    model = _trained_looking(bara.get_bara_model(tiny_bert(), _config())).eval()
    with bara.gate_mode(model, "mean"):
        expected = model(input_ids=ids, attention_mask=mask).logits
    model.save_pretrained(tmp_path / "old")
    weights = tmp_path / "old" / "adapter_model.safetensors"
    tensors = {}
    for key, value in load_file(weights).items():  # rewrite the file as the earlier version wrote it
        if key.endswith(("log_a", "log_b")):
            key, value = key.replace(".log_", "._raw_"), value.exp() + torch.log(-torch.expm1(-value.exp()))
            key = key.replace("._raw_a", ".a_raw").replace("._raw_b", ".b_raw")
        tensors[key] = value
    save_file(tensors, weights)
    config = json.loads((tmp_path / "old" / "bara_config.json").read_text())
    config |= {"global_draw": "example", "local_noise": "example", "gate_input": "x",
               "mean_preserving": False, "slab_std_init": None, "slab_prior_std": 0.2}
    (tmp_path / "old" / "bara_config.json").write_text(json.dumps(config))
    loaded = bara.BaRAModel.from_pretrained(tiny_bert(), tmp_path / "old").eval()
    with bara.gate_mode(loaded, "mean"):
        assert torch.allclose(loaded(input_ids=ids, attention_mask=mask).logits, expected, atol=1e-6)
    (tmp_path / "old" / "bara_config.json").write_text(json.dumps(config | {"local_noise": "row"}))
    with pytest.raises(ValueError, match="trained with local_noise='row', which this version of bara no longer supports"):
        bara.BaRAModel.from_pretrained(tiny_bert(), tmp_path / "old")
    (tmp_path / "old" / "bara_config.json").write_text(json.dumps(config | {"slab_std_init": 0.05}))
    with pytest.raises(ValueError, match="trained with slab_std_init=0.05, which this version"):
        bara.BaRAModel.from_pretrained(tiny_bert(), tmp_path / "old")


def test_saving_prunes_dead_factors_without_moving_the_kept_gates(tmp_path, capsys):
    ids, mask = padded_batch([6, 3], total=6, left=False)
    model = _trained_looking(bara.get_bara_model(tiny_bert(), _config())).eval()
    layer_name, layer = next(iter(model.bara_layers()))
    with torch.no_grad():
        layer.global_gate.log_a[1] = -12.0  # a ≈ 6e-6: E π ≈ 0, a dead factor
    with bara.gate_mode(model, "mean"):
        expected = model(input_ids=ids, attention_mask=mask).logits
        expected_gates = bara.gate_probabilities(model)[layer_name]
    pruned = model.save_pretrained(tmp_path / "adapter")
    loaded = bara.BaRAModel.from_pretrained(tiny_bert(), tmp_path / "adapter").eval()
    with bara.gate_mode(loaded, "mean"):
        assert torch.allclose(loaded(input_ids=ids, attention_mask=mask).logits, expected, atol=1e-5)
        gates = bara.gate_probabilities(loaded)[layer_name]
    assert pruned[layer_name] == 1 and sum(pruned.values()) == 1
    assert "pruned 1 dead factor" in capsys.readouterr().out
    assert loaded.base_model.get_submodule(layer_name).r == 3
    assert loaded.bara_config.rank_pattern == {layer_name: 3}
    expected_gates = expected_gates[:, [0, 2, 3]]
    # the logits of this tiny model barely react to its adapters, so compare the kept factors' gates too
    assert torch.allclose(gates, expected_gates, atol=1e-6)


@pytest.mark.parametrize("prior", ["beta", "ibp"])
def test_peft_export_loads_and_equals_the_global_mean_part(tmp_path, prior):
    ids, mask = padded_batch([6, 3], total=6, left=True)
    model = _trained_looking(bara.get_bara_model(tiny_bert(), _config(prior=prior))).eval()
    with torch.no_grad():
        next(iter(model.bara_layers()))[1].global_gate.log_a[-1] = -12.0
    model.save_pretrained(tmp_path / "pruned")  # then export the pruned (ragged-rank) model
    reloaded = bara.BaRAModel.from_pretrained(tiny_bert(), tmp_path / "pruned").eval()
    with bara.gate_mode(reloaded, "global_mean"):
        expected = reloaded(input_ids=ids, attention_mask=mask).logits
    bara.export_lora(reloaded, tmp_path / "lora")
    lora = peft.PeftModel.from_pretrained(tiny_bert(), tmp_path / "lora").eval()
    assert torch.allclose(lora(input_ids=ids, attention_mask=mask).logits, expected, atol=1e-5)


def test_loading_refuses_pickles_and_reports_bad_files(tmp_path):
    model = bara.get_bara_model(tiny_bert(), _config())
    (tmp_path / "weights.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(ValueError, match="refusing to load a pickle file"):
        bara.BaRAModel.from_pretrained(tiny_bert(), tmp_path / "weights.bin")
    with pytest.raises(ValueError, match=r"no adapter_model.safetensors; found pickle file\(s\) \['weights.bin'\]"):
        bara.BaRAModel.from_pretrained(tiny_bert(), tmp_path)
    model.save_pretrained(tmp_path / "ok")
    data = (tmp_path / "ok" / "adapter_model.safetensors").read_bytes()
    (tmp_path / "ok" / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupted or truncated safetensors"):
        bara.BaRAModel.from_pretrained(tiny_bert(), tmp_path / "ok")
    with pytest.raises(ValueError, match="adapter directory not found"):
        bara.BaRAModel.from_pretrained(tiny_bert(), tmp_path / "missing")


def test_loading_onto_a_different_base_names_the_mismatched_layers(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    bara.get_bara_model(tiny_bert(), _config()).save_pretrained(tmp_path / "a")
    wider = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=48, num_hidden_layers=2, num_attention_heads=2,
                                                     intermediate_size=64, num_labels=3))
    with pytest.raises(ValueError, match=r"different base model; shape mismatch in bert\.encoder\.layer\.0\.attention\.self\.query\.lora_A\.weight: saved \(4, 32\) vs model \(4, 48\)"):
        bara.BaRAModel.from_pretrained(wider, tmp_path / "a")


def test_kl_drives_the_gate_parameters():
    model = bara.get_bara_model(tiny_bert(), _config()).train()
    ids, mask = padded_batch([6, 3], total=6, left=False)
    model(input_ids=ids, attention_mask=mask)
    terms = bara.kl_terms(model, num_examples=50)
    assert terms.global_kl > 0 and terms.local_kl > 0
    assert torch.isclose(terms.total, terms.global_kl / 50 + 0.1 * terms.local_kl)
    terms.total.backward()
    for _, layer in model.bara_layers():
        assert layer.local_gate.weight.grad.abs().sum() > 0
        assert layer.global_gate.log_a.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="num_examples=0"):
        bara.kl_divergence(model, 0)
