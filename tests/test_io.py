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
        for param in (layer.lora_B.weight, layer.local_gate.weight, layer.global_gate.a_raw, layer.global_gate.b_raw):
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


def test_an_adapter_saved_before_the_draw_options_existed_loads_with_the_draws_it_was_trained_with(tmp_path):
    """``global_draw`` and ``local_noise`` came later with the default "example"; an adapter whose saved
    config lacks them was trained drawing per choice row, and loads so. One that names them keeps them."""
    import json

    model = bara.get_bara_model(tiny_bert(), _config(local_noise="row"))
    model.save_pretrained(tmp_path / "new")
    saved = json.loads((tmp_path / "new" / "bara_config.json").read_text())
    assert (saved["global_draw"], saved["local_noise"]) == ("example", "row")
    old = {k: v for k, v in saved.items() if k not in ("global_draw", "local_noise")}
    (tmp_path / "new" / "bara_config.json").rename(tmp_path / "kept.json")
    (tmp_path / "new" / "bara_config.json").write_text(json.dumps(old))
    loaded = bara.BaRAModel.from_pretrained(tiny_bert(), tmp_path / "new")
    assert {(layer.global_draw, layer.local_noise) for _, layer in loaded.bara_layers()} == {("row", "row")}
    assert (loaded.bara_config.global_draw, loaded.bara_config.local_noise) == ("row", "row")
    assert bara.BaRAConfig.load(tmp_path / "kept.json").global_draw == "example"
    assert bara.BaRAConfig().local_noise == "example"  # what a new model gets


@pytest.mark.parametrize("gate_input", ["x", "Ax"])
def test_saving_prunes_dead_factors_without_moving_the_kept_gates(tmp_path, capsys, gate_input):
    ids, mask = padded_batch([6, 3], total=6, left=False)
    model = _trained_looking(bara.get_bara_model(tiny_bert(), _config(gate_input=gate_input))).eval()
    layer_name, layer = next(iter(model.bara_layers()))
    with torch.no_grad():
        layer.global_gate.a_raw[1] = -12.0  # a ≈ 6e-6: E π ≈ 0, a dead factor
    with bara.gate_mode(model, "mean"):
        expected = model(input_ids=ids, attention_mask=mask).logits
        expected_gates = bara.gate_probabilities(model)[layer_name]
    pruned = model.save_pretrained(tmp_path / "adapter")
    loaded = bara.BaRAModel.from_pretrained(tiny_bert(), tmp_path / "adapter").eval()
    with bara.gate_mode(loaded, "mean"):
        assert torch.allclose(loaded(input_ids=ids, attention_mask=mask).logits, expected, atol=1e-5)
        gates = bara.gate_probabilities(loaded)[layer_name]
    if gate_input == "x":
        assert pruned[layer_name] == 1 and sum(pruned.values()) == 1
        assert "pruned 1 dead factor" in capsys.readouterr().out
        assert loaded.base_model.get_submodule(layer_name).r == 3
        assert loaded.bara_config.rank_pattern == {layer_name: 3}
        expected_gates = expected_gates[:, [0, 2, 3]]
    else:  # the gates layer-normalise A x̄ over every factor: dropping one would move the others
        assert sum(pruned.values()) == 0 and loaded.bara_config.rank_pattern == {}
        assert "kept 1 dead factor(s): with gate_input='Ax'" in capsys.readouterr().out
    # the logits of this tiny model barely react to its adapters, so compare the kept factors' gates too
    assert torch.allclose(gates, expected_gates, atol=1e-6)


@pytest.mark.parametrize("gate_input", ["x", "Ax"])
def test_peft_export_loads_and_equals_the_global_mean_part(tmp_path, gate_input):
    ids, mask = padded_batch([6, 3], total=6, left=True)
    model = _trained_looking(bara.get_bara_model(tiny_bert(), _config(gate_input=gate_input))).eval()
    with torch.no_grad():
        next(iter(model.bara_layers()))[1].global_gate.a_raw[0] = -12.0
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
        assert layer.global_gate.a_raw.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="num_examples=0"):
        bara.kl_divergence(model, 0)
