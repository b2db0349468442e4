"""The wrapper on real architectures: targeting, freezing, mask routing, config validation."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import bara
from conftest import padded_batch, tiny_bert, tiny_gemma3, tiny_llama


# -- configuration ---------------------------------------------------------------------
@pytest.mark.parametrize("field,value,expected", [
    ("r", 0, "r=0"), ("r", -3, "positive integer"), ("r", 2.5, "positive integer"),
    ("lora_alpha", 0, "lora_alpha"), ("lora_alpha", float("nan"), "lora_alpha"),
    ("target_modules", [], "target_modules"), ("target_modules", "", "target_modules"), ("target_modules", [3], "target_modules"),
    ("alpha0", 0, "alpha0=0"), ("alpha0", -1.0, "> 0"),
    ("rho0", 0.0, "strictly between 0 and 1"), ("rho0", 1.0, "rho0=1.0"), ("rho0", 1.5, "rho0"),
    ("temperature", 0, "temperature=0"), ("temperature", -0.5, "temperature"),
    ("beta_global", -1, "beta_global"), ("beta_local", float("inf"), "beta_local"),
    ("kl_warmup", 1.5, "kl_warmup"), ("kl_warmup", -0.1, "kl_warmup"),
    ("prior", "gaussian", "'beta', 'ibp'"), ("local_prior", "learned", "'fixed', 'global'"),
    ("lora_dropout", 1.0, "[0, 1)"), ("lora_dropout", -0.1, "lora_dropout"),
    ("kuma_a_init", 0, "kuma_a_init"), ("kuma_b_init", -1, "kuma_b_init"),
    ("local_bias_init", float("nan"), "local_bias_init"), ("prune_threshold", 1.0, "prune_threshold"),
    ("modules_to_save", "classifier", "modules_to_save"), ("rank_pattern", {"q": 99}, "rank_pattern"),
])
def test_config_rejects_bad_values_naming_the_field(field, value, expected):
    with pytest.raises(ValueError) as err:
        bara.BaRAConfig(**{field: value})
    message = str(err.value)
    assert f"BaRAConfig.{field}" in message and expected in message and "\n" not in message


def test_config_defaults_and_round_trip(tmp_path):
    cfg = bara.BaRAConfig()
    assert (cfg.r, cfg.lora_alpha, cfg.scaling, cfg.rho0, cfg.temperature, cfg.beta_local) == (8, 16, 2.0, 0.5, 1.0, 0.1)
    assert cfg.alpha0 == pytest.approx(1 / 3)
    cfg.save(tmp_path / "c.json")
    assert bara.BaRAConfig.load(tmp_path / "c.json") == cfg
    with pytest.raises(ValueError, match="unknown field"):
        bara.BaRAConfig.from_dict({"r": 4, "rank": 4})
    (tmp_path / "bad.json").write_text("{\n  'r': 4\n}")
    with pytest.raises(ValueError, match="bad.json: invalid JSON at line 2"):
        bara.BaRAConfig.load(tmp_path / "bad.json")


# -- targeting -------------------------------------------------------------------------
def test_target_matching_nothing_lists_the_linear_layers():
    with pytest.raises(ValueError, match=r"matches no module; the Linear layers are named: \[.*'query'.*'value'"):
        bara.get_bara_model(tiny_bert(), bara.BaRAConfig(target_modules=["q_proj"]))


def test_target_that_is_not_linear_is_refused():
    with pytest.raises(ValueError, match="selects 'bert.embeddings.LayerNorm' of type LayerNorm"):
        bara.get_bara_model(tiny_bert(), bara.BaRAConfig(target_modules=["LayerNorm"]))


def test_regex_targets_and_default_targets():
    model = bara.get_bara_model(tiny_bert(), bara.BaRAConfig(target_modules=r".*layer\.1\.attention\.self\.(query|key)"))
    assert sorted(n for n, _ in model.bara_layers()) == [
        "bert.encoder.layer.1.attention.self.key", "bert.encoder.layer.1.attention.self.query"]
    assert bara.get_bara_model(tiny_llama(), bara.BaRAConfig()).bara_config.target_modules == ["q_proj", "v_proj"]
    with pytest.raises(ValueError, match="no query/value projections"):
        bara.get_bara_model(nn.Sequential(nn.Linear(2, 2)), bara.BaRAConfig())
    with pytest.raises(ValueError, match="modules_to_save: module 'head' not found"):
        bara.get_bara_model(tiny_bert(), bara.BaRAConfig(target_modules=["query"], modules_to_save=["head"]))


def test_only_adapter_gates_and_saved_modules_train():
    model = bara.get_bara_model(tiny_bert(), bara.BaRAConfig(r=4, target_modules=["query", "value"], modules_to_save=["classifier"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(("lora_" in n or "_gate." in n or ".classifier." in n) for n in trainable)
    assert any("classifier" in n for n in trainable) and any("local_gate.weight" in n for n in trainable)
    per_layer = 4 * 32 + 32 * 4 + 2 * 4 + 4 * 32 + 4  # A, B, (a, b), W_g, b_g
    assert model.trainable_parameter_count() == 4 * per_layer + 32 * 3 + 3


@pytest.mark.parametrize("build,inputs", [
    (lambda: tiny_bert(), dict(labels=torch.tensor([0, 2]))),
    (lambda: tiny_llama(head="causal"), dict(labels=torch.randint(1, 64, (2, 8)))),
    (lambda: tiny_llama(head="classify"), dict(labels=torch.tensor([1, 0]))),
    (lambda: tiny_gemma3(), dict(labels=torch.randint(1, 64, (2, 8)))),
], ids=["bert-classify", "llama-causal", "llama-classify", "gemma3-causal"])
def test_trains_on_real_architectures(build, inputs):
    model = bara.get_bara_model(build(), bara.BaRAConfig(r=4))
    ids, mask = padded_batch([8, 5], total=8, left=True)
    model.train()
    out = model(input_ids=ids, attention_mask=mask, **inputs)
    loss = out.loss + bara.kl_divergence(model, num_examples=100)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    ranks = bara.effective_ranks(model)
    assert len(ranks) == 4 and all(v.shape == (2,) for v in ranks.values())
    assert set(bara.gate_probabilities(model)) == set(ranks)


# -- the attention mask reaches the gates ----------------------------------------------
class MaskedToy(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 6)

    def forward(self, x, attention_mask=None):
        return self.proj(x)


def _trained_gate_model():
    model = bara.get_bara_model(MaskedToy(), bara.BaRAConfig(r=3, target_modules=["proj"]))
    with torch.no_grad():
        model.proj.local_gate.weight.normal_()
    return model.eval()


def test_padding_content_does_not_change_the_gates():
    model = _trained_gate_model()
    x = torch.randn(2, 5, 6)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])
    with bara.gate_mode(model, "mean"):
        model(x, attention_mask=mask)
        first = bara.gate_probabilities(model)["proj"]
        garbage = x.clone()
        garbage[mask == 0] = 100.0 * torch.randn(int((mask == 0).sum()), 6)
        model(garbage, attention_mask=mask)
        assert torch.allclose(bara.gate_probabilities(model)["proj"], first, atol=1e-6)
        model(x[:1, :3])  # the unpadded first row, no mask: pools over all its positions
        assert torch.allclose(bara.gate_probabilities(model)["proj"][0], first[0], atol=1e-6)
        model(garbage)  # without a mask the garbage is pooled: proves the mask was doing the work
        assert not torch.allclose(bara.gate_probabilities(model)["proj"], first, atol=1e-3)


def test_a_mask_that_does_not_fit_the_tokens_is_reported_and_ignored():
    model = _trained_gate_model()
    x = torch.randn(2, 5, 6)
    with bara.gate_mode(model, "mean"):
        model(x)
        unmasked = bara.gate_probabilities(model)["proj"]
        with pytest.warns(UserWarning, match=r"attention mask of shape \(2, 3\) does not match this layer's tokens \(2, 5\)"):
            model(x, attention_mask=torch.ones(2, 3, dtype=torch.long))
    assert torch.allclose(bara.gate_probabilities(model)["proj"], unmasked)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one vector per instance (a pooler's input): nothing to mask, no warning
        model(torch.randn(2, 6), attention_mask=torch.ones(2, 3, dtype=torch.long))


def test_right_padding_in_a_real_encoder_leaves_each_rows_gates_unchanged():
    model = bara.get_bara_model(tiny_bert(), bara.BaRAConfig(r=4, target_modules=["query"]))
    for _, layer in model.bara_layers():
        torch.nn.init.normal_(layer.local_gate.weight)
    ids, mask = padded_batch([4, 7], total=7, left=False)
    with bara.gate_mode(model, "mean"):
        model(input_ids=ids, attention_mask=mask)
        batched = bara.gate_probabilities(model)
        model(input_ids=ids[:1, :4], attention_mask=mask[:1, :4])
        alone = bara.gate_probabilities(model)
    for name in batched:
        assert torch.allclose(batched[name][0], alone[name][0], atol=1e-5)


def test_causal_lm_pools_over_the_prompt_only():
    model = bara.get_bara_model(tiny_llama(), bara.BaRAConfig(r=4))
    ids, mask = padded_batch([6, 4], total=6, left=True, vocab=128)
    labels = ids.clone()
    labels[:, :4] = -100  # the last two tokens are the answer
    model(input_ids=ids, attention_mask=mask, labels=labels)
    expected = mask.bool() & (labels == -100)
    assert torch.equal(model.context.pool_mask, expected)


class OneHotEncoder(nn.Module):
    """A token-id model that cannot generate (an encoder, e.g. a token classifier)."""

    def __init__(self):
        super().__init__()
        self.query = nn.Linear(4, 4)

    def forward(self, input_ids, attention_mask=None, labels=None):
        return self.query(torch.nn.functional.one_hot(input_ids, 4).float())


def test_token_labels_of_a_model_that_does_not_generate_leave_the_pooling_alone():
    model = bara.get_bara_model(OneHotEncoder(), bara.BaRAConfig(r=2, target_modules=["query"]))
    ids, mask = torch.tensor([[0, 1, 2, 3, 0]]), torch.ones(1, 5, dtype=torch.long)
    model(ids, mask, torch.tensor([[-100, 1, 2, 1, -100]]))  # -100: special tokens, not a prompt
    assert model.context.pool_mask.all()


def test_an_attention_mask_that_is_not_per_token_is_not_read_as_decoding():
    model = bara.get_bara_model(OneHotEncoder(), bara.BaRAConfig(r=2, target_modules=["query"])).eval()
    with torch.no_grad():
        model.query.local_gate.weight.normal_()
    first, second = torch.tensor([[1, 2, 0, 0]]), torch.tensor([[3, 3, 3, 1]])
    with bara.gate_mode(model, "mean"):
        model(second, torch.ones(1, 4, dtype=torch.long))
        expected = bara.gate_probabilities(model)["query"]
        model(first, torch.tensor([[1, 1, 0, 0]]))
        with pytest.warns(UserWarning, match=r"shape \(1, 1, 4, 4\) .* not a per-token padding mask"):
            model(second, torch.ones(1, 1, 4, 4, dtype=torch.long))  # a 4-D mask, batch 1 < length 4
    assert not model.context.reuse_gates
    assert torch.allclose(bara.gate_probabilities(model)["query"], expected)  # its own gates, not the last batch's


def test_generation_reuses_the_prompt_gates():
    model = bara.get_bara_model(tiny_llama(), bara.BaRAConfig(r=4)).eval()
    for _, layer in model.bara_layers():
        torch.nn.init.normal_(layer.local_gate.weight)
        torch.nn.init.normal_(layer.lora_B.weight)
    ids, mask = padded_batch([5, 3], total=5, left=True, vocab=128)
    with bara.gate_mode(model, "mean"):
        model(input_ids=ids, attention_mask=mask)
        prompt_gates = {n: l._cached_gate.clone() for n, l in model.bara_layers()}
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 8)
    for name, layer in model.bara_layers():
        assert torch.allclose(layer._cached_gate, prompt_gates[name])


def test_gate_mode_restores_and_rejects_unknown_modes():
    model = _trained_gate_model()
    with bara.gate_mode(model, "ones"):
        assert model.gate_mode == "ones"
    assert model.gate_mode == "sample"
    with pytest.raises(ValueError, match="allowed: sample, mean, ones, global"):
        model.set_gate_mode("dropout")


def test_lora_dropout_drops_the_factors_input_in_training_only_and_not_the_gates_input(tmp_path):
    torch.manual_seed(0)
    config = bara.BaRAConfig(r=3, target_modules=["proj"], lora_dropout=0.5)
    model = bara.get_bara_model(MaskedToy(), config)
    layer = model.proj
    with torch.no_grad():
        layer.lora_B.weight.normal_()
        layer.local_gate.weight.normal_()
    x = torch.randn(4, 5, 6)
    model.set_gate_mode("mean")  # deterministic gates: any difference between passes is the dropout
    model.train()
    first, second = model(x), model(x)
    assert not torch.allclose(first, second)
    gate_probs = layer.stats.gate_probs
    model.eval()
    assert torch.equal(model(x), model(x))  # off at evaluation
    assert torch.allclose(layer.stats.gate_probs, gate_probs)  # the gates saw the undropped input
    model.set_gate_mode("ones")
    model.train()
    assert not torch.allclose(model(x), model(x))  # plain-LoRA mode drops the same input
    model.save_pretrained(str(tmp_path))
    assert bara.BaRAConfig.load(tmp_path / "bara_config.json").lora_dropout == 0.5


@pytest.mark.parametrize("context_dependent", [True, False])
def test_context_independent_gates_learn_their_keep_probabilities_but_not_the_input(tmp_path, context_dependent):
    """``context_dependent=False`` is the constant-gate control trained as such: the same objective and learning
    rates, with W_g held at 0, so the local gates still move (their biases learn) but never differ
    between inputs; the setting survives a save/load round trip."""
    torch.manual_seed(0)
    config = bara.BaRAConfig(r=3, target_modules=["proj"], rho0=0.8, beta_local=0.01,
                             context_dependent=context_dependent)
    model = bara.get_bara_model(MaskedToy(), config).train()
    layer = model.proj
    x = torch.randn(32, 4, 6) + 3.0 * torch.sign(torch.randn(32, 1, 1))  # two contexts, opposite targets
    target = x.mean((1, 2), keepdim=True).sign() * torch.ones(32, 4, 6)
    bias_before = layer.local_gate.bias.detach().clone()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for _ in range(60):
        loss = ((model(x) - target) ** 2).mean() + bara.kl_divergence(model, num_examples=32)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not torch.allclose(layer.local_gate.bias, bias_before)  # the keep-probabilities are learned either way
    model.eval()
    with bara.gate_mode(model, "mean"):
        model(x)
    spread = bara.gate_probabilities(model)["proj"].std(0).max()
    if context_dependent:
        assert layer.local_gate.weight.abs().max() > 0 and spread > 1e-3
    else:
        assert torch.equal(layer.local_gate.weight, torch.zeros_like(layer.local_gate.weight)) and spread == 0
    model.save_pretrained(str(tmp_path))
    loaded = bara.BaRAModel.from_pretrained(MaskedToy(), str(tmp_path))
    assert loaded.proj.local_gate.weight.requires_grad == context_dependent
    assert loaded.trainable_parameter_count() == model.trainable_parameter_count()


def test_gate_logits_split_into_bias_shared_and_context_parts():
    """`LocalGate.decompose`: the three parts add up to the logits, and the context part averages to 0."""
    torch.manual_seed(0)
    pooled = torch.randn(20, 6) + torch.linspace(-3, 3, 6)
    gate = bara.gates.LocalGate(6, 3, bias_init=1.0)
    with torch.no_grad():
        gate.weight.normal_()
    parts = gate.decompose(pooled)
    assert torch.allclose(parts["bias"] + parts["shared"] + parts["context"], gate(pooled), atol=1e-5)
    assert torch.allclose(parts["context"].mean(0), torch.zeros(3), atol=1e-5)
    assert parts["shared"].abs().max() > 1e-3


def test_context_dependent_must_be_a_boolean():
    with pytest.raises(ValueError, match="BaRAConfig.context_dependent='no'.*true or false"):
        bara.BaRAConfig(context_dependent="no")


class _SharedAcrossDepth(nn.Module):
    """One Linear applied at two depths, as ALBERT shares its layers."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    checkpointed = False

    def forward(self, x):
        if self.checkpointed:  # activation checkpointing re-runs both calls inside backward
            return torch.utils.checkpoint.checkpoint(self._body, x, use_reentrant=False)
        return self._body(x)

    def _body(self, x):
        return self.lin(torch.tanh(self.lin(x)))


def test_a_layer_called_twice_per_forward_counts_the_local_kl_of_both_calls():
    from bara.gates import kl_bernoulli

    torch.manual_seed(0)
    model = bara.get_bara_model(_SharedAcrossDepth(), bara.BaRAConfig(r=4, target_modules=["lin"]))
    (_, layer), = model.bara_layers()
    with torch.no_grad():
        layer.local_gate.weight.normal_()
        layer.local_gate.bias.zero_()
    calls = []
    layer.register_forward_hook(lambda *_: calls.append(layer.stats.local_probs.detach()))
    model.train()
    for _ in range(2):  # the second forward starts afresh
        calls.clear()
        model(torch.randn(5, 8))
        per_call = [kl_bernoulli(p, 0.5).sum(-1).mean() for p in calls]
        local_kl = bara.kl_terms(model, num_examples=10).local_kl
        assert len(per_call) == 2 and min(per_call) > 1e-3
        torch.testing.assert_close(local_kl, per_call[0] + per_call[1])
    model.base_model.checkpointed = True
    calls.clear()
    model(torch.randn(5, 8)).sum().backward()
    assert len(calls) > 2  # two calls, and (some of) them run again in backward
    expected = sum(kl_bernoulli(p, 0.5).sum(-1).mean() for p in calls[:2])
    torch.testing.assert_close(bara.kl_terms(model, num_examples=10).local_kl, expected)  # the recompute adds nothing


class _ReusedOnATable(nn.Module):
    """A projection applied to the tokens and then to a table of another length (DeBERTa-v2 sends
    its relative-position embeddings through ``query_proj``)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.table = nn.Parameter(torch.randn(3, 8))

    def forward(self, x):
        return self.lin(x).sum() + self.lin(self.table).sum()


def test_a_layer_called_on_rows_of_another_count_warns_instead_of_dropping_a_kl_silently():
    model = bara.get_bara_model(_ReusedOnATable(), bara.BaRAConfig(r=4, target_modules=["lin"]))
    model.train()
    with pytest.warns(UserWarning, match="called twice in one forward on 5 and then 3 rows"):
        model(torch.randn(5, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per layer, not once per step
        model(torch.randn(5, 8))


def test_hierarchical_local_kl_follows_the_choice_rows_when_pi_is_drawn_per_example():
    """Out of training mode π is drawn once per example; a multiple-choice example's choice rows
    must each pay their local KL against their own example's draw."""
    from bara.layer import BaRALinear, GateContext

    context = GateContext(choice_rows=torch.ones(3, 4))
    layer = BaRALinear(nn.Linear(8, 8), bara.BaRAConfig(r=4, local_prior="global"), context=context).eval()
    layer.gate(torch.randn(12, 8))
    assert layer.stats.local_kl.shape == (12,) and torch.isfinite(layer.stats.local_kl).all()
