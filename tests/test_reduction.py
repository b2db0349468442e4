"""C1: `ones` mode is exactly LoRA (outputs and gradients), and B = 0 is exactly the base model."""

from __future__ import annotations

import copy

import peft
import pytest
import torch

import bara
from bara.layer import GATE_MODES
from conftest import padded_batch, tiny_bert, tiny_llama


def test_layer_ones_mode_is_the_lora_formula():
    base = torch.nn.Linear(16, 8)
    layer = bara.BaRALinear(base, bara.BaRAConfig(r=4))
    torch.nn.init.normal_(layer.lora_B.weight)
    layer.mode = "ones"
    x = torch.randn(3, 5, 16)
    expected = base(x) + layer.scaling * layer.lora_B(layer.lora_A(x))
    assert torch.equal(layer(x), expected)


@pytest.mark.parametrize("left", [False, True], ids=["right-pad", "left-pad"])
def test_ones_mode_equals_peft_lora_outputs_and_gradients(left):
    ids, mask = padded_batch([7, 4, 9], total=9, left=left)
    labels = torch.tensor([0, 2, 1])
    ref = peft.get_peft_model(tiny_bert(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0))
    model = bara.get_bara_model(tiny_bert(), bara.BaRAConfig(r=4, lora_alpha=8, target_modules=["query", "value"]))
    torch.manual_seed(1)
    for name, layer in model.bara_layers():
        torch.nn.init.normal_(layer.lora_B.weight, std=0.5)
        peft_layer = ref.base_model.model.get_submodule(name)
        with torch.no_grad():
            peft_layer.lora_A["default"].weight.copy_(layer.lora_A.weight)
            peft_layer.lora_B["default"].weight.copy_(layer.lora_B.weight)
    model.train(), ref.train()
    with bara.gate_mode(model, "ones"):
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
    ref_out = ref(input_ids=ids, attention_mask=mask, labels=labels)
    assert torch.allclose(out.logits, ref_out.logits, atol=1e-6)
    out.loss.backward(), ref_out.loss.backward()
    for name, layer in model.bara_layers():
        peft_layer = ref.base_model.model.get_submodule(name)
        assert torch.allclose(layer.lora_A.weight.grad, peft_layer.lora_A["default"].weight.grad, atol=1e-6)
        assert torch.allclose(layer.lora_B.weight.grad, peft_layer.lora_B["default"].weight.grad, atol=1e-6)


@pytest.mark.parametrize("mode", list(GATE_MODES))
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_zero_B_is_the_base_model_in_every_mode(mode, training):
    ids, mask = padded_batch([5, 8], total=8, left=True)
    base = tiny_bert()
    reference = copy.deepcopy(base)(input_ids=ids, attention_mask=mask).logits
    model = bara.get_bara_model(base, bara.BaRAConfig(r=4, target_modules=["query", "value", "dense"]))
    model.train(training)
    with bara.gate_mode(model, mode):
        assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, reference)


def test_zero_B_is_the_base_causal_lm():
    ids, mask = padded_batch([6, 3], total=6, left=True, vocab=128)
    base = tiny_llama()
    reference = copy.deepcopy(base)(input_ids=ids, attention_mask=mask).logits
    model = bara.get_bara_model(base, bara.BaRAConfig(r=8, target_modules=["q_proj", "v_proj"]))
    for mode in GATE_MODES:
        with bara.gate_mode(model, mode):
            assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, reference)
